//! Numeric kernels: the one dispatch point for every operation of the forward pass.
//!
//! Callers use the functions here; they check lengths with real asserts (a mismatch is a bug in
//! the model code, never user input) and pick an implementation. Today every operation runs the
//! portable [`scalar`] twin, with matrix × vector products split across threads by row; SIMD
//! implementations slot in behind the same functions.

pub mod scalar;

use rayon::prelude::*;

use crate::tensor::Matrix;

/// Below this many weights a matrix × vector product runs on one thread: splitting costs more
/// than it saves.
const PARALLEL_MIN_WEIGHTS: usize = 1 << 16;
/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// `y = W · x` (`x.len() == w.cols`, `y.len() == w.rows`).
pub fn matvec(w: &Matrix<'_>, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), w.cols, "matvec: input length");
    assert_eq!(y.len(), w.rows, "matvec: output length");
    if w.rows * w.cols < PARALLEL_MIN_WEIGHTS || rayon::current_num_threads() == 1 {
        scalar::matvec(w, x, y);
        return;
    }
    y.par_chunks_mut(ROWS_PER_TASK)
        .enumerate()
        .for_each(|(i, ys)| {
            let part = w.rows_slice(i * ROWS_PER_TASK, ys.len());
            scalar::matvec(&part, x, ys);
        });
}

/// `y = W · x + b`.
pub fn linear(w: &Matrix<'_>, b: &[f32], x: &[f32], y: &mut [f32]) {
    assert_eq!(b.len(), w.rows, "linear: bias length");
    matvec(w, x, y);
    scalar::add_assign(y, b);
}

/// Row `r` of `w` as floats.
pub fn dequantize_row(w: &Matrix<'_>, r: usize, out: &mut [f32]) {
    assert!(r < w.rows, "dequantize_row: row {r} of {}", w.rows);
    assert_eq!(out.len(), w.cols, "dequantize_row: output length");
    scalar::dequantize_row(w, r, out);
}

pub use scalar::{add_assign, axpy, dot_f32, gelu_erf, gelu_tanh, softmax};

/// Layer norm of `x` into `out`.
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    assert!(x.len() == weight.len() && x.len() == bias.len() && x.len() == out.len());
    scalar::layer_norm(x, weight, bias, eps, out);
}
