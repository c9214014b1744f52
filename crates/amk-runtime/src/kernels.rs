//! f32 kernels of the CPU reference, one per IR op, written to be exact first and then fast.
//!
//! Each follows Hugging Face's fp32 PyTorch arithmetic closely enough that greedy decodes agree
//! token for token (the golden decodes' smallest top-1 margin is 0.014; these kernels differ from
//! PyTorch only in summation order, around 1e-6). The matrix-vector product carries nearly all
//! the time: it runs on rayon's pool over row blocks with a 16-lane dot product the compiler
//! vectorises.

use rayon::prelude::*;

/// Rows per parallel work item of [`matvec`]: big enough to amortise scheduling, small enough
/// to balance two to sixteen threads on the smallest projection (192 rows).
const ROWS_PER_TASK: usize = 32;

/// Dot product with 16 independent accumulators, so the loop vectorises without reassociating
/// floating-point adds the compiler may not reorder. On x86-64 with AVX2 the same loop is
/// compiled for 256-bit vectors; the lanes and their order are the same, so the result is
/// bit-identical on every machine (no fused multiply-add is used).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let ca = a.chunks_exact(L);
    let cb = b.chunks_exact(L);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    // Pairwise reduction of the lanes.
    let mut width = L;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0] + tail
}

/// `out = weight @ x (+ bias)` for a row-major `weight` of `out.len()` rows.
pub fn matvec(weight: &[f32], x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let cols = x.len();
    debug_assert_eq!(weight.len(), out.len() * cols);
    out.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(chunk, out)| {
        let row0 = chunk * ROWS_PER_TASK;
        for (i, o) in out.iter_mut().enumerate() {
            let r = row0 + i;
            *o = dot(&weight[r * cols..(r + 1) * cols], x);
        }
    });
    if let Some(bias) = bias {
        for (o, b) in out.iter_mut().zip(bias) {
            *o += b;
        }
    }
}

/// Hugging Face's `LlamaRMSNorm` in fp32: `weight * (x * rsqrt(mean(x^2) + eps))`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean_sq = dot(x, x) / x.len() as f32;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * inv);
    }
}

/// [`rms_norm`] of each `head_dim`-wide head of `x` with the same `[head_dim]` weight (Qwen3's
/// q_norm and k_norm, applied before rope).
pub fn head_rms_norm(x: &[f32], head_dim: usize, weight: &[f32], eps: f32, out: &mut [f32]) {
    for (xh, oh) in x.chunks_exact(head_dim).zip(out.chunks_exact_mut(head_dim)) {
        rms_norm(xh, weight, eps, oh);
    }
}

/// Rotates each head of `x` in place by position `pos` (rotate-half layout: dimension `i`
/// pairs with `i + head_dim/2`), with the frequencies of
/// [`amk_ir::config::RopeConfig::inv_freq`].
pub fn rope(x: &mut [f32], head_dim: usize, inv_freq: &[f32], pos: usize) {
    let half = head_dim / 2;
    let p = pos as f32;
    let (cos, sin): (Vec<f32>, Vec<f32>) = inv_freq
        .iter()
        .map(|&f| {
            let angle = p * f;
            (angle.cos(), angle.sin())
        })
        .unzip();
    for head in x.chunks_exact_mut(head_dim) {
        let (lo, hi) = head.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (lo[i], hi[i]);
            lo[i] = a * cos[i] - b * sin[i];
            hi[i] = b * cos[i] + a * sin[i];
        }
    }
}

/// Head counts and size of an attention op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// The first cache row a query at `position` attends to: 0, or with a sliding window `W`,
/// `max(0, position + 1 - W)` (transformers' mask `kv_idx > q_idx - W`).
pub fn window_start(position: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (position + 1).saturating_sub(w))
}

/// Grouped-query attention of one query over `positions` cached rows (a sliding window passes
/// the caches from its first row, [`window_start`]).
///
/// `q` is `[num_heads * head_dim]`; the caches are `[positions, num_kv_heads * head_dim]`
/// row-major; query head `h` reads key/value head `h / (num_heads / num_kv_heads)`. Each head
/// is one [`attention_partial`] finished by [`combine_attn_partials`], so a schedule that does
/// not split attention computes bit for bit what this reference does.
pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    positions: usize,
    heads: AttentionShape,
    out: &mut [f32],
) {
    let AttentionShape { num_heads, num_kv_heads, head_dim } = heads;
    let group = num_heads / num_kv_heads;
    let kv_dim = num_kv_heads * head_dim;
    out.par_chunks_mut(head_dim).enumerate().for_each(|(h, out)| {
        let at = (h / group) * head_dim;
        let qh = &q[h * head_dim..(h + 1) * head_dim];
        let rows = KvRows { k: &k_cache[at..], v: &v_cache[at..], stride: kv_dim };
        let mut partial = vec![0.0; head_dim + 2];
        attention_partial(qh, rows, positions, &mut partial);
        combine_attn_partials(&partial, head_dim, out);
    });
}

/// Key and value rows of one key/value head: row `t` starts at `t * stride` of each slice.
#[derive(Debug, Clone, Copy)]
pub struct KvRows<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub stride: usize,
}

/// The partial softmax of one query head over `positions` key/value rows (split attention):
/// `[m, l, acc..]` with `m` the largest score, `l = sum e^(s - m)` and `acc = sum e^(s - m) v`
/// (`m = -inf`, `l = 0` for no rows). [`combine_attn_partials`] finishes it.
pub fn attention_partial(q: &[f32], rows: KvRows<'_>, positions: usize, out: &mut [f32]) {
    let hd = q.len();
    let scale = 1.0 / (hd as f32).sqrt();
    let row = |t: usize| t * rows.stride..t * rows.stride + hd;
    let scores: Vec<f32> = (0..positions).map(|t| dot(q, &rows.k[row(t)]) * scale).collect();
    let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    out.fill(0.0);
    out[0] = m;
    let mut l = 0.0f32;
    for (t, &s) in scores.iter().enumerate() {
        let p = (s - m).exp();
        l += p;
        for (o, &x) in out[2..].iter_mut().zip(&rows.v[row(t)]) {
            *o += p * x;
        }
    }
    out[1] = l;
}

/// Combines one head's partials (each `[m, l, acc[head_dim]]`, as [`attention_partial`]
/// writes them) into its attention output; parts that saw no row (`l = 0`) are skipped.
pub fn combine_attn_partials(partials: &[f32], head_dim: usize, out: &mut [f32]) {
    let parts = partials.chunks_exact(head_dim + 2).filter(|p| p[1] > 0.0);
    let m = parts.clone().map(|p| p[0]).fold(f32::NEG_INFINITY, f32::max);
    let mut l = 0.0f32;
    out.fill(0.0);
    for p in parts {
        let c = (p[0] - m).exp();
        l += p[1] * c;
        for (o, &a) in out.iter_mut().zip(&p[2..]) {
            *o += a * c;
        }
    }
    let inv = 1.0 / l;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// Numerically stable softmax.
pub fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `silu(gate) * up`, with `silu(g) = g / (1 + exp(-g))`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// Index of the largest value, the first one on ties, as `torch.argmax` picks; NaN never wins.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in x.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_f64_sum() {
        let a: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let b: Vec<f32> = (0..1000).map(|i| ((i * 91 % 53) as f32 - 26.0) / 3.0).collect();
        let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        assert!((dot(&a, &b) as f64 - exact).abs() < 1e-3 * exact.abs().max(1.0));
    }

    #[test]
    fn matvec_with_bias() {
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut out = [0.0; 2];
        matvec(&w, &[1.0, 0.0, -1.0], Some(&[0.5, -0.5]), &mut out);
        assert_eq!(out, [-1.5, -2.5]);
    }

    #[test]
    fn rope_rotates_pairs_at_position_zero_identity() {
        let inv = amk_ir::config::RopeConfig { theta: 10000.0, llama3: None }.inv_freq(4);
        let mut x = [1.0, 2.0, 3.0, 4.0];
        rope(&mut x, 4, &inv, 0);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);
        rope(&mut x, 4, &inv, 1);
        // Dimension 0 pairs with 2 at frequency 1: (1, 3) rotated by 1 radian.
        assert!((x[0] - (1.0f32.cos() - 3.0 * 1.0f32.sin())).abs() < 1e-6);
        assert!((x[2] - (3.0 * 1.0f32.cos() + 1.0f32.sin())).abs() < 1e-6);
    }

    #[test]
    fn attention_single_position_returns_value() {
        let q = [1.0, 0.0, 0.0, 1.0];
        let k = [0.3, 0.4];
        let v = [7.0, 8.0];
        let mut out = [0.0; 4];
        let shape = AttentionShape { num_heads: 2, num_kv_heads: 1, head_dim: 2 };
        attention(&q, &k, &v, 1, shape, &mut out);
        assert_eq!(out, [7.0, 8.0, 7.0, 8.0]);
    }

    #[test]
    fn head_norm_normalises_each_head_alone() {
        let x = [3.0, 4.0, 0.5, 0.5];
        let mut out = [0.0; 4];
        head_rms_norm(&x, 2, &[1.0, 2.0], 0.0, &mut out);
        // Head 0: rms = sqrt(12.5); head 1: rms = 0.5.
        let r = 12.5f32.sqrt();
        assert_eq!(out, [3.0 / r, 2.0 * (4.0 / r), 1.0, 2.0]);
    }

    #[test]
    fn window_start_keeps_the_last_w_positions() {
        assert_eq!(window_start(5, None), 0);
        assert_eq!(window_start(5, Some(8)), 0);
        assert_eq!(window_start(7, Some(8)), 0);
        assert_eq!(window_start(8, Some(8)), 1);
        assert_eq!(window_start(29, Some(8)), 22);
        assert_eq!(window_start(3, Some(1)), 3);
    }

    #[test]
    fn argmax_first_on_ties_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5]), 1);
    }
}
