//! Hugging Face safetensors checkpoints, memory-mapped.
//!
//! [`Checkpoint::open`] maps `model.safetensors` (or every shard named by
//! `model.safetensors.index.json`), validates each header before anything is read (header
//! length bounded, JSON checked, every tensor's offsets inside its file) and keeps only the
//! maps and a name → location table. [`Checkpoint::check`] compares the table with the weights
//! a model needs and reports every mismatch at once; [`Checkpoint::load_f32`] converts one
//! tensor to `f32`. Nothing derived from file contents can panic: every offset is checked and
//! every slice is taken with `get`.
//!
//! One limit is outside our control: if another process truncates a file while it is mapped,
//! reading the lost pages raises `SIGBUS`. amk never writes checkpoints it has mapped.

use crate::tensor::{fmt_shape, DType, WeightSpec};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensorError, SafeTensors};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Largest header the safetensors crate accepts (its `MAX_HEADER_SIZE`); checked here too so
/// that the error names the file and nothing is allocated for an absurd length.
const MAX_HEADER_LEN: u64 = 100_000_000;

/// Largest `model.safetensors.index.json` read (real ones are well under 1 MB).
const MAX_INDEX_LEN: u64 = 256 << 20;

/// Elements converted per step when widening `f16`; small enough to stay in cache.
const F16_CHUNK: usize = 16 * 1024;

const HINT_LAYOUT: &str = "is this a llama-family Hugging Face checkpoint? amk reads \
     model.safetensors or model.safetensors.index.json plus its shards";

/// Everything that can go wrong reading a checkpoint; each variant names the file and the
/// tensor or field concerned and, where it can, says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Neither `model.safetensors` nor `model.safetensors.index.json` exists.
    #[error("no {SINGLE_FILE} or {INDEX_FILE} in {}: {hint}", dir.display())]
    NotFound { dir: PathBuf, hint: String },
    /// The file could not be opened, read or mapped.
    #[error("cannot read {}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    /// The file is shorter than the 8-byte header length.
    #[error(
        "{} is {len} bytes long, too short for a safetensors file (8-byte header length \
         missing); the file is truncated or not safetensors, download it again",
        file.display()
    )]
    TooShort { file: PathBuf, len: u64 },
    /// The header length exceeds the limit.
    #[error(
        "{}: header length field says {header_len} bytes, more than the {MAX_HEADER_LEN} \
         allowed; the file is corrupt or not safetensors",
        file.display()
    )]
    HeaderTooLarge { file: PathBuf, header_len: u64 },
    /// The header length points past the end of the file.
    #[error(
        "{}: header length field says {header_len} bytes but the file has only {file_len} \
         bytes; the file is truncated, download it again",
        file.display()
    )]
    HeaderBeyondFile { file: PathBuf, header_len: u64, file_len: u64 },
    /// The header is not a JSON object.
    #[error("{}: safetensors header is not a JSON object: {detail}", file.display())]
    HeaderNotJson { file: PathBuf, detail: String },
    /// A header entry is malformed (unknown dtype, bad shape, offsets not matching the size).
    #[error("{}: header entry for tensor `{tensor}` is invalid: {detail}", file.display())]
    BadEntry { file: PathBuf, tensor: String, detail: String },
    /// A tensor's data lies outside the file.
    #[error(
        "{}: tensor `{tensor}` has data_offsets [{start}, {end}] but the data section has only \
         {data_len} bytes; the file is truncated or corrupt, download it again",
        file.display()
    )]
    OffsetsOutOfBounds { file: PathBuf, tensor: String, start: u64, end: u64, data_len: u64 },
    /// The safetensors crate rejected the file for a reason not caught above.
    #[error("{}: invalid safetensors file: {detail}", file.display())]
    Invalid { file: PathBuf, detail: String },
    /// A tensor holds a NaN or an infinity: the model would decode nothing but garbage.
    #[error(
        "{}: tensor `{tensor}` holds {value} at element {index}; the checkpoint is corrupt",
        file.display()
    )]
    NonFinite { file: PathBuf, tensor: String, index: usize, value: f32 },
    /// The sharded index is malformed.
    #[error("{}: {detail}", file.display())]
    Index { file: PathBuf, detail: String },
    /// A shard name in the index could escape the checkpoint directory.
    #[error(
        "{}: shard name `{shard}` (for tensor `{tensor}`) is not a plain file name; shard names \
         must not contain `/`, `\\` or `..`",
        file.display()
    )]
    BadShardName { file: PathBuf, shard: String, tensor: String },
    /// A shard named in the index does not exist.
    #[error(
        "{}: shard `{shard}` (holding tensor `{tensor}`) does not exist in {}; download every \
         shard listed in the index",
        index.display(),
        dir.display()
    )]
    MissingShard { index: PathBuf, dir: PathBuf, shard: String, tensor: String },
    /// The index places a tensor in a shard that does not contain it.
    #[error(
        "{}: tensor `{tensor}` is listed in shard `{shard}` but {} has no such tensor; the index \
         and shards come from different downloads",
        index.display(),
        file.display()
    )]
    NotInShard { index: PathBuf, file: PathBuf, shard: String, tensor: String },
    /// One or more weights the model needs are absent or do not match.
    #[error("{}", fmt_check(dir, problems))]
    Mismatch { dir: PathBuf, problems: Vec<WeightProblem> },
    /// [`Checkpoint::load_f32`] was asked for a tensor the checkpoint lacks.
    #[error("tensor `{tensor}` is not in the checkpoint in {}; {HINT_LAYOUT}", dir.display())]
    MissingTensor { dir: PathBuf, tensor: String },
    /// A tensor's shape differs from what the model needs.
    #[error(
        "{}: tensor `{tensor}` has shape {} but the model needs {}; does config.json belong to \
         this checkpoint?",
        file.display(),
        fmt_shape(found),
        fmt_shape(expected)
    )]
    ShapeMismatch { file: PathBuf, tensor: String, expected: Vec<usize>, found: Vec<usize> },
    /// A tensor's element type cannot be used as a weight.
    #[error(
        "{}: tensor `{tensor}` is stored as {dtype}; amk reads weights stored as F32, F16 or \
         BF16 (re-export the checkpoint unquantised)",
        file.display()
    )]
    UnsupportedDType { file: PathBuf, tensor: String, dtype: String },
}

/// One problem found by [`Checkpoint::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightProblem {
    /// The tensor is absent; `similar` names a stored tensor with the same suffix, if any.
    Missing { tensor: String, expected: Vec<usize>, similar: Option<String> },
    /// The tensor's shape differs.
    Shape { tensor: String, file: PathBuf, expected: Vec<usize>, found: Vec<usize> },
    /// The tensor's dtype is not F32, F16 or BF16.
    DType { tensor: String, file: PathBuf, expected: Vec<usize>, found: String },
}

impl fmt::Display for WeightProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightProblem::Missing { tensor, expected, similar } => {
                write!(f, "`{tensor}`: missing (expected shape {})", fmt_shape(expected))?;
                if let Some(s) = similar {
                    write!(f, "; the checkpoint has `{s}`, is the name prefix different?")?;
                }
                Ok(())
            }
            WeightProblem::Shape { tensor, file, expected, found } => write!(
                f,
                "`{tensor}` in {}: expected shape {}, found {}",
                file.display(),
                fmt_shape(expected),
                fmt_shape(found)
            ),
            WeightProblem::DType { tensor, file, expected, found } => write!(
                f,
                "`{tensor}` in {}: expected dtype F32, F16 or BF16 (shape {}), found {found}",
                file.display(),
                fmt_shape(expected)
            ),
        }
    }
}

fn fmt_check(dir: &Path, problems: &[WeightProblem]) -> String {
    let mut s = format!(
        "the checkpoint in {} does not match the model ({} problem{}):",
        dir.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        s.push_str("\n  - ");
        s.push_str(&p.to_string());
    }
    s.push_str("\nhint: ");
    s.push_str(HINT_LAYOUT);
    s.push_str(", with the config.json that came with it");
    s
}

/// What the checkpoint says about one stored tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type as safetensors spells it (`"BF16"`, `"F32"`, `"I64"`, ...).
    pub dtype: String,
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// The file holding the data.
    pub file: PathBuf,
    /// Size of the data in bytes.
    pub nbytes: u64,
}

impl TensorInfo {
    /// The element type as amk's [`DType`], or `None` for types amk does not compute with.
    pub fn amk_dtype(&self) -> Option<DType> {
        match self.dtype.as_str() {
            "F32" => Some(DType::F32),
            "F16" => Some(DType::F16),
            "BF16" => Some(DType::BF16),
            "I32" => Some(DType::I32),
            _ => None,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

struct Shard {
    file: PathBuf,
    map: Mmap,
}

struct Entry {
    shard: usize,
    dtype: StDtype,
    shape: Vec<usize>,
    /// Absolute byte range within the shard's map.
    start: usize,
    end: usize,
}

/// A memory-mapped safetensors checkpoint: a table from tensor name to a validated location in
/// one of the mapped files. Opening reads only the headers; data is read on demand.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, Entry>,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("files", &self.shards.iter().map(|s| &s.file).collect::<Vec<_>>())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Checkpoint {
    /// Opens the checkpoint in `dir`: `model.safetensors` if present, else the shards listed by
    /// `model.safetensors.index.json`. A path to a single `.safetensors` file is accepted too.
    pub fn open(dir: &Path) -> Result<Checkpoint, CheckpointError> {
        if dir.is_file() {
            let parent = dir.parent().unwrap_or(Path::new(".")).to_path_buf();
            return Self::open_single(parent, dir.to_path_buf());
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Self::open_single(dir.to_path_buf(), single);
        }
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            return Self::open_sharded(dir, &index);
        }
        Err(CheckpointError::NotFound { dir: dir.to_path_buf(), hint: not_found_hint(dir) })
    }

    fn open_single(dir: PathBuf, file: PathBuf) -> Result<Checkpoint, CheckpointError> {
        let (map, meta) = map_and_parse(&file)?;
        let mut tensors = BTreeMap::new();
        for (name, e) in meta {
            tensors.insert(name, Entry { shard: 0, ..e });
        }
        Ok(Checkpoint { dir, shards: vec![Shard { file, map }], tensors })
    }

    fn open_sharded(dir: &Path, index: &Path) -> Result<Checkpoint, CheckpointError> {
        let idx_err = |detail: String| CheckpointError::Index { file: index.to_path_buf(), detail };
        let len = std::fs::metadata(index)
            .map_err(|source| CheckpointError::Io { file: index.to_path_buf(), source })?
            .len();
        if len > MAX_INDEX_LEN {
            return Err(idx_err(format!(
                "index is {len} bytes, more than the {MAX_INDEX_LEN} accepted; is it really a \
                 safetensors index?"
            )));
        }
        let text = std::fs::read(index)
            .map_err(|source| CheckpointError::Io { file: index.to_path_buf(), source })?;
        let json: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| idx_err(format!("not valid JSON: {e}")))?;
        let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
            idx_err("missing object field `weight_map` (tensor name -> shard file)".into())
        })?;
        if map.is_empty() {
            return Err(idx_err("`weight_map` is empty".into()));
        }
        // Validate every name first so that traversal is refused before any file is touched.
        let mut wanted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| {
                idx_err(format!("`weight_map[\"{tensor}\"]` is {shard}, not a file name string"))
            })?;
            if !is_plain_file_name(shard) {
                return Err(CheckpointError::BadShardName {
                    file: index.to_path_buf(),
                    shard: shard.to_string(),
                    tensor: tensor.clone(),
                });
            }
            wanted.entry(shard).or_default().push(tensor.as_str());
        }
        let mut shards = Vec::with_capacity(wanted.len());
        let mut tensors = BTreeMap::new();
        for (shard_name, names) in wanted {
            let file = dir.join(shard_name);
            if !file.is_file() {
                return Err(CheckpointError::MissingShard {
                    index: index.to_path_buf(),
                    dir: dir.to_path_buf(),
                    shard: shard_name.to_string(),
                    tensor: names.first().copied().unwrap_or_default().to_string(),
                });
            }
            let (map, mut meta) = map_and_parse(&file)?;
            let shard = shards.len();
            for name in names {
                let Some(e) = meta.remove(name) else {
                    return Err(CheckpointError::NotInShard {
                        index: index.to_path_buf(),
                        file,
                        shard: shard_name.to_string(),
                        tensor: name.to_string(),
                    });
                };
                tensors.insert(name.to_string(), Entry { shard, ..e });
            }
            if !meta.is_empty() {
                tracing::debug!(
                    file = %file.display(),
                    extra = meta.len(),
                    "shard holds tensors the index does not list; ignoring them"
                );
            }
            shards.push(Shard { file, map });
        }
        Ok(Checkpoint { dir: dir.to_path_buf(), shards, tensors })
    }

    /// The directory the checkpoint was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The mapped files, in the order tensors refer to them.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.file.as_path()).collect()
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the checkpoint holds no tensor at all.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Whether a tensor of that name is stored.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Dtype, shape and file of one tensor, or `None` if it is not stored.
    pub fn get(&self, name: &str) -> Option<TensorInfo> {
        self.tensors.get(name).map(|e| self.info(e))
    }

    fn info(&self, e: &Entry) -> TensorInfo {
        TensorInfo {
            dtype: dtype_name(e.dtype),
            shape: e.shape.clone(),
            file: self.file_of(e).to_path_buf(),
            nbytes: (e.end - e.start) as u64,
        }
    }

    fn file_of(&self, e: &Entry) -> &Path {
        self.shards.get(e.shard).map(|s| s.file.as_path()).unwrap_or(&self.dir)
    }

    /// Total number of stored elements (parameters), for `amk inspect`.
    pub fn param_count(&self) -> u64 {
        self.tensors.values().map(|e| e.shape.iter().map(|&d| d as u64).product::<u64>()).sum()
    }

    /// Bytes stored per dtype (keys as safetensors spells them), for `amk inspect`.
    pub fn bytes_by_dtype(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for e in self.tensors.values() {
            *out.entry(dtype_name(e.dtype)).or_insert(0) += (e.end - e.start) as u64;
        }
        out
    }

    /// The raw little-endian bytes of one tensor, straight from the map (no copy), for callers
    /// that upload weights in their stored type.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        let e = self.tensors.get(name)?;
        self.shards.get(e.shard)?.map.get(e.start..e.end)
    }

    /// Checks every weight the model needs at once: presence, shape and a dtype amk can read.
    /// Returns one [`CheckpointError::Mismatch`] listing every problem found.
    pub fn check(&self, specs: &[WeightSpec]) -> Result<(), CheckpointError> {
        let mut problems = Vec::new();
        for spec in specs {
            let Some(e) = self.tensors.get(&spec.name) else {
                problems.push(WeightProblem::Missing {
                    tensor: spec.name.clone(),
                    expected: spec.shape.clone(),
                    similar: self.similar_name(&spec.name),
                });
                continue;
            };
            if !matches!(e.dtype, StDtype::F32 | StDtype::F16 | StDtype::BF16) {
                problems.push(WeightProblem::DType {
                    tensor: spec.name.clone(),
                    file: self.file_of(e).to_path_buf(),
                    expected: spec.shape.clone(),
                    found: dtype_name(e.dtype),
                });
            }
            if e.shape != spec.shape {
                problems.push(WeightProblem::Shape {
                    tensor: spec.name.clone(),
                    file: self.file_of(e).to_path_buf(),
                    expected: spec.shape.clone(),
                    found: e.shape.clone(),
                });
            }
        }
        if problems.is_empty() {
            self.warn_unread_layers(specs);
            Ok(())
        } else {
            Err(CheckpointError::Mismatch { dir: self.dir.clone(), problems })
        }
    }

    /// Warns when the checkpoint holds layers past the ones the graph reads (config.json's
    /// `num_hidden_layers` smaller than the checkpoint's): the model then runs, but not as the
    /// checkpoint was trained.
    fn warn_unread_layers(&self, specs: &[WeightSpec]) {
        let layer = |name: &str| -> Option<usize> {
            name.strip_prefix("model.layers.")?.split('.').next()?.parse().ok()
        };
        let read = specs.iter().filter_map(|s| layer(&s.name)).max();
        let stored = self.tensors.keys().filter_map(|k| layer(k)).max();
        if let (Some(read), Some(stored)) = (read, stored) {
            if stored > read {
                tracing::warn!(
                    "{}: the checkpoint has layers 0..={stored} but config.json's \
                     num_hidden_layers reads only 0..={read}; the others are ignored",
                    self.dir.display()
                );
            }
        }
    }

    /// A stored tensor whose name ends with `name` without its first component (or the
    /// reverse), to point at prefix differences such as `model.` vs none.
    fn similar_name(&self, name: &str) -> Option<String> {
        let tail = name.split_once('.').map(|(_, t)| t).unwrap_or(name);
        self.tensors
            .keys()
            .find(|k| {
                k.as_str() != name
                    && (k.ends_with(&format!(".{name}"))
                        || k.as_str() == tail
                        || k.split_once('.').map(|(_, t)| t) == Some(tail))
            })
            .cloned()
    }

    /// Reads one tensor as `f32` after checking its shape against `spec`; F32, F16 and BF16
    /// are converted exactly. The mapped data may be unaligned; it is copied, never cast.
    pub fn load_f32(&self, spec: &WeightSpec) -> Result<Vec<f32>, CheckpointError> {
        let mut out = Vec::new();
        self.load_f32_into(spec, &mut out)?;
        Ok(out)
    }

    /// Like [`Checkpoint::load_f32`] but reuses `out` (cleared and resized), so a loader can
    /// convert many tensors through one buffer.
    pub fn load_f32_into(
        &self,
        spec: &WeightSpec,
        out: &mut Vec<f32>,
    ) -> Result<(), CheckpointError> {
        let e = self.tensors.get(&spec.name).ok_or_else(|| CheckpointError::MissingTensor {
            dir: self.dir.clone(),
            tensor: spec.name.clone(),
        })?;
        let file = self.file_of(e);
        if e.shape != spec.shape {
            return Err(CheckpointError::ShapeMismatch {
                file: file.to_path_buf(),
                tensor: spec.name.clone(),
                expected: spec.shape.clone(),
                found: e.shape.clone(),
            });
        }
        let unsupported = || CheckpointError::UnsupportedDType {
            file: file.to_path_buf(),
            tensor: spec.name.clone(),
            dtype: dtype_name(e.dtype),
        };
        let elem = match e.dtype {
            StDtype::F32 => 4,
            StDtype::F16 | StDtype::BF16 => 2,
            _ => return Err(unsupported()),
        };
        let bytes = self.shards.get(e.shard).and_then(|s| s.map.get(e.start..e.end));
        let n = spec.numel();
        let bytes = match bytes {
            Some(b) if Some(b.len()) == n.checked_mul(elem) => b,
            _ => {
                return Err(CheckpointError::Invalid {
                    file: file.to_path_buf(),
                    detail: format!(
                        "tensor `{}`: data size does not match its shape and dtype",
                        spec.name
                    ),
                })
            }
        };
        out.clear();
        out.resize(n, 0.0);
        match e.dtype {
            StDtype::F32 => f32_from_le(bytes, out),
            StDtype::F16 => f16_from_le(bytes, out),
            StDtype::BF16 => bf16_from_le(bytes, out),
            _ => return Err(unsupported()),
        }
        Ok(())
    }

    /// [`Checkpoint::load_f32`] for a weight a backend computes with: also refuses a NaN or an
    /// infinity (a corrupt checkpoint would otherwise decode garbage without a word).
    pub fn load_weight(&self, spec: &WeightSpec) -> Result<Vec<f32>, CheckpointError> {
        let out = self.load_f32(spec)?;
        if let Some((index, &value)) = out.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            let file = self.tensors.get(&spec.name).map(|e| self.file_of(e).to_path_buf());
            return Err(CheckpointError::NonFinite {
                file: file.unwrap_or_else(|| self.dir.clone()),
                tensor: spec.name.clone(),
                index,
                value,
            });
        }
        Ok(out)
    }
}

/// Copies little-endian `f32` bytes into `out` (same element count); a plain `memcpy` on
/// little-endian hosts whatever the source alignment.
fn f32_from_le(bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_endian = "little")]
    {
        let dst: &mut [u8] = bytemuck::cast_slice_mut(out);
        if dst.len() == bytes.len() {
            dst.copy_from_slice(bytes);
            return;
        }
    }
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

/// Widens little-endian `f16` bytes into `out` through a small aligned scratch buffer, so
/// `half`'s vectorised slice conversion (F16C where available) does the work.
fn f16_from_le(bytes: &[u8], out: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    let mut scratch = vec![half::f16::ZERO; F16_CHUNK.min(out.len())];
    for (src, dst) in bytes.chunks(2 * F16_CHUNK).zip(out.chunks_mut(F16_CHUNK)) {
        let n = dst.len();
        let Some(s) = scratch.get_mut(..n) else { return };
        for (h, c) in s.iter_mut().zip(src.chunks_exact(2)) {
            *h = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
        }
        s.convert_to_f32_slice(dst);
    }
}

/// Widens little-endian `bf16` bytes into `out`: the bits become the top half of an `f32`,
/// exactly what `half::bf16::to_f32` does, in a loop the compiler vectorises.
fn bf16_from_le(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
    }
}

fn dtype_name(d: StDtype) -> String {
    format!("{d:?}")
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && !name.contains("..")
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
        && !name.contains(':')
}

fn not_found_hint(dir: &Path) -> String {
    let mut hint = String::from(HINT_LAYOUT);
    if !dir.exists() {
        return format!("the directory does not exist; {hint}");
    }
    let has = |pred: &dyn Fn(&str) -> bool| -> Option<String> {
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (pred(&n) && e.path().is_file()).then_some(n)
        })
    };
    if let Some(n) = has(&|n| n.ends_with(".gguf")) {
        hint.push_str(&format!("; found {n}: pass the GGUF file itself and amk converts it"));
    } else if let Some(n) =
        has(&|n| n.ends_with(".bin") || n.ends_with(".pt") || n.ends_with(".pth"))
    {
        hint.push_str(&format!(
            "; found {n}: PyTorch pickles are not read, convert them to safetensors first \
             (transformers: model.save_pretrained(dir, safe_serialization=True))"
        ));
    } else if let Some(n) = has(&|n| n.ends_with(".safetensors")) {
        hint.push_str(&format!("; found {n}: rename it to {SINGLE_FILE}"));
    } else if dir.join(SINGLE_FILE).exists() {
        hint.push_str(&format!("; {SINGLE_FILE} is there but is not a regular file"));
    }
    hint
}

/// Opens and maps `file`, validates its header, and returns the map and its tensors with
/// absolute byte ranges (shard index 0, fixed up by the caller).
fn map_and_parse(file: &Path) -> Result<(Mmap, BTreeMap<String, Entry>), CheckpointError> {
    let io = |source| CheckpointError::Io { file: file.to_path_buf(), source };
    let f = File::open(file).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    if len < 8 {
        return Err(CheckpointError::TooShort { file: file.to_path_buf(), len });
    }
    // SAFETY: the map is read-only and amk never writes a checkpoint it has mapped; a file
    // truncated underneath us by another process is the one case that can fault (SIGBUS).
    let map = unsafe { Mmap::map(&f) }.map_err(io)?;
    let tensors = parse(file, &map)?;
    Ok((map, tensors))
}

/// Validates a whole safetensors file held in `buf` and lists its tensors.
///
/// Our own checks run first (length field, JSON, entry shape, offsets within the file) so
/// that errors name the tensor and so that no arithmetic in the safetensors crate can
/// overflow on absurd offsets; then `SafeTensors::read_metadata` validates the layout.
fn parse(file: &Path, buf: &[u8]) -> Result<BTreeMap<String, Entry>, CheckpointError> {
    let file_len = buf.len() as u64;
    let Some(len_bytes) = buf.get(..8) else {
        return Err(CheckpointError::TooShort { file: file.to_path_buf(), len: file_len });
    };
    let mut lb = [0u8; 8];
    lb.copy_from_slice(len_bytes);
    let header_len = u64::from_le_bytes(lb);
    if header_len > MAX_HEADER_LEN {
        return Err(CheckpointError::HeaderTooLarge { file: file.to_path_buf(), header_len });
    }
    // header_len <= 1e8, so this cannot overflow.
    let data_start = 8 + header_len as usize;
    let Some(header) = buf.get(8..data_start) else {
        return Err(CheckpointError::HeaderBeyondFile {
            file: file.to_path_buf(),
            header_len,
            file_len,
        });
    };
    let data_len = (buf.len() - data_start) as u64;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| CheckpointError::HeaderNotJson {
            file: file.to_path_buf(),
            detail: e.to_string(),
        })?;
    for (name, v) in &json {
        if name == "__metadata__" {
            // The format allows only string values there.
            let strings = v.as_object().is_some_and(|m| m.values().all(|x| x.is_string()));
            if !strings {
                return Err(CheckpointError::BadEntry {
                    file: file.to_path_buf(),
                    tensor: name.clone(),
                    detail: "`__metadata__` must be an object of string values".into(),
                });
            }
            continue;
        }
        precheck_entry(file, name, v, data_len)?;
    }
    let (_, meta) = SafeTensors::read_metadata(buf).map_err(|e| map_st_error(file, e))?;
    let mut out = BTreeMap::new();
    for (name, info) in meta.tensors() {
        let (s, e) = info.data_offsets;
        let (Some(start), Some(end)) = (data_start.checked_add(s), data_start.checked_add(e))
        else {
            return Err(CheckpointError::OffsetsOutOfBounds {
                file: file.to_path_buf(),
                tensor: name,
                start: s as u64,
                end: e as u64,
                data_len,
            });
        };
        if start > end || end > buf.len() {
            return Err(CheckpointError::OffsetsOutOfBounds {
                file: file.to_path_buf(),
                tensor: name,
                start: s as u64,
                end: e as u64,
                data_len,
            });
        }
        out.insert(
            name,
            Entry { shard: 0, dtype: info.dtype, shape: info.shape.clone(), start, end },
        );
    }
    Ok(out)
}

/// Checks one header entry before the safetensors crate sees it: the fields exist with the
/// right types, the dtype is known, and the offsets lie within the data section.
fn precheck_entry(
    file: &Path,
    name: &str,
    v: &serde_json::Value,
    data_len: u64,
) -> Result<(), CheckpointError> {
    let bad = |detail: String| CheckpointError::BadEntry {
        file: file.to_path_buf(),
        tensor: name.to_string(),
        detail,
    };
    let obj = v.as_object().ok_or_else(|| bad(format!("expected an object, found {v}")))?;
    let dtype = obj
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| bad("missing string field `dtype`".into()))?;
    let elem: u64 = match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        other => return Err(bad(format!("unknown dtype `{other}`"))),
    };
    let shape = obj
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad("missing array field `shape`".into()))?;
    let mut numel: u64 = 1;
    for d in shape {
        let d = d
            .as_u64()
            .filter(|&d| usize::try_from(d).is_ok())
            .ok_or_else(|| bad(format!("shape entry {d} is not a non-negative integer")))?;
        numel = numel.checked_mul(d).ok_or_else(|| bad("shape product overflows".into()))?;
    }
    let offs = obj
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .filter(|o| o.len() == 2)
        .ok_or_else(|| bad("missing field `data_offsets` = [start, end]".into()))?;
    let (Some(start), Some(end)) = (offs[0].as_u64(), offs[1].as_u64()) else {
        return Err(bad("`data_offsets` must be two non-negative integers".into()));
    };
    if start > end {
        return Err(bad(format!("data_offsets [{start}, {end}] end before they start")));
    }
    if end > data_len {
        return Err(CheckpointError::OffsetsOutOfBounds {
            file: file.to_path_buf(),
            tensor: name.to_string(),
            start,
            end,
            data_len,
        });
    }
    let nbytes = numel.checked_mul(elem).ok_or_else(|| bad("byte size overflows".into()))?;
    if end - start != nbytes {
        return Err(bad(format!(
            "data_offsets [{start}, {end}] span {} bytes but {dtype} {} needs {nbytes}",
            end - start,
            fmt_shape(
                &shape.iter().filter_map(|d| d.as_u64()).map(|d| d as usize).collect::<Vec<_>>()
            ),
        )));
    }
    Ok(())
}

fn map_st_error(file: &Path, e: SafeTensorError) -> CheckpointError {
    let file = file.to_path_buf();
    let detail = match e {
        SafeTensorError::HeaderTooSmall => {
            return CheckpointError::TooShort { file, len: 0 };
        }
        SafeTensorError::HeaderTooLarge => "header length exceeds the 100 MB limit".to_string(),
        SafeTensorError::InvalidHeaderLength => {
            "header length field points past the end of the file (truncated?)".to_string()
        }
        SafeTensorError::InvalidHeader => "header is not valid UTF-8".to_string(),
        SafeTensorError::InvalidHeaderDeserialization => {
            "header JSON does not follow the safetensors schema".to_string()
        }
        SafeTensorError::InvalidOffset(t) => {
            return CheckpointError::BadEntry {
                file,
                tensor: t,
                detail: "its data_offsets do not start where the previous tensor's data ends \
                         (tensors sorted by offset): a gap or an overlap, e.g. a tensor missing \
                         from the header or offsets edited by hand"
                    .into(),
            }
        }
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's data_offsets do not match its shape and dtype".to_string()
        }
        SafeTensorError::MetadataIncompleteBuffer => "the data section's length differs from \
             the tensors' total size; the file is truncated or has trailing bytes, download it \
             again"
            .to_string(),
        SafeTensorError::ValidationOverflow => "a tensor's size overflows".to_string(),
        other => format!("{other:?}"),
    };
    CheckpointError::Invalid { file, detail }
}
