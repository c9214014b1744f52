//! Weight precisions below f32, defined once for every executor: the GPU backend uploads
//! weights in these formats, and [`emulate`] gives the f32 values a device computes with, so
//! the CPU reference can run (and measure the quality of) the same precision.
//!
//! - bf16: every weight rounded to the nearest bfloat16 (ties to even).
//! - int8: each row of a matrix (one output channel; for the embedding table, one token)
//!   quantized symmetrically, `q = round(w / scale)` (half away from zero) clamped to
//!   `-127..=127`; the value used is `q * scale`. The scale is `clip * max|w| / 127` with the
//!   clipping ratio from [`CLIPS`] that gives the row the least squared error (plain
//!   `max|w| / 127` spends most of the 255 levels on one outlier). Vectors (norm weights,
//!   biases) stay f32.

use amk_codegen_cuda::WeightDType;
use amk_ir::tensor::WeightSpec;
use amk_schedule::PrecisionPlan;
use rayon::prelude::*;

/// Int8 rows with one f32 scale per row.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedRows {
    /// Row-major `rows x cols` values.
    pub values: Vec<i8>,
    /// One scale per row.
    pub scales: Vec<f32>,
    pub cols: usize,
}

impl QuantizedRows {
    /// The f32 values the int8 rows stand for: `q * scale`.
    pub fn dequantize(&self) -> Vec<f32> {
        if self.cols == 0 {
            return Vec::new();
        }
        self.values
            .chunks(self.cols)
            .zip(&self.scales)
            .flat_map(|(row, &s)| row.iter().map(move |&q| q as f32 * s))
            .collect()
    }
}

/// The clipping ratios tried for each row's scale, largest first (ties keep the larger).
pub const CLIPS: [f32; 11] = [1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82, 0.79, 0.76, 0.73, 0.7];

fn quantize(x: f32, inv: f32) -> i8 {
    (x * inv).round().clamp(-127.0, 127.0) as i8
}

/// Quantizes a row-major matrix of `cols` columns row by row (symmetric, per output channel,
/// the clipping ratio of least squared error). An all-zero row gets scale 0. A ragged tail is
/// treated as a short last row. Rows are independent, so they are quantized on rayon's pool:
/// the result is the same as one row after another (a Llama-3.2-1B-sized model's 1.2 billion
/// weights took 40 s on one core).
pub fn quantize_rows(w: &[f32], cols: usize) -> QuantizedRows {
    let cols = cols.max(1);
    let mut values = vec![0i8; w.len()];
    let mut scales = vec![0f32; w.len().div_ceil(cols)];
    values
        .par_chunks_mut(cols)
        .zip(w.par_chunks(cols))
        .zip(scales.par_iter_mut())
        .for_each(|((q, row), scale)| *scale = quantize_row(row, q));
    QuantizedRows { values, scales, cols }
}

/// One row of [`quantize_rows`]: writes its values into `q` and returns its scale.
fn quantize_row(row: &[f32], q: &mut [i8]) -> f32 {
    let max = row.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
    let mut best = (f64::INFINITY, 0.0f32);
    for clip in CLIPS {
        let scale = clip * max / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let err: f64 = row
            .iter()
            .map(|&x| {
                let d = (x - quantize(x, inv) as f32 * scale) as f64;
                d * d
            })
            .sum();
        if err < best.0 {
            best = (err, scale);
        }
    }
    let scale = best.1;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (v, &x) in q.iter_mut().zip(row) {
        *v = quantize(x, inv);
    }
    scale
}

/// `x` rounded to the nearest bfloat16, as f32.
pub fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// Whether a weight is stored as an int8 matrix in int8 mode (2-D tensors; vectors stay f32).
pub fn is_matrix(spec: &WeightSpec) -> bool {
    spec.shape.len() == 2
}

/// The weight formats of a build: its dtype, with a per-op precision plan's matrices in
/// their own format (what codegen gives each weight buffer; see
/// `amk_codegen_cuda::WeightDType::matrix_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WeightPrecision {
    /// The build's `--precision`.
    pub dtype: WeightDType,
    /// Classes of matrices held in another format.
    pub plan: PrecisionPlan,
}

impl From<WeightDType> for WeightPrecision {
    fn from(dtype: WeightDType) -> Self {
        WeightPrecision { dtype, plan: PrecisionPlan::default() }
    }
}

impl WeightPrecision {
    /// The format a device holds `spec` in.
    pub fn format_of(&self, spec: &WeightSpec) -> WeightDType {
        let format = self.plan.format_of(&spec.name, spec.shape.len());
        self.dtype.weight_format(is_matrix(spec), format)
    }
}

impl std::fmt::Display for WeightPrecision {
    /// The dtype, then each class the plan holds otherwise: `bf16 (lm_head int8)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dtype.as_str())?;
        if self.dtype == WeightDType::F32 || self.plan.is_as_built() {
            return Ok(());
        }
        let p = self.plan;
        let parts: Vec<String> =
            [("attention", p.attention), ("mlp", p.mlp), ("lm_head", p.lm_head)]
                .into_iter()
                .filter_map(|(class, format)| {
                    let f = self.dtype.matrix_format(format);
                    (f != self.dtype).then(|| format!("{class} {f}"))
                })
                .collect();
        if !parts.is_empty() {
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

/// The f32 values a device holding `spec` as `precision` gives it computes with.
pub fn emulate(
    precision: impl Into<WeightPrecision>,
    spec: &WeightSpec,
    data: Vec<f32>,
) -> Vec<f32> {
    emulate_as(precision.into().format_of(spec), spec, data)
}

/// The f32 values a device holding `spec` in `format` computes with.
pub fn emulate_as(format: WeightDType, spec: &WeightSpec, data: Vec<f32>) -> Vec<f32> {
    match format {
        WeightDType::F32 => data,
        WeightDType::BF16 => data.into_iter().map(round_bf16).collect(),
        WeightDType::Int8 if is_matrix(spec) => quantize_rows(&data, spec.shape[1]).dequantize(),
        WeightDType::Int8 => data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_symmetric_per_channel() {
        let w = [0.5, -1.0, 0.25, 0.0, 0.0, 0.0, 3.0, 1.5, -0.75];
        let q = quantize_rows(&w, 3);
        assert_eq!(q.scales, vec![1.0 / 127.0, 0.0, 3.0 / 127.0]);
        assert_eq!(&q.values[..3], &[64, -127, 32]);
        assert_eq!(&q.values[3..6], &[0, 0, 0]);
        assert_eq!(&q.values[6..], &[127, 64, -32]);
        let d = q.dequantize();
        for (a, b) in w.iter().zip(&d) {
            assert!((a - b).abs() <= 3.0 / 127.0 / 2.0 + 1e-7, "{a} vs {b}");
        }
    }

    /// Rows quantized together on the pool equal each row quantized alone, a ragged tail too.
    #[test]
    fn rows_are_quantized_independently() {
        let cols = 19;
        let w: Vec<f32> =
            (0..37 * cols + 5).map(|i| ((i * 7919) % 211) as f32 / 50.0 - 2.1).collect();
        let all = quantize_rows(&w, cols);
        assert_eq!(all.scales.len(), 38);
        for (r, row) in w.chunks(cols).enumerate() {
            let one = quantize_rows(row, cols);
            assert_eq!(one.scales, [all.scales[r]], "row {r}");
            assert_eq!(one.values, &all.values[r * cols..r * cols + row.len()], "row {r}");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest() {
        assert_eq!(round_bf16(1.0), 1.0);
        assert_eq!(round_bf16(1.0 + 1.0 / 512.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
    }
}
