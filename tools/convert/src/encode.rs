//! Rows of `f32` values into a tensor's stored bytes (f32, f16, q8 or q4), every row on the
//! thread pool.
//!
//! Rows are encoded independently of each other and written to fixed places, so the bytes do
//! not depend on the number of threads. Block formats are the library's ([`gpt2q::quant`]); the
//! q4 scale is chosen by [`crate::q4_search`].

use gpt2q::format::DType;
use gpt2q::quant::{BlockQ8, QK};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::q4_search;

/// Values per rayon task, at least: small rows are grouped so tasks are not too short.
const MIN_TASK_VALUES: usize = 16 * 1024;

/// Encodes the rows of `values` (`cols` each) in `dtype` into `out`, which holds exactly their
/// stored bytes. q4 rows minimise their rounding error weighted by `importance` (one weight per
/// column) when given.
///
/// # Panics
/// If `out` or `importance` do not match the shape (a bug in the caller, never user input).
pub fn encode_rows(
    dtype: DType,
    values: &[f32],
    cols: usize,
    importance: Option<&[f32]>,
    out: &mut [u8],
) {
    let row_bytes = dtype
        .row_bytes(cols as u64)
        .expect("the plan only holds storable shapes") as usize;
    assert!(
        cols > 0 && values.len().is_multiple_of(cols),
        "encode_rows: shape"
    );
    assert_eq!(
        out.len(),
        values.len() / cols * row_bytes,
        "encode_rows: output length"
    );
    if let Some(w) = importance {
        assert_eq!(w.len(), cols, "encode_rows: one weight per column");
    }
    out.par_chunks_mut(row_bytes)
        .zip(values.par_chunks(cols))
        .with_min_len((MIN_TASK_VALUES / cols).max(1))
        .for_each(|(dst, row)| encode_row(dtype, row, importance, dst));
}

fn encode_row(dtype: DType, row: &[f32], importance: Option<&[f32]>, dst: &mut [u8]) {
    match dtype {
        DType::F32 => {
            for (d, v) in dst.chunks_exact_mut(4).zip(row) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            // The slice conversion detects F16C once per call, not once per value.
            let mut halves = [f16::ZERO; 64];
            for (d, v) in dst.chunks_mut(128).zip(row.chunks(64)) {
                let h = &mut halves[..v.len()];
                h.convert_from_f32_slice(v);
                for (o, x) in d.chunks_exact_mut(2).zip(h.iter()) {
                    o.copy_from_slice(&x.to_le_bytes());
                }
            }
        }
        DType::Q8 => {
            for (d, x) in dst.chunks_exact_mut(2 + QK).zip(row.chunks_exact(QK)) {
                let b = BlockQ8::quantize(x.try_into().expect("QK values"));
                d[..2].copy_from_slice(&b.d.to_le_bytes());
                for (o, q) in d[2..].iter_mut().zip(b.qs) {
                    *o = q as u8;
                }
            }
        }
        DType::Q4 => {
            let ones = [1.0; QK];
            for (k, (d, x)) in dst
                .chunks_exact_mut(2 + QK / 2)
                .zip(row.chunks_exact(QK))
                .enumerate()
            {
                let w = importance.map_or(&ones, |w| {
                    w[k * QK..(k + 1) * QK].try_into().expect("QK weights")
                });
                let b = q4_search::quantize_block(x.try_into().expect("QK values"), w);
                d[..2].copy_from_slice(&b.d.to_le_bytes());
                d[2..].copy_from_slice(&b.qs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpt2q::quant::encode_tensor;

    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
            .collect()
    }

    /// f32, f16 and q8 bytes are the library's encoding exactly.
    #[test]
    fn non_q4_dtypes_match_the_library() {
        let (rows, cols) = (37, 96);
        let v = values(rows * cols);
        for dtype in [DType::F32, DType::F16, DType::Q8] {
            let mut out = vec![0u8; rows * dtype.row_bytes(cols as u64).unwrap() as usize];
            encode_rows(dtype, &v, cols, None, &mut out);
            assert!(out == encode_tensor(dtype, &v, cols), "{}", dtype.name());
        }
    }
}
