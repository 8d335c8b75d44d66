//! Numeric kernels: the one dispatch point for every operation of the forward pass.
//!
//! At first use, [`path`] detects the CPU once (`is_x86_feature_detected!` /
//! `is_aarch64_feature_detected!`, `AT_HWCAP` on 32-bit ARM) and picks a table of [`Ops`]:
//! AVX2+FMA+F16C on x86-64 (with AVX-512 VNNI's `vpdpbusd` for batches where present), NEON
//! (plus `dotprod` where present) on aarch64, NEON with VFPv4 on 32-bit ARM, else the portable
//! [`scalar`] twins. Setting `GPT2Q_KERNELS` to a table's name ([`KernelPath::name`], e.g.
//! `scalar` or `avx2`) picks that table instead, if this CPU can run it, for comparison. Everything above this module
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
mod matmul;
#[cfg(target_arch = "aarch64")]
mod neon;
pub mod scalar;
#[cfg(test)]
mod twins;

use std::sync::OnceLock;

use half::f16;

pub use matmul::{linear_batch, matmul, matmul_split, matmul_with, Dest, MatmulScratch, Then};

use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act, QK};
use crate::tensor::{Matrix, SplitMatrix};

/// Which implementation the dispatcher chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// Portable Rust.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// [`KernelPath::Avx2`] with batch products on AVX-512 VNNI's `vpdpbusd`, 512-bit vectors
    /// (e.g. AMD Zen 4, Intel Ice Lake and later servers).
    Avx512Vnni,
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
            KernelPath::Avx512Vnni => "avx512-vnni",
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
    /// How [`Ops::matmul_q8`] and [`Ops::matmul_q4`] lay out their output.
    pub out_layout: OutLayout,
    /// Quantises `x` (a multiple of 32 long) into `out` (`x.len() / 32` blocks): per block
    /// `d = max|x| / 127`, `q = round_ties_even(x · (1/d))` (all zero when `d == 0`); a block
    /// holding a NaN gets a NaN `d` ([`mark_nan_blocks`]).
    pub quantize_act: fn(x: &[f32], out: &mut [BlockQ8Act]),
    /// Lays out `n` tokens of quantised activations (`x`, `n · nb` blocks) in `prep` the way
    /// this table's [`Ops::matmul_q8`] reads them, once per matrix product: every row task of
    /// the product then shares it. `prep` holds at least [`prepared_len`]`(n, nb)` lanes.
    pub prepare_q8: PrepareFn,
    /// [`Ops::prepare_q8`] for [`Ops::matmul_q4`] (q4 kernels take `8 · Σ q_x` per block here).
    pub prepare_q4: PrepareFn,
    /// `Σ w[i] · x[i]` with f16 weights.
    pub dot_f16: fn(w: &[f16], x: &[f32]) -> f32,
    /// `Σ a[i] · b[i]`.
    pub dot_f32: fn(a: &[f32], b: &[f32]) -> f32,
    /// Many rows against many tokens: with `w` holding `rows` rows and `x` holding `n` tokens
    /// of `nb` blocks each, the output of row `r` and token `t` (where [`Ops::out_layout`] puts
    /// it) = `Σ_blocks d_w · d_x · Σ_i q_w[i] · q_x[i]` (exact integer block sums; only the
    /// float summation order differs between tables). SIMD tables compute several rows × tokens
    /// per pass so each loaded block serves several products.
    /// Weights and activations must lie in `−127..=127`, as the file format and
    /// [`Ops::quantize_act`] define them (the AVX2 kernels move signs between the two, the NEON
    /// kernels sum two int8 products in an i16 lane).
    ///
    /// `prep` is what [`Ops::prepare_q8`] of the same table made of `x`: kernels read it
    /// instead of recomputing it per row task. (Given anything else, they give wrong numbers,
    /// never undefined behaviour.)
    pub matmul_q8: MatmulFn<BlockQ8>,
    /// [`Ops::matmul_q8`] for q4 weights: `Σ_blocks d_w · d_x · Σ_i (q_w[i] − 8) · q_x[i]`, with
    /// the `prep` of [`Ops::prepare_q4`].
    pub matmul_q4: MatmulFn<BlockQ4>,
    /// Batch products that finish their own outputs — the bias, then GELU or the residual add —
    /// and store them straight into the caller's rows, where the table has them (else the
    /// outputs are finished as they move into place).
    pub matmul_into: Option<MatmulInto>,
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
    /// The attention scores of a tile of consecutive queries against f16 keys (rows of
    /// `tile.head_dim`, position 0 first): `out[i · score_stride + p] = scale · (q_i · key_p)`
    /// for each query `i` and each position `p` it sees ([`CausalTile`]); the rest of `out` is
    /// not written. SIMD tables read (and widen) each key row once for several queries; the
    /// results differ from [`Ops::dot_f16`]'s by float rounding only (summation order, and
    /// `scale` may be applied to the queries before the products).
    pub scores_f16: ScoresFn,
    /// The weighted sums of f16 value rows for a tile of consecutive queries: query `i`'s
    /// `head_dim` outputs at `out[i · out_stride..]` are overwritten with
    /// `Σ_p weights[i · score_stride + p] · value_p` over the positions it sees; the rest of
    /// `out` is not written. SIMD tables read each value row once for several queries and may
    /// fuse the multiply-adds (float rounding only differs from [`Ops::axpy_f16`]'s).
    pub weighted_sum_f16: WeightedSumFn,
}

/// Signature of [`Ops::scores_f16`]: `(keys, q, scale, tile, out)`.
pub type ScoresFn = fn(keys: &[f16], q: &[f32], scale: f32, tile: &CausalTile, out: &mut [f32]);

/// Signature of [`Ops::weighted_sum_f16`]: `(values, weights, tile, out)`.
pub type WeightedSumFn = fn(values: &[f16], weights: &[f32], tile: &CausalTile, out: &mut [f32]);

/// One head's causal attention for a tile of consecutive queries (prompt tokens), as
/// [`Ops::scores_f16`] and [`Ops::weighted_sum_f16`] read and write it: query `i` (of
/// `queries`) sees the cached positions `0..first_len + i`; its `head_dim` values start at
/// `q[i · q_stride]`, its scores (then softmax weights) at `scores[i · score_stride]` and its
/// output at `out[i · out_stride]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CausalTile {
    /// Values per query, key and value row.
    pub head_dim: usize,
    /// Queries in the tile (at least 1).
    pub queries: usize,
    /// Positions the first query sees (at least 1: itself).
    pub first_len: usize,
    /// Distance between consecutive queries in `q`.
    pub q_stride: usize,
    /// Distance between consecutive queries' score rows.
    pub score_stride: usize,
    /// Distance between consecutive queries in `out`.
    pub out_stride: usize,
}

impl CausalTile {
    /// Positions query `i` sees.
    pub fn len(&self, i: usize) -> usize {
        self.first_len + i
    }

    /// Positions the tile reads: the last query's.
    pub fn positions(&self) -> usize {
        self.len(self.queries.saturating_sub(1))
    }

    /// Checks the shape for [`Ops::scores_f16`]: `keys`, `q` and `scores` elements cover the
    /// tile. Panics otherwise (a bug in the caller, never user input): the SIMD kernels rely on
    /// it.
    pub fn check_scores(&self, keys: usize, q: usize, scores: usize) {
        self.check_shape();
        let last = self.queries - 1;
        assert!(
            keys >= self.positions() * self.head_dim
                && q >= last * self.q_stride + self.head_dim
                && scores >= last * self.score_stride + self.positions(),
            "attention tile: slices too short for {self:?}"
        );
    }

    /// Checks the shape for [`Ops::weighted_sum_f16`]: `values`, `weights` and `out` elements
    /// cover the tile. Panics otherwise, as [`CausalTile::check_scores`].
    pub fn check_weighted_sum(&self, values: usize, weights: usize, out: usize) {
        self.check_shape();
        let last = self.queries - 1;
        assert!(
            values >= self.positions() * self.head_dim
                && weights >= last * self.score_stride + self.positions()
                && out >= last * self.out_stride + self.head_dim,
            "attention tile: slices too short for {self:?}"
        );
    }

    /// Not empty, and no row overlaps the next.
    fn check_shape(&self) {
        let hd = self.head_dim;
        assert!(
            hd > 0 && self.queries > 0 && self.first_len > 0,
            "attention tile: empty {self:?}"
        );
        assert!(
            self.q_stride >= hd && self.out_stride >= hd && self.score_stride >= self.positions(),
            "attention tile: strides {self:?}"
        );
    }
}

/// [`Ops::scores_f16`] one query at a time with a table's `dot` (its `dot_f16`): what tables
/// without a tiled kernel use.
pub(crate) fn scores_per_query(
    dot: fn(&[f16], &[f32]) -> f32,
    keys: &[f16],
    q: &[f32],
    scale: f32,
    tile: &CausalTile,
    out: &mut [f32],
) {
    tile.check_scores(keys.len(), q.len(), out.len());
    let hd = tile.head_dim;
    for i in 0..tile.queries {
        let qi = &q[i * tile.q_stride..i * tile.q_stride + hd];
        let row = &mut out[i * tile.score_stride..i * tile.score_stride + tile.len(i)];
        for (s, key) in row.iter_mut().zip(keys.chunks_exact(hd)) {
            *s = dot(key, qi) * scale;
        }
    }
}

/// [`Ops::weighted_sum_f16`] one query at a time with a table's `axpy` (its `axpy_f16`).
pub(crate) fn weighted_sum_per_query(
    axpy: fn(&mut [f32], f32, &[f16]),
    values: &[f16],
    weights: &[f32],
    tile: &CausalTile,
    out: &mut [f32],
) {
    tile.check_weighted_sum(values.len(), weights.len(), out.len());
    let hd = tile.head_dim;
    for i in 0..tile.queries {
        let o = &mut out[i * tile.out_stride..i * tile.out_stride + hd];
        o.fill(0.0);
        let w = &weights[i * tile.score_stride..i * tile.score_stride + tile.len(i)];
        for (&p, value) in w.iter().zip(values.chunks_exact(hd)) {
            axpy(o, p, value);
        }
    }
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

/// Signature of [`Ops::matmul_q8`] / [`Ops::matmul_q4`]: `(w, x, prep, nb, out)`.
pub type MatmulFn<W> = fn(w: &[W], x: &[BlockQ8Act], prep: &[PrepLane], nb: usize, out: &mut [f32]);

/// [`Ops::matmul_into`]'s products.
#[derive(Clone, Copy)]
pub struct MatmulInto {
    /// As [`Ops::matmul_q8`], finished into a [`Dest`].
    pub q8: MatmulIntoFn<BlockQ8>,
    /// As [`Ops::matmul_q4`], finished into a [`Dest`].
    pub q4: MatmulIntoFn<BlockQ4>,
}

/// Signature of [`MatmulInto`]'s products: `(w, x, prep, nb, partial, dest)`, as [`MatmulFn`]'s
/// with `partial` the room a call's `(n, rows)` output would take (for partial sums and rows
/// outside the kernel's groups) and each finished value going to `dest` instead.
///
/// # Safety
/// `dest` must be valid for, and exclusively lent to this call for, every row of the call and
/// every token ([`Dest::run`]).
pub type MatmulIntoFn<W> = unsafe fn(
    w: &[W],
    x: &[BlockQ8Act],
    prep: &[PrepLane],
    nb: usize,
    partial: &mut [f32],
    dest: Dest<'_>,
);

/// Signature of [`Ops::prepare_q8`] / [`Ops::prepare_q4`]: `(x, nb, prep)`.
pub type PrepareFn = fn(x: &[BlockQ8Act], nb: usize, prep: &mut [PrepLane]);

/// 32 bytes of prepared activation, aligned for a 256-bit load. Tables lay out their own
/// regions in a slice of these (int8 values, f32 scales, i32 sums): any bits are valid in each.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(32))]
pub struct PrepLane(pub [u32; 8]);

/// Lanes a table may use to prepare `n` tokens of `nb` blocks: two per block (the int8 values
/// rearranged, plus room for per-block scales and sums) and two per token.
pub fn prepared_len(n: usize, nb: usize) -> usize {
    n * (2 * nb + 2)
}

/// No preparation (tables whose matrix kernels read the activations as they are).
pub(crate) fn prepare_nothing(_: &[BlockQ8Act], _: usize, _: &mut [PrepLane]) {}

/// The lanes as f32 values.
// Only the x86-64 and aarch64 kernels prepare activations.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) fn lanes_f32(l: &[PrepLane]) -> &[f32] {
    // SAFETY: a `PrepLane` is 8 `u32` without padding (`repr(C)`), aligned beyond `f32`, and
    // every bit pattern is a valid `f32`; the length covers exactly the same bytes.
    unsafe { std::slice::from_raw_parts(l.as_ptr().cast(), l.len() * 8) }
}

/// The lanes as mutable f32 values.
// Only the x86-64 and aarch64 kernels prepare activations.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) fn lanes_f32_mut(l: &mut [PrepLane]) -> &mut [f32] {
    // SAFETY: as in `lanes_f32`, with the unique borrow passed on.
    unsafe { std::slice::from_raw_parts_mut(l.as_mut_ptr().cast(), l.len() * 8) }
}

/// The lanes as i32 values.
// Only the x86-64 and aarch64 kernels prepare activations.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) fn lanes_i32(l: &[PrepLane]) -> &[i32] {
    // SAFETY: as in `lanes_f32`; every bit pattern is a valid `i32`.
    unsafe { std::slice::from_raw_parts(l.as_ptr().cast(), l.len() * 8) }
}

/// The lanes as mutable i32 values.
// Only the x86-64 and aarch64 kernels prepare activations.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) fn lanes_i32_mut(l: &mut [PrepLane]) -> &mut [i32] {
    // SAFETY: as in `lanes_i32`, with the unique borrow passed on.
    unsafe { std::slice::from_raw_parts_mut(l.as_mut_ptr().cast(), l.len() * 8) }
}

/// Signature of [`Ops::layer_norm`]: `(x, weight, bias, eps, out)`.
pub type LayerNormFn = fn(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]);

/// How a table's [`Ops::matmul_q8`] / [`Ops::matmul_q4`] lay out the `rows × n` products of a
/// call. For one token both are `out[r]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutLayout {
    /// `(rows, n)`: row `r` of token `t` at `out[r · n + t]`.
    RowMajor,
    /// `(n, rows)`: row `r` of token `t` at `out[t · rows + r]`, a token's outputs together as
    /// the callers want them (kernels whose accumulators hold several rows of one token).
    TokenMajor,
}

impl OutLayout {
    /// Where row `r` of token `t` of a `rows × n` product lies.
    pub fn index(self, r: usize, t: usize, rows: usize, n: usize) -> usize {
        match self {
            OutLayout::RowMajor => r * n + t,
            OutLayout::TokenMajor => t * rows + r,
        }
    }
}

/// Checks the shapes of a [`Ops::matmul_q8`] / [`Ops::matmul_q4`] call and returns
/// `(rows, tokens)`. Panics on a mismatch (a bug in the caller, never user input).
pub fn tile_shape(w_blocks: usize, x_blocks: usize, nb: usize, out_len: usize) -> (usize, usize) {
    assert!(nb > 0, "matmul: zero-width rows");
    assert!(
        w_blocks.is_multiple_of(nb) && x_blocks.is_multiple_of(nb),
        "matmul: blocks not a multiple of the row width"
    );
    let (rows, n) = (w_blocks / nb, x_blocks / nb);
    assert_eq!(out_len, rows * n, "matmul: output length");
    (rows, n)
}

/// The table for this CPU (detected once), or the one `GPT2Q_KERNELS` names if this CPU can
/// run it.
pub fn ops() -> &'static Ops {
    static OPS: OnceLock<Ops> = OnceLock::new();
    OPS.get_or_init(|| {
        let chosen = std::env::var("GPT2Q_KERNELS").ok().and_then(|name| {
            tables()
                .into_iter()
                .find(|t| t.path.name() == name.as_str())
        });
        chosen.unwrap_or_else(detect)
    })
}

/// The implementation in use.
pub fn path() -> KernelPath {
    ops().path
}

/// Every table this CPU can run, the scalar one first (tests and benchmarks compare them).
pub fn tables() -> Vec<Ops> {
    let mut all = vec![scalar::ops()];
    #[cfg(target_arch = "x86_64")]
    if avx2_supported() {
        // SAFETY: the features avx2::ops requires were just detected.
        all.push(unsafe { avx2::ops() });
        if vnni_supported() {
            // SAFETY: as above, and AVX-512 F, BW and VNNI were just detected.
            all.push(unsafe { avx2::vnni_ops() });
        }
    }
    #[cfg(target_arch = "aarch64")]
    all.extend(neon::tables());
    #[cfg(all(target_arch = "arm", target_os = "linux"))]
    all.extend(armv7::ops());
    all
}

#[cfg(target_arch = "x86_64")]
fn avx2_supported() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// AVX-512 F, BW and VNNI, for `vpdpbusd` on 512-bit vectors.
#[cfg(target_arch = "x86_64")]
fn vnni_supported() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Ops {
    if avx2_supported() && vnni_supported() {
        // SAFETY: the features avx2::vnni_ops requires were just detected.
        unsafe { avx2::vnni_ops() }
    } else if avx2_supported() {
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

/// Gives each block of `act` whose floats in `xs` hold a NaN a NaN scale. Taking `max |x|`
/// skips NaN (as `f32::max` does) and the rounding stores it as 0, which would silently turn a
/// NaN activation (a damaged weight upstream) into a plausible one; with a NaN scale the fault
/// reaches the logits, where the sampler reports it. (An infinite value already gives
/// `0 · inf = NaN` in the dot products.) Tables whose quantiser does not see NaN on its own
/// call this after it.
pub(crate) fn mark_nan_blocks(xs: &[f32], act: &mut [BlockQ8Act]) {
    for (block, a) in xs.chunks_exact(QK).zip(act) {
        // A count rather than `any`: without the early exit the loop vectorises (a tenth of
        // the instructions on NEON).
        if block.iter().map(|v| v.is_nan() as u32).sum::<u32>() > 0 {
            a.d = f32::NAN;
        }
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

/// GELU, tanh approximation (GPT-2's `gelu_new`), in place, with the fastest implementation; a
/// batch's worth of values on the current rayon pool.
pub fn gelu_tanh(x: &mut [f32]) {
    const PARALLEL_MIN: usize = 1 << 15;
    const CHUNK: usize = 1 << 13;
    let gelu = ops().gelu_tanh;
    if x.len() >= PARALLEL_MIN && rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        x.par_chunks_mut(CHUNK).for_each(gelu);
    } else {
        gelu(x);
    }
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
