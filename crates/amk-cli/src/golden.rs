//! Hugging Face's golden decodes of SmolLM2-135M-Instruct (`fixtures/smollm2_golden.json`),
//! built into the binary: `amk gpu-test` and `amk agree` then run from a copied `amk` on a GPU
//! machine without a checkout of this repository, wherever they are started.

use anyhow::{Context, Result};
use std::path::Path;

/// The golden file's text as this binary was built with it.
pub const BUILTIN: &str = include_str!("../../../fixtures/smollm2_golden.json");

/// How messages name the built-in copy.
pub const BUILTIN_NAME: &str = "the built-in fixtures/smollm2_golden.json";

/// The golden file's text and its name for messages: the file at `path`, or the built-in copy.
pub fn read(path: Option<&Path>) -> Result<(String, String)> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read golden file {}", p.display()))?;
            Ok((text, p.display().to_string()))
        }
        None => Ok((BUILTIN.to_owned(), BUILTIN_NAME.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    /// The built-in copy is the fixture the tests use, byte for byte.
    #[test]
    fn builtin_is_the_fixture() {
        let fixture = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/smollm2_golden.json"
        ))
        .unwrap();
        assert_eq!(super::BUILTIN, fixture);
        let v: serde_json::Value = serde_json::from_str(super::BUILTIN).unwrap();
        assert_eq!(v["fp32_cpu"].as_array().map(Vec::len), Some(5));
    }
}
