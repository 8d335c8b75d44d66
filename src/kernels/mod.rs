//! Numeric kernels: the one dispatch point for every operation of the forward pass.
//!
//! At first use, [`path`] detects the CPU once (`is_x86_feature_detected!` /
//! `is_aarch64_feature_detected!`, `AT_HWCAP` on 32-bit ARM) and picks a table of [`Ops`]:
//! AVX2+FMA+F16C on x86-64, NEON (plus `dotprod` where present) on aarch64, NEON with VFPv4 on
//! 32-bit ARM, else the portable [`scalar`] twins. Setting
//! `GPT2Q_KERNELS=scalar` forces the scalar table, for comparison. Everything above this module
//! calls the safe functions here; they check lengths with real asserts (a mismatch is a bug in the
//! model code, never user input).
//!
//! Weights stored as q8/q4 meet activations quantised per block of 32 to int8 ([`BlockQ8Act`]):
//! integer products summed per block, one float multiply per block, as ggml pairs q4_0/q8_0 with
//! q8_0. f16 and f32 weights take float dot products.

#[cfg(all(target_arch = "arm", target_os = "linux"))]
mod armv7;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "aarch64")]
mod neon;
pub mod scalar;

use std::sync::OnceLock;

use half::f16;
use rayon::prelude::*;

use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act, QK};
use crate::tensor::{Matrix, SplitMatrix, Weights};

/// Which implementation the dispatcher chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// Portable Rust.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// aarch64 NEON (ARMv8.0, e.g. Cortex-A72 in the Raspberry Pi 4).
    Neon,
    /// aarch64 NEON with the ARMv8.2 `sdot` instruction (e.g. Cortex-A76 in the Raspberry Pi 5).
    NeonDotprod,
    /// 32-bit ARM NEON with VFPv4 (armv7 builds, e.g. 32-bit Raspberry Pi OS on a Cortex-A53).
    Armv7Neon,
}

impl KernelPath {
    /// Short name as printed by `gpt2q info` and `gpt2q bench`.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Scalar => "scalar",
            KernelPath::Avx2 => "avx2",
            KernelPath::Neon => "neon",
            KernelPath::NeonDotprod => "neon-dotprod",
            KernelPath::Armv7Neon => "armv7-neon",
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
    /// Many rows against many tokens: with `w` holding `rows` rows and `x` holding `n` tokens
    /// of `nb` blocks each, `out[r · n + t]` = [`Ops::dot_q8`] of row `r` and token `t` (the
    /// same exact integer block sums; only the float summation order may differ). SIMD tables
    /// compute several rows × tokens per pass so each loaded block serves several products.
    /// Weights and activations must lie in `−127..=127`, as the file format and
    /// [`Ops::quantize_act`] define them (the AVX2 kernels move signs between the two, the NEON
    /// kernels sum two int8 products in an i16 lane).
    pub matmul_q8: fn(w: &[BlockQ8], x: &[BlockQ8Act], nb: usize, out: &mut [f32]),
    /// [`Ops::matmul_q8`] for q4 weights (each product as [`Ops::dot_q4`]).
    pub matmul_q4: fn(w: &[BlockQ4], x: &[BlockQ8Act], nb: usize, out: &mut [f32]),
    /// Layer norm of `x` into `out` (all four slices equally long): `(x − mean) / √(var + eps)
    /// · weight + bias`, biased variance.
    pub layer_norm: LayerNormFn,
    /// GELU, tanh approximation (GPT-2's `gelu_new`), in place. NaN stays NaN.
    pub gelu_tanh: fn(x: &mut [f32]),
    /// Softmax in place (max subtracted first). Any NaN input makes every output NaN.
    pub softmax: fn(x: &mut [f32]),
    /// `acc += x` element-wise (equal lengths; bit-identical in every table).
    pub add_assign: fn(acc: &mut [f32], x: &[f32]),
    /// `acc += s · x` element-wise, product and sum rounded separately (equal lengths;
    /// bit-identical in every table).
    pub axpy: fn(acc: &mut [f32], s: f32, x: &[f32]),
    /// [`Ops::axpy`] with f16 `x` (the f16 KV cache's weighted sum of values).
    pub axpy_f16: fn(acc: &mut [f32], s: f32, x: &[f16]),
}

/// Constants of the vector `exp` the SIMD instruction sets use (Cephes `expf`).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    all(target_arch = "arm", target_os = "linux")
))]
mod exp_consts {
    /// Inputs above this give `+inf`. It keeps `n = round(x · log2 e)` at most 127, so `2^n` is
    /// finite; the true `e^x` overflows only above 88.72, so `(88.37, 88.72]` saturates early.
    pub(super) const EXP_HI: f32 = 88.37;
    /// Inputs below this (`e^x` < 2^−126, the smallest normal float) give `0`.
    pub(super) const EXP_LO: f32 = -87.336_55;
    /// `ln 2` split so that `n · LN2_HI` is exact for `|n| ≤ 128` (Cephes' C1, C2).
    pub(super) const LN2_HI: f32 = 0.693_359_4;
    /// The rest of `ln 2`.
    pub(super) const LN2_LO: f32 = -2.121_944_4e-4;
    /// Cephes `expf` coefficients (the last, 0.5000000120, rounds to 0.5 in f32), highest first, of `e^r ≈ 1 + r + r²·P(r)` on `|r| ≤ ln2 / 2`.
    pub(super) const EXP_P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
}

/// Signature of [`Ops::layer_norm`]: `(x, weight, bias, eps, out)`.
pub type LayerNormFn = fn(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]);

/// Checks the shapes of a [`Ops::matmul_q8`] / [`Ops::matmul_q4`] call and returns
/// `(rows, tokens)`. Panics on a mismatch (a bug in the caller, never user input).
pub fn tile_shape(w_blocks: usize, x_blocks: usize, nb: usize, out_len: usize) -> (usize, usize) {
    assert!(nb > 0, "matmul: zero-width rows");
    assert!(
        w_blocks % nb == 0 && x_blocks % nb == 0,
        "matmul: blocks not a multiple of the row width"
    );
    let (rows, n) = (w_blocks / nb, x_blocks / nb);
    assert_eq!(out_len, rows * n, "matmul: output length");
    (rows, n)
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

#[cfg(all(target_arch = "arm", target_os = "linux"))]
fn detect() -> Ops {
    // NEON is optional on 32-bit ARM: armv7::ops checks `AT_HWCAP` for NEON and VFPv4.
    armv7::ops().unwrap_or_else(scalar::ops)
}

#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    all(target_arch = "arm", target_os = "linux")
)))]
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
        // A count rather than `any`: without the early exit the loop vectorises (a tenth of
        // the instructions on NEON).
        if block.iter().map(|v| v.is_nan() as u32).sum::<u32>() > 0 {
            a.d = f32::NAN;
        }
    }
}

/// [`matmul`] over a matrix stored in two row ranges (the token embedding as LM head): `y` is
/// `(n, w.rows())`, as if the parts were one matrix.
pub fn matmul_split(
    w: &SplitMatrix<'_>,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    matmul_parts(ops(), w.head.as_ref(), &w.tail, x, n, y, scratch);
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
    matmul_parts(ops, None, w, x, n, y, scratch);
}

/// The product of the matrix whose rows are `head`'s (if any) then `tail`'s with `n` tokens.
fn matmul_parts(
    ops: &Ops,
    head: Option<&Matrix<'_>>,
    tail: &Matrix<'_>,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    let cols = tail.cols;
    let head_rows = head.map_or(0, |h| h.rows);
    let rows = head_rows + tail.rows;
    assert!(
        head.is_none_or(|h| h.cols == cols),
        "matmul: parts differ in width"
    );
    assert_eq!(x.len(), n * cols, "matmul: input length");
    assert_eq!(y.len(), n * rows, "matmul: output length");
    assert!(
        cols <= scratch.max_cols && n <= scratch.max_tokens,
        "matmul: scratch too small"
    );
    let nb = cols / QK;
    let act = &mut scratch.act[..nb * n];
    let quantised = |w: &Matrix<'_>| matches!(w.weights, Weights::Q8(_) | Weights::Q4(_));
    if quantised(tail) || head.is_some_and(quantised) {
        for (xs, a) in x.chunks_exact(cols).zip(act.chunks_exact_mut(nb)) {
            (ops.quantize_act)(xs, a);
            poison_nan_blocks(xs, a);
        }
    }
    let act = &*act;
    // Row tiles in parallel, every token against a tile while it is in cache. A batch's output
    // is produced transposed, `(rows, n)`, so each task (and each part) writes one contiguous
    // slice.
    let out = if n == 1 {
        &mut *y
    } else {
        &mut scratch.out_t[..n * rows]
    };
    let (out_head, out_tail) = out.split_at_mut(head_rows * n);
    if let Some(h) = head {
        matmul_part(ops, h, x, act, n, out_head);
    }
    matmul_part(ops, tail, x, act, n, out_tail);
    if n > 1 {
        transpose(&scratch.out_t[..n * rows], rows, n, y);
    }
}

/// `y` `(n, rows)` from `y_t` `(rows, n)`, 16 tokens per parallel task and 16 × 16 tiles within
/// it, so that the cache lines read or written are used whole while they are in L1 (one token at a
/// time, on one thread, took 7% of a prefill at one thread and more at two).
fn transpose(y_t: &[f32], rows: usize, n: usize, y: &mut [f32]) {
    const TILE: usize = 16;
    let tokens = |(i, ys): (usize, &mut [f32])| {
        let t0 = i * TILE;
        let tn = ys.len() / rows;
        for r0 in (0..rows).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for (k, &v) in y_t[r * n + t0..r * n + t0 + tn].iter().enumerate() {
                    ys[k * rows + r] = v;
                }
            }
        }
    };
    if rows * n < PARALLEL_MIN_WEIGHTS {
        y.chunks_mut(TILE * rows).enumerate().for_each(tokens);
    } else {
        y.par_chunks_mut(TILE * rows).enumerate().for_each(tokens);
    }
}

/// One matrix against `n` tokens (`x` as floats, `act` quantised) into `out`, `(w.rows, n)`.
fn matmul_part(
    ops: &Ops,
    w: &Matrix<'_>,
    x: &[f32],
    act: &[BlockQ8Act],
    n: usize,
    out: &mut [f32],
) {
    let nb = w.cols / QK;
    rows_parallel(w, n, out, |part, ys| match part.weights {
        Weights::Q8(wb) => tiled(ops.matmul_q8, wb, act, nb, n, ys),
        Weights::Q4(wb) => tiled(ops.matmul_q4, wb, act, nb, n, ys),
        Weights::F32(_) | Weights::F16(_) => {
            for r in 0..part.rows {
                for (t, xs) in x.chunks_exact(w.cols).enumerate() {
                    ys[r * n + t] = dot_row(ops, part, r, xs);
                }
            }
        }
    });
}

/// Float dot product of row `r` of `part` with one token's input (quantised weights go through
/// [`tiled`] instead).
#[inline]
fn dot_row(ops: &Ops, part: &Matrix<'_>, r: usize, x: &[f32]) -> f32 {
    let cols = part.cols;
    match part.weights {
        Weights::F32(w) => (ops.dot_f32)(&w[r * cols..(r + 1) * cols], x),
        Weights::F16(w) => (ops.dot_f16)(&w[r * cols..(r + 1) * cols], x),
        Weights::Q8(_) | Weights::Q4(_) => unreachable!("quantised rows go through `tiled`"),
    }
}

/// Bytes of weights a batch works on at a time: the rows stay in L2 while every token of the
/// batch passes over them.
const TILE_WEIGHT_BYTES: usize = 96 << 10;

/// Runs a `matmul_q8`/`matmul_q4` kernel over `w` (rows of `nb` blocks) and `n` tokens of `act`
/// into `ys` (`(rows, n)`), a few rows at a time so a batch reuses them from cache.
fn tiled<W>(
    kernel: fn(&[W], &[BlockQ8Act], usize, &mut [f32]),
    w: &[W],
    act: &[BlockQ8Act],
    nb: usize,
    n: usize,
    ys: &mut [f32],
) {
    if nb == 0 {
        ys.fill(0.0);
        return;
    }
    let rows = if n == 1 {
        w.len() / nb
    } else {
        (TILE_WEIGHT_BYTES / (nb * std::mem::size_of::<W>())).max(8) / 8 * 8
    };
    for (wc, yc) in w.chunks(rows * nb).zip(ys.chunks_mut(rows * n)) {
        kernel(wc, act, nb, yc);
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
    // A batch works in larger tasks: each one converts its activations' per-block terms and
    // packs its weights once. Multiples of 8 rows keep the SIMD kernels' row groups whole.
    let tasks_per_thread = if n == 1 { 16 } else { 4 };
    let rows_per_task = ROWS_PER_TASK
        .max(w.rows / (threads * tasks_per_thread))
        .next_multiple_of(8);
    y_t.par_chunks_mut(rows_per_task * n)
        .enumerate()
        .for_each(|(i, ys)| {
            let part = w.rows_slice(i * rows_per_task, ys.len() / n);
            f(&part, ys);
        });
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

/// Row `r` of a split matrix as floats (embedding lookup).
pub fn dequantize_split_row(w: &SplitMatrix<'_>, r: usize, out: &mut [f32]) {
    let (part, r) = w.locate(r);
    dequantize_row(part, r, out);
}

/// `Σ a[i] · b[i]` with the fastest implementation.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: lengths");
    (ops().dot_f32)(a, b)
}

/// GELU with the exact error function, in place (scalar only: GPT-2 itself uses the tanh form).
pub use scalar::gelu_erf;

/// GELU, tanh approximation (GPT-2's `gelu_new`), in place, with the fastest implementation.
pub fn gelu_tanh(x: &mut [f32]) {
    (ops().gelu_tanh)(x);
}

/// Softmax in place, with the fastest implementation.
pub fn softmax(x: &mut [f32]) {
    (ops().softmax)(x);
}

/// `acc += x` element-wise.
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "add_assign: lengths");
    (ops().add_assign)(acc, x);
}

/// `acc += s · x` element-wise.
pub fn axpy(acc: &mut [f32], s: f32, x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "axpy: lengths");
    (ops().axpy)(acc, s, x);
}

/// Layer norm of `x` into `out`.
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    assert!(x.len() == weight.len() && x.len() == bias.len() && x.len() == out.len());
    (ops().layer_norm)(x, weight, bias, eps, out);
}

#[cfg(test)]
mod tests {
    //! The dispatched tile products against their scalar twins, on whatever CPU runs the tests
    //! (AVX2 here, NEON or NEON+dotprod under emulation).
    use super::*;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn i8(&mut self) -> i8 {
            self.next() as i8
        }
        fn scale(&mut self) -> f32 {
            (self.next() % 1000) as f32 / 1000.0 * 0.05 + 1e-4
        }
    }

    /// Weight and activation blocks: random, or every value at its extreme (`edge`).
    fn q8(rng: &mut Rng, n: usize, edge: bool) -> Vec<BlockQ8> {
        (0..n)
            .map(|i| BlockQ8 {
                d: f16::from_f32(if edge { 65504.0 / 4096.0 } else { rng.scale() }),
                qs: std::array::from_fn(|j| {
                    if edge {
                        if (i + j) % 3 == 0 {
                            -127
                        } else {
                            127
                        }
                    } else {
                        rng.i8().max(-127)
                    }
                }),
            })
            .collect()
    }

    fn q4(rng: &mut Rng, n: usize, edge: bool) -> Vec<BlockQ4> {
        (0..n)
            .map(|i| BlockQ4 {
                d: f16::from_f32(if edge { 2.0 } else { rng.scale() }),
                qs: std::array::from_fn(|j| {
                    if edge {
                        [0x00, 0xFF, 0x0F][(i + j) % 3]
                    } else {
                        rng.i8() as u8
                    }
                }),
            })
            .collect()
    }

    fn acts(rng: &mut Rng, n: usize, edge: bool) -> Vec<BlockQ8Act> {
        (0..n)
            .map(|i| BlockQ8Act {
                d: if edge { 3.0 } else { rng.scale() },
                qs: std::array::from_fn(|j| {
                    if edge {
                        if (i + 2 * j) % 5 == 0 {
                            127
                        } else {
                            -128
                        }
                    } else {
                        rng.i8()
                    }
                }),
            })
            .collect()
    }

    /// `Σ |d_w · d_x| · Σ |q_w · q_x|` of one product: the float error bound's scale.
    fn abs_terms(dw: &[f32], wq: &[Vec<i32>], x: &[BlockQ8Act]) -> f64 {
        dw.iter()
            .zip(wq)
            .zip(x)
            .map(|((d, q), bx)| {
                let s: i64 = q
                    .iter()
                    .zip(&bx.qs)
                    .map(|(&a, &b)| (a * b as i32).abs() as i64)
                    .sum();
                (d * bx.d).abs() as f64 * s as f64
            })
            .sum()
    }

    /// (rows, tokens, blocks per row): tile remainders in every dimension, gpt2-xl widths, and
    /// batches of eight rows or more (packed kernels) with leftover rows, leftover tokens and
    /// widths around the packing chunk of 32 blocks; single tokens (decode) with 0..=3 blocks
    /// beyond a multiple of four; two or three tokens (the decode kernels per token) with rows not
    /// a multiple of four; a row wider than the NEON decode kernels' prepared activation (257
    /// blocks).
    const SHAPES: [(usize, usize, usize); 20] = [
        (1, 1, 1),
        (3, 5, 3),
        (2, 4, 4),
        (5, 9, 5),
        (7, 4, 24),
        (4, 7, 50),
        (3, 8, 200),
        (9, 1, 50),
        (2, 13, 7),
        (8, 4, 1),
        (17, 9, 33),
        (16, 6, 200),
        (9, 13, 64),
        (40, 4, 24),
        (8, 7, 32),
        (5, 1, 7),
        (16, 1, 200),
        (6, 2, 9),
        (7, 3, 50),
        (13, 2, 257),
    ];

    fn check<W>(
        name: &str,
        fast: fn(&[W], &[BlockQ8Act], usize, &mut [f32]),
        slow: fn(&[W], &[BlockQ8Act], usize, &mut [f32]),
        codes: impl Fn(&W) -> (f32, Vec<i32>),
        make: impl Fn(&mut Rng, usize, bool) -> Vec<W>,
    ) {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for edge in [false, true] {
            for (rows, n, nb) in SHAPES {
                let w = make(&mut rng, rows * nb, edge);
                let x = acts(&mut rng, n * nb, edge);
                let (mut a, mut b) = (vec![0f32; rows * n], vec![0f32; rows * n]);
                fast(&w, &x, nb, &mut a);
                slow(&w, &x, nb, &mut b);
                for r in 0..rows {
                    let (dw, wq): (Vec<f32>, Vec<Vec<i32>>) =
                        w[r * nb..(r + 1) * nb].iter().map(&codes).unzip();
                    for t in 0..n {
                        let bound = 1e-5 * abs_terms(&dw, &wq, &x[t * nb..(t + 1) * nb]) + 1e-30;
                        let (got, want) = (a[r * n + t], b[r * n + t]);
                        assert!(
                            ((got - want) as f64).abs() <= bound,
                            "{name} {rows}x{n}x{nb} edge={edge} [{r},{t}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn transpose_moves_every_element_once() {
        for (rows, n) in [(1, 2), (16, 16), (37, 21), (3, 130)] {
            let y_t: Vec<f32> = (0..rows * n).map(|i| i as f32).collect();
            let mut y = vec![-1.0; rows * n];
            transpose(&y_t, rows, n, &mut y);
            for r in 0..rows {
                for t in 0..n {
                    assert_eq!(y[t * rows + r], y_t[r * n + t], "{rows}x{n} [{r},{t}]");
                }
            }
        }
    }

    #[test]
    fn matmul_q8_agrees_with_scalar() {
        check(
            "q8",
            ops().matmul_q8,
            scalar::matmul_q8,
            |b: &BlockQ8| (b.d.to_f32(), b.qs.iter().map(|&q| q as i32).collect()),
            q8,
        );
    }

    #[test]
    fn matmul_q4_agrees_with_scalar() {
        let codes = |b: &BlockQ4| {
            let q = (0..QK)
                .map(|i| {
                    let byte = b.qs[i % 16];
                    (if i < 16 { byte & 0x0F } else { byte >> 4 }) as i32 - 8
                })
                .collect();
            (b.d.to_f32(), q)
        };
        check("q4", ops().matmul_q4, scalar::matmul_q4, codes, q4);
    }

    #[test]
    fn integer_tile_sums_are_exact_at_the_range_limits() {
        // The widest values both sides may hold (q8 weights and activations in −127..=127),
        // all products of one sign: the NEON kernels sum two of them per i16 lane (32258).
        for (rows, n, nb) in [(5, 1, 3), (6, 3, 2), (9, 6, 3)] {
            for (wq, xq) in [(127i8, 127i8), (-127, 127), (-127, -127)] {
                let w = vec![
                    BlockQ8 {
                        d: f16::ONE,
                        qs: [wq; QK]
                    };
                    rows * nb
                ];
                let x = vec![
                    BlockQ8Act {
                        d: 1.0,
                        qs: [xq; QK]
                    };
                    n * nb
                ];
                let (mut a, mut b) = (vec![0f32; rows * n], vec![0f32; rows * n]);
                (ops().matmul_q8)(&w, &x, nb, &mut a);
                scalar::matmul_q8(&w, &x, nb, &mut b);
                assert_eq!(a, b, "{rows}x{n}x{nb} w={wq} x={xq}");
                assert_eq!(b[0], wq as f32 * xq as f32 * (QK * nb) as f32);
            }
        }
    }

    #[test]
    fn integer_tile_sums_are_exact() {
        // Unit scales and one block: every product is an exact integer in f32.
        let mut rng = Rng(7);
        let mut w = q8(&mut rng, 6, true);
        let mut x = acts(&mut rng, 5, true);
        w.iter_mut().for_each(|b| b.d = f16::ONE);
        x.iter_mut().for_each(|b| b.d = 1.0);
        let (mut a, mut b) = (vec![0f32; 30], vec![0f32; 30]);
        (ops().matmul_q8)(&w, &x, 1, &mut a);
        scalar::matmul_q8(&w, &x, 1, &mut b);
        assert_eq!(a, b);
        let w4 = q4(&mut rng, 6, true);
        let w4: Vec<BlockQ4> = w4
            .into_iter()
            .map(|b| BlockQ4 { d: f16::ONE, ..b })
            .collect();
        (ops().matmul_q4)(&w4, &x, 1, &mut a);
        scalar::matmul_q4(&w4, &x, 1, &mut b);
        assert_eq!(a, b);
    }

    // -----------------------------------------------------------------------------------------
    // Element-wise kernels: the dispatched table against the scalar twins.

    /// Lengths: below, at and around the vector widths (4 and 8), and GPT-2's widths up to
    /// gpt2-xl's MLP (6400).
    const ELEM_LENS: [usize; 9] = [1, 7, 31, 33, 64, 100, 768, 1600, 6400];

    impl Rng {
        /// Uniform in [−a, a).
        fn uniform(&mut self, a: f32) -> f32 {
            ((self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * a
        }
    }

    /// Test rows of length `n`: uniform at three scales, edge values (±80, ±1e4, ±0) mixed with
    /// ordinary ones, and rows of one repeated edge value.
    fn elem_rows(rng: &mut Rng, n: usize) -> Vec<Vec<f32>> {
        const EDGES: [f32; 8] = [80.0, -80.0, 1e4, -1e4, 0.0, -0.0, 5.0, -5.0];
        let mut rows: Vec<Vec<f32>> = [1.0, 8.0, 80.0]
            .iter()
            .map(|&a| (0..n).map(|_| rng.uniform(a)).collect())
            .collect();
        rows.push(
            (0..n)
                .map(|i| {
                    if i % 3 == 0 {
                        EDGES[(i / 3) % EDGES.len()]
                    } else {
                        rng.uniform(4.0)
                    }
                })
                .collect(),
        );
        for e in [80.0, -1e4, -0.0] {
            rows.push(vec![e; n]);
        }
        rows
    }

    /// NaN in both, the same infinity, or `|got − want| ≤ bound`.
    fn close(got: f32, want: f32, bound: f64) -> bool {
        if want.is_nan() || got.is_nan() {
            return want.is_nan() && got.is_nan();
        }
        if want.is_infinite() || got.is_infinite() {
            return got == want;
        }
        ((got - want) as f64).abs() <= bound
    }

    /// GELU: `|Δ| ≤ 1e-6·|want| + 2e-7·|x|`. The relative term covers the vector exp (≲ 4e-7)
    /// and the division; the `|x|` term covers the scalar twin's own rounding of `1 + tanh u`
    /// near `x ≈ −3..−10`, where `0.5·x·(1 + tanh u)` keeps only an absolute accuracy of about
    /// `0.5·|x|·ulp(1)` (the SIMD form `x / (1 + e^(−2u))` has no such cancellation).
    #[test]
    fn gelu_tanh_agrees_with_scalar() {
        let mut rng = Rng(0x5EED_0001);
        let mut worst = 0f64;
        for n in ELEM_LENS {
            let mut rows = elem_rows(&mut rng, n);
            // NaN (at the start, in the middle, in the tail) and infinities.
            let mut special: Vec<f32> = (0..n).map(|_| rng.uniform(6.0)).collect();
            for (i, v) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30]
                .into_iter()
                .enumerate()
            {
                special[(i * 7 + n / 2) % n] = v;
            }
            special[n - 1] = f32::NAN;
            special[0] = f32::NAN;
            rows.push(special);
            for x in rows {
                let (mut got, mut want) = (x.clone(), x.clone());
                (ops().gelu_tanh)(&mut got);
                scalar::gelu_tanh(&mut want);
                for i in 0..n {
                    let bound = 1e-6 * want[i].abs() as f64 + 2e-7 * x[i].abs() as f64;
                    assert!(
                        close(got[i], want[i], bound),
                        "gelu len {n} [{i}] x={}: {} vs {}",
                        x[i],
                        got[i],
                        want[i]
                    );
                    if x[i].is_nan() {
                        assert!(got[i].is_nan(), "gelu must propagate NaN");
                    }
                    if got[i].is_finite() && want[i].is_finite() && bound > 0.0 {
                        worst = worst.max(((got[i] - want[i]) as f64).abs() / bound);
                    }
                }
            }
        }
        println!("gelu: worst |Δ| / bound = {worst:.3}");
    }

    /// Softmax: `|Δp| ≤ p · (2e-6 + 1.2e-7·len) + 1e-37`. The vector exp is within ~4e-7
    /// relative; the sums run in different orders, whose worst case is `len · ulp/2` relative
    /// for each (the measured error is far smaller, see the printed ratio). The absolute term:
    /// the SIMD exp flushes `e^x < 2^−126` to 0 where the scalar one returns a subnormal.
    #[test]
    fn softmax_agrees_with_scalar() {
        let mut rng = Rng(0x5EED_0002);
        let mut worst = 0f64;
        for n in ELEM_LENS {
            let mut rows = elem_rows(&mut rng, n);
            // Masked (−inf) positions with a finite maximum, as a causal mask would give.
            let mut masked: Vec<f32> = (0..n).map(|_| rng.uniform(10.0)).collect();
            for i in (1..n).step_by(3) {
                masked[i] = f32::NEG_INFINITY;
            }
            rows.push(masked);
            for x in rows {
                let (mut got, mut want) = (x.clone(), x.clone());
                (ops().softmax)(&mut got);
                scalar::softmax(&mut want);
                let rel = 2e-6 + 1.2e-7 * n as f64;
                for i in 0..n {
                    let bound = rel * want[i] as f64 + 1e-37;
                    assert!(
                        close(got[i], want[i], bound),
                        "softmax len {n} [{i}] x={}: {} vs {}",
                        x[i],
                        got[i],
                        want[i]
                    );
                    worst = worst.max(((got[i] - want[i]) as f64).abs() / bound);
                }
            }
            // One NaN anywhere (first, middle, last) makes every output NaN, in both.
            for pos in [0, n / 2, n - 1] {
                let mut x: Vec<f32> = (0..n).map(|_| rng.uniform(3.0)).collect();
                x[pos] = f32::NAN;
                let mut want = x.clone();
                scalar::softmax(&mut want);
                (ops().softmax)(&mut x);
                assert!(
                    x.iter().all(|v| v.is_nan()),
                    "softmax len {n}: NaN at {pos}"
                );
                assert!(want.iter().all(|v| v.is_nan()));
            }
        }
        println!("softmax: worst |Δ| / bound = {worst:.3}");
        let mut empty: [f32; 0] = [];
        (ops().softmax)(&mut empty);
    }

    /// Layer norm: `|Δ| ≤ 1e-5 · (|w|·inv·(|x − mean| + mean|x|) + |b|)` with `inv = 1/√(var+eps)`:
    /// the two implementations sum `x` and `(x − mean)²` in different orders, so the mean moves
    /// by a few ulp of `mean|x|` (amplified by `inv`, which is large for near-constant rows).
    #[test]
    fn layer_norm_agrees_with_scalar() {
        let mut rng = Rng(0x5EED_0003);
        let mut worst = 0f64;
        for n in ELEM_LENS {
            let w: Vec<f32> = (0..n).map(|_| rng.uniform(2.0)).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.uniform(1.0)).collect();
            let mut rows = elem_rows(&mut rng, n);
            let mut with_nan: Vec<f32> = (0..n).map(|_| rng.uniform(1.0)).collect();
            with_nan[n / 2] = f32::NAN;
            rows.push(with_nan);
            for x in rows {
                let (mut got, mut want) = (vec![0f32; n], vec![0f32; n]);
                (ops().layer_norm)(&x, &w, &b, 1e-5, &mut got);
                scalar::layer_norm(&x, &w, &b, 1e-5, &mut want);
                let nf = n as f64;
                let mean = x.iter().map(|&v| v as f64).sum::<f64>() / nf;
                let mean_abs = x.iter().map(|&v| v.abs() as f64).sum::<f64>() / nf;
                let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / nf;
                let inv = 1.0 / (var + 1e-5).sqrt();
                for i in 0..n {
                    let scale = w[i].abs() as f64 * inv * ((x[i] as f64 - mean).abs() + mean_abs)
                        + b[i].abs() as f64;
                    let bound = 1e-5 * scale;
                    assert!(
                        close(got[i], want[i], bound),
                        "layer_norm len {n} [{i}] x={}: {} vs {}",
                        x[i],
                        got[i],
                        want[i]
                    );
                    if bound.is_finite() {
                        worst = worst.max(((got[i] - want[i]) as f64).abs() / bound);
                    }
                }
            }
        }
        println!("layer_norm: worst |Δ| / bound = {worst:.3}");
    }

    /// Same bits, or NaN in both.
    fn same(got: &[f32], want: &[f32], what: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{what} [{i}]: {g} vs {w}"
            );
        }
    }

    /// `add_assign`, `axpy` and `axpy_f16` round the product and the sum separately in every
    /// table, so they must match the scalar twins bit for bit.
    #[test]
    fn add_assign_and_axpy_match_scalar_bitwise() {
        let mut rng = Rng(0x5EED_0004);
        for n in ELEM_LENS {
            let rows = elem_rows(&mut rng, n);
            let mut acc0: Vec<f32> = (0..n).map(|_| rng.uniform(50.0)).collect();
            acc0[n / 2] = f32::NAN;
            for x in &rows {
                let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
                for s in [0.37f32, -1e-3, 0.0, -0.0, 1e4] {
                    let (mut got, mut want) = (acc0.clone(), acc0.clone());
                    (ops().axpy)(&mut got, s, x);
                    scalar::axpy(&mut want, s, x);
                    same(&got, &want, &format!("axpy len {n} s={s}"));
                    let (mut got, mut want) = (acc0.clone(), acc0.clone());
                    (ops().axpy_f16)(&mut got, s, &xh);
                    scalar::axpy_f16(&mut want, s, &xh);
                    same(&got, &want, &format!("axpy_f16 len {n} s={s}"));
                }
                let (mut got, mut want) = (acc0.clone(), acc0.clone());
                (ops().add_assign)(&mut got, x);
                scalar::add_assign(&mut want, x);
                same(&got, &want, &format!("add_assign len {n}"));
            }
        }
    }

    #[test]
    #[should_panic(expected = "output length")]
    fn matmul_checks_shapes() {
        let w = vec![
            BlockQ8 {
                d: f16::ONE,
                qs: [0; QK]
            };
            4
        ];
        let x = vec![BlockQ8Act::default(); 2];
        (ops().matmul_q8)(&w, &x, 2, &mut [0.0; 3]);
    }
}
