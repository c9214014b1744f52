//! Dequantization of the ggml types amk supports, bit-for-bit as gguf-py's `dequantize`
//! (numpy, f32 arithmetic, separate multiply and add: Rust never contracts them into an FMA).

use super::reader::GgmlType;
use half::f16;

/// Dequantizes `data` (exactly the tensor's bytes, validated by the reader) to f32 in storage
/// order, which is row-major in PyTorch order. `None` if the type is not supported.
pub(crate) fn dequantize(ty: GgmlType, data: &[u8]) -> Option<Vec<f32>> {
    Some(match ty {
        GgmlType::F32 => {
            data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        GgmlType::F16 => data.chunks_exact(2).map(|b| f16_at(b[0], b[1])).collect(),
        GgmlType::BF16 => data
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect(),
        GgmlType::Q8_0 => {
            let mut out = Vec::with_capacity(data.len() / 34 * 32);
            for block in data.chunks_exact(34) {
                let (d, qs) = block.split_at(2);
                let d = f16_at(d[0], d[1]);
                out.extend(qs.iter().map(|&q| d * f32::from(q as i8)));
            }
            out
        }
        GgmlType::Q4_0 => {
            let mut out = Vec::with_capacity(data.len() / 18 * 32);
            for block in data.chunks_exact(18) {
                let (d, qs) = block.split_at(2);
                let d = f16_at(d[0], d[1]);
                out.extend(qs.iter().map(|&q| d * f32::from((q & 0x0f) as i8 - 8)));
                out.extend(qs.iter().map(|&q| d * f32::from((q >> 4) as i8 - 8)));
            }
            out
        }
        GgmlType::Q4_1 => {
            let mut out = Vec::with_capacity(data.len() / 20 * 32);
            for block in data.chunks_exact(20) {
                let (dm, qs) = block.split_at(4);
                let d = f16_at(dm[0], dm[1]);
                let m = f16_at(dm[2], dm[3]);
                out.extend(qs.iter().map(|&q| d * f32::from(q & 0x0f) + m));
                out.extend(qs.iter().map(|&q| d * f32::from(q >> 4) + m));
            }
            out
        }
        _ => return None,
    })
}

fn f16_at(lo: u8, hi: u8) -> f32 {
    f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_nibble_order_and_affine() {
        // d = 0.5, m = -1.0; byte j holds element j (low nibble) and j + 16 (high nibble).
        let mut block = Vec::new();
        block.extend_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        block.extend_from_slice(&f16::from_f32(-1.0).to_bits().to_le_bytes());
        block.extend((0..16u8).map(|j| (15 - j) << 4 | j));
        let out = dequantize(GgmlType::Q4_1, &block).unwrap_or_default();
        assert_eq!(out.len(), 32);
        for j in 0..16 {
            assert_eq!(out[j], 0.5 * j as f32 - 1.0);
            assert_eq!(out[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        }
    }

    #[test]
    fn q4_0_and_q8_0_signs() {
        let mut block = f16::from_f32(2.0).to_bits().to_le_bytes().to_vec();
        block.extend([0x0fu8; 16]);
        let out = dequantize(GgmlType::Q4_0, &block).unwrap_or_default();
        assert_eq!(&out[..16], &[14.0f32; 16]);
        assert_eq!(&out[16..], &[-16.0f32; 16]);

        let mut block = f16::from_f32(0.25).to_bits().to_le_bytes().to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let out = dequantize(GgmlType::Q8_0, &block).unwrap_or_default();
        let want: Vec<f32> = (0..32).map(|i| 0.25 * (i - 16) as f32).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn bf16_and_unsupported() {
        let out = dequantize(GgmlType::BF16, &[0x80, 0x3f, 0x00, 0xc0]).unwrap_or_default();
        assert_eq!(out, vec![1.0, -2.0]);
        assert!(dequantize(GgmlType(13), &[0; 176]).is_none());
    }
}
