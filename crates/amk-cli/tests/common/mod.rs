//! What the `amk` CLI test binaries share: running the built binary and asserting on how it
//! ended.

use std::path::Path;
use std::process::{Command, Output};

/// The result of one `amk` run, as text.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn describe(&self) -> String {
        format!("exit {:?}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }

    /// Asserts success and no panic.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "amk failed:\n{}", self.describe());
        assert!(!self.stderr.contains("panicked"), "amk panicked:\n{}", self.describe());
        self
    }

    /// Asserts a clean failure: non-zero exit, `error:` on stderr, no panic, and every needle
    /// on stderr.
    pub fn fails_with(self, needles: &[&str]) -> Run {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "amk should fail with a non-zero exit:\n{}",
            self.describe()
        );
        assert!(!self.stderr.contains("panicked"), "amk panicked:\n{}", self.describe());
        assert!(!self.stderr.contains("RUST_BACKTRACE"), "amk panicked:\n{}", self.describe());
        assert!(self.stderr.contains("error:"), "no `error:` on stderr:\n{}", self.describe());
        for n in needles {
            assert!(self.stderr.contains(n), "stderr lacks {n:?}:\n{}", self.describe());
        }
        self
    }
}

/// Runs the built `amk` with `args`, quiet logs and no colour, and `AMK_CACHE_DIR` set to
/// `cache` when given.
pub fn run_with_cache(cache: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amk"));
    cmd.args(args).env_remove("AMK_LOG").env("NO_COLOR", "1");
    if let Some(cache) = cache {
        cmd.env("AMK_CACHE_DIR", cache);
    }
    let out: Output = cmd.output().expect("the amk binary runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

/// A temporary path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}
