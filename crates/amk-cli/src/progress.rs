//! Progress bars for long steps (GGUF import, weight loading). indicatif draws them on stderr
//! only when it is a terminal, so piped and `--json` output stays clean.

use amk_ir::gguf::ImportProgress;
use indicatif::{ProgressBar, ProgressStyle};

/// A bar over bytes for a GGUF import, created on the first report.
pub struct ImportBar {
    bar: Option<ProgressBar>,
}

impl ImportBar {
    pub fn new() -> Self {
        ImportBar { bar: None }
    }

    /// Feeds one progress report.
    pub fn update(&mut self, p: &ImportProgress) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(p.bytes_total);
            bar.set_style(
                ProgressStyle::with_template(
                    "importing GGUF {bar:30.cyan/blue} {bytes}/{total_bytes} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        bar.set_position(p.bytes_done);
        bar.set_message(format!("{}/{} tensors", p.tensors_done, p.tensors_total));
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A bar over weight tensors while a backend loads them.
pub fn weight_bar(total: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30.cyan/blue}} {{pos}}/{{len}} tensors"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
