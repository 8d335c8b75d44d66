//! Numeric kernels: the one dispatch point for every operation of the forward pass.
//!
//! At first use, [`path`] detects the CPU once (`is_x86_feature_detected!` /
//! `is_aarch64_feature_detected!`) and picks a table of [`Ops`]: AVX2+FMA+F16C on x86-64,
//! NEON (plus `dotprod` where present) on aarch64, else the portable [`scalar`] twins. Setting
//! `GPT2Q_KERNELS=scalar` forces the scalar table, for comparison. Everything above this module
//! calls the safe functions here; they check lengths with real asserts (a mismatch is a bug in the
//! model code, never user input).
//!
//! Weights stored as q8/q4 meet activations quantised per block of 32 to int8 ([`BlockQ8Act`]):
//! integer products summed per block, one float multiply per block, as ggml pairs q4_0/q8_0 with
//! q8_0. f16 and f32 weights take float dot products.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "aarch64")]
mod neon;
pub mod scalar;

use std::sync::OnceLock;

use half::f16;
use rayon::prelude::*;

use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act, QK};
use crate::tensor::{Matrix, Weights};

/// Which implementation the dispatcher chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// Portable Rust.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX2 plus AVX-512 VNNI for the integer dot products.
    Avx512Vnni,
    /// aarch64 NEON (ARMv8.0, e.g. Cortex-A72 in the Raspberry Pi 4).
    Neon,
    /// aarch64 NEON with the ARMv8.2 `sdot` instruction (e.g. Cortex-A76 in the Raspberry Pi 5).
    NeonDotprod,
}

impl KernelPath {
    /// Short name as printed by `gpt2q info` and `gpt2q bench`.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Scalar => "scalar",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512Vnni => "avx512-vnni",
            KernelPath::Neon => "neon",
            KernelPath::NeonDotprod => "neon-dotprod",
        }
    }
}

/// The operations every implementation provides. The function pointers are safe to call: an
/// architecture's table is only built after detecting the CPU features it needs.
#[derive(Clone, Copy)]
pub struct Ops {
    /// The implementation these belong to.
    pub path: KernelPath,
    /// Quantises `x` (a multiple of 32 long) into `out` (`x.len() / 32` blocks): per block
    /// `d = max|x| / 127`, `q = round_ties_even(x · (1/d))` (all zero when `d == 0`).
    pub quantize_act: fn(x: &[f32], out: &mut [BlockQ8Act]),
    /// `Σ_blocks d_w · d_x · Σ_i q_w[i] · q_x[i]` over equally long block slices.
    pub dot_q8: fn(w: &[BlockQ8], x: &[BlockQ8Act]) -> f32,
    /// `Σ_blocks d_w · d_x · Σ_i (q_w[i] − 8) · q_x[i]` over equally long block slices.
    pub dot_q4: fn(w: &[BlockQ4], x: &[BlockQ8Act]) -> f32,
    /// `Σ w[i] · x[i]` with f16 weights.
    pub dot_f16: fn(w: &[f16], x: &[f32]) -> f32,
    /// `Σ a[i] · b[i]`.
    pub dot_f32: fn(a: &[f32], b: &[f32]) -> f32,
}

/// The table for this CPU (detected once), or the scalar one if `GPT2Q_KERNELS=scalar`.
pub fn ops() -> &'static Ops {
    static OPS: OnceLock<Ops> = OnceLock::new();
    OPS.get_or_init(|| {
        if std::env::var("GPT2Q_KERNELS").is_ok_and(|v| v == "scalar") {
            scalar::ops()
        } else {
            detect()
        }
    })
}

/// The implementation in use.
pub fn path() -> KernelPath {
    ops().path
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Ops {
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        // SAFETY: the features avx2::ops requires were just detected.
        unsafe { avx2::ops() }
    } else {
        scalar::ops()
    }
}

#[cfg(target_arch = "aarch64")]
fn detect() -> Ops {
    // NEON is part of the aarch64 baseline; neon::ops checks for dotprod itself.
    neon::ops()
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect() -> Ops {
    scalar::ops()
}

/// Scratch for matrix products: activations quantised to int8 and a transposed output tile.
/// Sized once per session for the widest input and the largest batch.
pub struct MatmulScratch {
    act: Vec<BlockQ8Act>,
    out_t: Vec<f32>,
    max_cols: usize,
    max_tokens: usize,
}

impl MatmulScratch {
    /// Room for `max_tokens` input rows of up to `max_cols` values and outputs of up to
    /// `max_rows` values each.
    pub fn new(max_cols: usize, max_rows: usize, max_tokens: usize) -> Self {
        MatmulScratch {
            act: vec![BlockQ8Act::default(); max_cols.div_ceil(QK) * max_tokens],
            out_t: vec![0.0; max_rows * max_tokens],
            max_cols,
            max_tokens,
        }
    }

    /// Bytes held.
    pub fn byte_len(&self) -> usize {
        std::mem::size_of_val(self.act.as_slice()) + std::mem::size_of_val(self.out_t.as_slice())
    }
}

/// Below this many weights a product runs on one thread: splitting costs more than it saves.
const PARALLEL_MIN_WEIGHTS: usize = 1 << 16;
/// Rows per parallel task: small enough to balance, large enough that a task's weights amortise
/// its scheduling, and for a batch, small enough to stay in L1/L2 while every token uses them.
const ROWS_PER_TASK: usize = 16;

/// `y[t] = W · x[t]` for `n` tokens: `x` is `(n, w.cols)` and `y` is `(n, w.rows)`, row-major.
pub fn matmul(w: &Matrix<'_>, x: &[f32], n: usize, y: &mut [f32], scratch: &mut MatmulScratch) {
    matmul_with(ops(), w, x, n, y, scratch);
}

/// The activation quantisers skip NaN when taking `max |x|` (as `f32::max` does) and store it as
/// 0, which would silently turn a NaN activation (a damaged weight upstream) into a plausible
/// one. A block holding a NaN gets a NaN scale instead, so the fault reaches the logits, where
/// the sampler reports it. (An infinite value already gives `0 * inf = NaN` in the dot products.)
fn poison_nan_blocks(xs: &[f32], act: &mut [BlockQ8Act]) {
    for (block, a) in xs.chunks_exact(QK).zip(act) {
        if block.iter().any(|v| v.is_nan()) {
            a.d = f32::NAN;
        }
    }
}

/// [`matmul`] with a given table of operations (benchmarks compare SIMD with scalar this way).
pub fn matmul_with(
    ops: &Ops,
    w: &Matrix<'_>,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    assert_eq!(x.len(), n * w.cols, "matmul: input length");
    assert_eq!(y.len(), n * w.rows, "matmul: output length");
    assert!(
        w.cols <= scratch.max_cols && n <= scratch.max_tokens,
        "matmul: scratch too small"
    );
    let nb = w.cols / QK;
    let act = &mut scratch.act[..nb * n];
    if matches!(w.weights, Weights::Q8(_) | Weights::Q4(_)) {
        for (xs, a) in x.chunks_exact(w.cols).zip(act.chunks_exact_mut(nb)) {
            (ops.quantize_act)(xs, a);
            poison_nan_blocks(xs, a);
        }
    }
    let act = &*act;
    // Row tiles in parallel, every token against a tile while it is in cache. A batch's output
    // is produced transposed, `(rows, n)`, so each task writes one contiguous slice.
    let out = if n == 1 {
        &mut *y
    } else {
        &mut scratch.out_t[..n * w.rows]
    };
    rows_parallel(w, n, out, |part, ys| {
        for r in 0..part.rows {
            for t in 0..n {
                let xs = &x[t * w.cols..(t + 1) * w.cols];
                let a = if act.is_empty() {
                    act
                } else {
                    &act[t * nb..(t + 1) * nb]
                };
                ys[r * n + t] = dot_row(ops, part, r, xs, a);
            }
        }
    });
    if n > 1 {
        let out_t = &scratch.out_t[..n * w.rows];
        for r in 0..w.rows {
            for t in 0..n {
                y[t * w.rows + r] = out_t[r * n + t];
            }
        }
    }
}

/// Dot product of row `r` of `part` with one token's input (`act` holds it quantised when the
/// weights are).
#[inline]
fn dot_row(ops: &Ops, part: &Matrix<'_>, r: usize, x: &[f32], act: &[BlockQ8Act]) -> f32 {
    let cols = part.cols;
    let nb = cols / QK;
    match part.weights {
        Weights::F32(w) => (ops.dot_f32)(&w[r * cols..(r + 1) * cols], x),
        Weights::F16(w) => (ops.dot_f16)(&w[r * cols..(r + 1) * cols], x),
        Weights::Q8(w) => (ops.dot_q8)(&w[r * nb..(r + 1) * nb], act),
        Weights::Q4(w) => (ops.dot_q4)(&w[r * nb..(r + 1) * nb], act),
    }
}

/// Runs `f(tile, outputs)` over row tiles of `w` (outputs `(tile.rows, n)`), in parallel when
/// worth it.
fn rows_parallel(
    w: &Matrix<'_>,
    n: usize,
    y_t: &mut [f32],
    f: impl Fn(&Matrix<'_>, &mut [f32]) + Sync,
) {
    let threads = rayon::current_num_threads();
    if threads == 1 || w.rows * w.cols * n < PARALLEL_MIN_WEIGHTS {
        f(w, y_t);
        return;
    }
    let rows_per_task = ROWS_PER_TASK.max(w.rows / (threads * 16));
    y_t.par_chunks_mut(rows_per_task * n)
        .enumerate()
        .for_each(|(i, ys)| {
            let part = w.rows_slice(i * rows_per_task, ys.len() / n);
            f(&part, ys);
        });
}

/// `y = W · x + b` for one token.
pub fn linear(w: &Matrix<'_>, b: &[f32], x: &[f32], y: &mut [f32], scratch: &mut MatmulScratch) {
    assert_eq!(b.len(), w.rows, "linear: bias length");
    matmul(w, x, 1, y, scratch);
    add_assign(y, b);
}

/// `y[t] = W · x[t] + b` for `n` tokens.
pub fn linear_batch(
    w: &Matrix<'_>,
    b: &[f32],
    x: &[f32],
    n: usize,
    y: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    assert_eq!(b.len(), w.rows, "linear: bias length");
    matmul(w, x, n, y, scratch);
    for row in y.chunks_exact_mut(w.rows) {
        add_assign(row, b);
    }
}

/// Row `r` of `w` as floats (embedding lookup).
pub fn dequantize_row(w: &Matrix<'_>, r: usize, out: &mut [f32]) {
    assert!(r < w.rows, "dequantize_row: row {r} of {}", w.rows);
    assert_eq!(out.len(), w.cols, "dequantize_row: output length");
    scalar::dequantize_row(w, r, out);
}

/// `Σ a[i] · b[i]` with the fastest implementation.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: lengths");
    (ops().dot_f32)(a, b)
}

pub use scalar::{add_assign, axpy, gelu_erf, gelu_tanh, softmax};

/// Layer norm of `x` into `out`.
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    assert!(x.len() == weight.len() && x.len() == bias.len() && x.len() == out.len());
    scalar::layer_norm(x, weight, bias, eps, out);
}
