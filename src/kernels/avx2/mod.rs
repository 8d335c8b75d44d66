//! x86-64 AVX2 + FMA + F16C kernels: the [`Ops`] table the dispatcher picks on CPUs that have
//! all three (Haswell / Zen and later).
//!
//! This module owns the SIMD twins of [`super::scalar`]'s `quantize_act`, `matmul_q8`,
//! `matmul_q4`, `dot_f16` and `dot_f32` (the element-wise ops — GELU, softmax, layer norm, axpy — are in the
//! [`elem`] submodule, the attention tiles over the f16 KV cache in [`attn`]). Each table entry is a safe wrapper that checks lengths like its scalar
//! twin and calls a `#[target_feature]` implementation.
//!
//! * `quantize_act` is bit-identical to the scalar one (same division, round-half-to-even,
//!   saturation like `as i8`).
//! * The integer dot products compute each block's `Σ q_w · q_x` exactly in int32 lanes
//!   (`maddubs` into i16 pairs, which cannot saturate here, then `madd` into i32), then fold it
//!   into a float accumulator with one FMA by `d_w · d_x`. Only the float summation order
//!   differs from scalar. They take four blocks per iteration (the four f16 scales converted by
//!   one instruction) into two accumulators; q4 handles two blocks per 256-bit vector.
//! * The float dot products use four FMA accumulators over 32 elements, then 8 at a time, then
//!   a scalar tail.
//! * Batches (a prompt) go through the packed kernels ([`packed`]; [`packed512`] where the CPU
//!   has AVX-512 VNNI), which write each token's outputs together (`OutLayout::TokenMajor`) and
//!   can finish them in registers — bias, then GELU or the residual add — straight into the
//!   caller's rows (`Ops::matmul_into`).

mod attn;
mod decode;
mod elem;
mod elem512;
mod packed;
mod packed512;
mod span;

use std::arch::x86_64::*;

use half::f16;

use super::{
    lanes_i32, prepare_nothing, prepared_len, Dest, KernelPath, MatmulInto, Ops, OutLayout,
    PrepLane,
};
use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act, QK};

/// The AVX2 table.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C: the table's safe function pointers call code
/// compiled for those features.
pub(super) unsafe fn ops() -> Ops {
    Ops {
        path: KernelPath::Avx2,
        out_layout: OutLayout::TokenMajor,
        quantize_act,
        prepare_q8: prepare_nothing,
        prepare_q4,
        dot_f16,
        dot_f32,
        matmul_q8: matmul::<Q8Tile, Avx2Batch>,
        matmul_q4: matmul::<Q4Tile, Avx2Batch>,
        layer_norm: elem::layer_norm,
        gelu_tanh: elem::gelu_tanh,
        softmax: elem::softmax,
        add_assign: elem::add_assign,
        axpy: elem::axpy,
        axpy_f16: elem::axpy_f16,
        scores_f16: attn::scores_f16,
        weighted_sum_f16: attn::weighted_sum_f16,
        matmul_into: Some(MatmulInto {
            q8: matmul_into::<Q8Tile, Avx2Batch>,
            q4: matmul_into::<Q4Tile, Avx2Batch>,
        }),
    }
}

/// The AVX2 table with the batch (prefill) products on 512-bit `vpdpbusd` ([`packed512`]).
///
/// # Safety
/// As [`ops`], and the CPU must support AVX-512 F, BW and VNNI.
pub(super) unsafe fn vnni_ops() -> Ops {
    Ops {
        path: KernelPath::Avx512Vnni,
        out_layout: OutLayout::TokenMajor,
        prepare_q8: prepare_q8_vnni,
        prepare_q4: prepare_q4_vnni,
        matmul_q8: matmul::<Q8Tile, Vnni512Batch>,
        matmul_q4: matmul::<Q4Tile, Vnni512Batch>,
        gelu_tanh: elem512::gelu_tanh,
        matmul_into: Some(MatmulInto {
            q8: matmul_into::<Q8Tile, Vnni512Batch>,
            q4: matmul_into::<Q4Tile, Vnni512Batch>,
        }),
        ..ops()
    }
}

fn quantize_act(x: &[f32], out: &mut [BlockQ8Act]) {
    assert_eq!(x.len(), out.len() * QK, "quantize_act: lengths");
    // SAFETY: this function is only reachable through the table `ops()` builds, whose contract
    // is that the CPU supports AVX2, FMA and F16C.
    unsafe { quantize_act_avx2(x, out) }
}

fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_f16: lengths");
    // SAFETY: only reachable through `ops()`'s table (CPU has AVX2, FMA, F16C).
    unsafe { dot_f16_avx2(w, x) }
}

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: lengths");
    // SAFETY: only reachable through `ops()`'s table (CPU has AVX2, FMA, F16C).
    unsafe { dot_f32_avx2(a, b) }
}

/// Prepares `x` for the AVX2 table's q4 products: the decode kernel's layout for one token, the packed
/// kernels' `8 · Σ q_x` per block for a batch, nothing for the row-major tiles in between.
fn prepare_q4(x: &[BlockQ8Act], nb: usize, prep: &mut [PrepLane]) {
    let n = x.len().checked_div(nb).unwrap_or(0);
    assert!(prep.len() >= prepared_len(n, nb), "prepare_q4: room");
    if n == 1 {
        // SAFETY: only reachable through `ops()`'s table (CPU has AVX2, FMA, F16C).
        unsafe { decode::prepare(&x[..nb], prep) }
    } else if n >= packed::MIN_TOKENS {
        // SAFETY: as above.
        unsafe { packed::q4_act_terms(&x[..n * nb], prep) }
    }
}

/// Every row of `w` against every token of `x` ([`Ops::matmul_q8`] / [`Ops::matmul_q4`]), with
/// the batch kernels `B`.
fn matmul<F: TileFormat, B: Batch<F>>(
    w: &[F::W],
    x: &[BlockQ8Act],
    prep: &[PrepLane],
    nb: usize,
    out: &mut [f32],
) {
    let (rows, n) = super::tile_shape(w.len(), x.len(), nb, out.len());
    // SAFETY: only reachable through the tables `ops()` and `vnni_ops()` build, each with its
    // own batch kernels, whose CPU features the table's contract guarantees; the shapes were
    // checked: `w` holds `rows · nb` blocks, `x` holds `n · nb`, `out` holds `rows · n`.
    unsafe { matmul_tiles::<F, B>(w, x, prep, (nb, rows, n), out, None) }
}

/// [`matmul`] finished into `dest` ([`super::MatmulIntoFn`]).
///
/// # Safety
/// As [`super::MatmulIntoFn`]; only reachable through the tables, as [`matmul`].
unsafe fn matmul_into<F: TileFormat, B: Batch<F>>(
    w: &[F::W],
    x: &[BlockQ8Act],
    prep: &[PrepLane],
    nb: usize,
    partial: &mut [f32],
    dest: Dest<'_>,
) {
    let (rows, n) = super::tile_shape(w.len(), x.len(), nb, partial.len());
    // SAFETY: as this function's contract; shapes checked as in `matmul`.
    unsafe { matmul_tiles::<F, B>(w, x, prep, (nb, rows, n), partial, Some(&dest)) }
}

/// Prepares `x` for the VNNI table's q8 products: for a batch, `−128 · Σ q_x` per block.
fn prepare_q8_vnni(x: &[BlockQ8Act], nb: usize, prep: &mut [PrepLane]) {
    prepare_vnni_batch(x, nb, <BlockQ8 as packed512::Weights>::OFFSET, prep);
}

/// Prepares `x` for the VNNI table's q4 products: one token as for the AVX2 table, a batch with
/// `−8 · Σ q_x` per block.
fn prepare_q4_vnni(x: &[BlockQ8Act], nb: usize, prep: &mut [PrepLane]) {
    if x.len() == nb {
        prepare_q4(x, nb, prep);
    } else {
        prepare_vnni_batch(x, nb, <BlockQ4 as packed512::Weights>::OFFSET, prep);
    }
}

/// The terms [`packed512::matmul`] starts its block sums from, for a batch it takes.
fn prepare_vnni_batch(x: &[BlockQ8Act], nb: usize, offset: i32, prep: &mut [PrepLane]) {
    let n = x.len().checked_div(nb).unwrap_or(0);
    assert!(prep.len() >= prepared_len(n, nb), "prepare: room");
    if n >= packed::MIN_TOKENS {
        // SAFETY: only reachable through `vnni_ops()`'s table (CPU has AVX2, FMA, F16C).
        unsafe { packed512::neg_act_terms(&x[..n * nb], offset, prep) }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers: one intrinsic sequence each.

/// Sum of the 8 lanes.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_ps(v: __m256) -> f32 {
    // 4 lanes: v[i] + v[i + 4]; then 2, then 1.
    let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
    _mm_cvtss_f32(s1)
}

/// Maximum of the 8 lanes (exact; the lanes must not be NaN).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hmax_ps(v: __m256) -> f32 {
    let m4 = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let m1 = _mm_max_ss(m2, _mm_movehdup_ps(m2));
    _mm_cvtss_f32(m1)
}

/// One f16 to f32 with F16C (exact). Only for the 0..=3 blocks after the four-block loops: LLVM
/// may insert the 16 bits into an arbitrary register, a false dependency (see [`quad_scales`]).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

/// Products of signed bytes `a · b` summed in fours: lane `i` of the result (i32) holds
/// `Σ_{k<4} a[4i+k] · b[4i+k]`. Exact when no byte of `a` is −128 (negating it would wrap);
/// `b` may hold any byte, since `|b|` fits in u8 and each i16 pair is then at most
/// 2 · 127 · 128 = 32512 < 32768, so `maddubs` never saturates.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_i8_lanes(a: __m256i, b: __m256i) -> __m256i {
    // maddubs wants unsigned × signed: move b's sign onto a.
    let abs_b = _mm256_sign_epi8(b, b);
    let a_signed = _mm256_sign_epi8(a, b);
    let pairs = _mm256_maddubs_epi16(abs_b, a_signed);
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// The 32 activation bytes of a block (lane `i` = element `i`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_act(b: &BlockQ8Act) -> __m256i {
    // Reads exactly the 32 bytes of `b.qs`.
    _mm256_loadu_si256(b.qs.as_ptr().cast())
}

/// A q8 block's exact integer dot with an activation block, in 8 i32 lanes (their sum is
/// `Σ q_w · q_x`). Weights must be in `-127..=127`, as [`BlockQ8::quantize`] makes them.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_block_lanes(w: &BlockQ8, x: &BlockQ8Act) -> __m256i {
    // Reads exactly the 32 bytes of `w.qs`.
    let qw = _mm256_loadu_si256(w.qs.as_ptr().cast());
    dot_i8_lanes(qw, load_act(x))
}

/// A q4 block's 32 codes (0..=15) as bytes in element order: the low nibbles of its 16 bytes
/// are elements 0..16 (lower 128 bits), the high nibbles elements 16..32 (upper 128 bits).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_codes(w: &BlockQ4) -> __m256i {
    // Reads exactly the 16 bytes of `w.qs`.
    let packed = _mm_loadu_si128(w.qs.as_ptr().cast());
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// A q4 block's exact integer dot `Σ (q_w − 8) · q_x` with an activation block, in 8 i32 lanes.
/// The codes are unsigned, so `maddubs` takes them directly (pairs ≤ 2 · 15 · 128); the offset
/// is subtracted as `8 · q_x` pairs in i16, which is exact.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_block_lanes(w: &BlockQ4, x: &BlockQ8Act) -> __m256i {
    let qx = load_act(x);
    let wx = _mm256_maddubs_epi16(q4_codes(w), qx);
    let eight_x = _mm256_maddubs_epi16(_mm256_set1_epi8(8), qx);
    _mm256_madd_epi16(_mm256_sub_epi16(wx, eight_x), _mm256_set1_epi16(1))
}

// ---------------------------------------------------------------------------------------------
// Activation quantisation.

/// Blocks whose scales are divided together: the two divisions a block needs (`d = max / 127`,
/// `1 / d`) are a vector's lanes instead of scalar divisions one block after another.
const QUANTIZE_GROUP: usize = 8;

/// Quantises `x` (whole blocks of [`QK`]) into `out`, as the scalar twin does.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_act_avx2(x: &[f32], out: &mut [BlockQ8Act]) {
    let mut groups = x.chunks_exact(QK * QUANTIZE_GROUP);
    let mut outs = out.chunks_exact_mut(QUANTIZE_GROUP);
    for (xs, bs) in (&mut groups).zip(&mut outs) {
        let (mut amax, mut nan) = ([0f32; QUANTIZE_GROUP], [false; QUANTIZE_GROUP]);
        for (j, xs) in xs.chunks_exact(QK).enumerate() {
            (amax[j], nan[j]) = block_max(&load_block(xs));
        }
        // The scalar twin's `amax / 127` and `1 / d` (0 where `d` is 0), correctly rounded as
        // there; reads and writes exactly the eight floats of each array.
        let d = _mm256_div_ps(_mm256_loadu_ps(amax.as_ptr()), _mm256_set1_ps(127.0));
        let zero = _mm256_cmp_ps::<_CMP_EQ_OQ>(d, _mm256_setzero_ps());
        let id = _mm256_andnot_ps(zero, _mm256_div_ps(_mm256_set1_ps(1.0), d));
        let (mut ds, mut ids) = ([0f32; QUANTIZE_GROUP], [0f32; QUANTIZE_GROUP]);
        _mm256_storeu_ps(ds.as_mut_ptr(), d);
        _mm256_storeu_ps(ids.as_mut_ptr(), id);
        for (j, (xs, b)) in xs.chunks_exact(QK).zip(bs.iter_mut()).enumerate() {
            b.d = if nan[j] { f32::NAN } else { ds[j] };
            store_quantized(&load_block(xs), ids[j], b);
        }
    }
    for (xs, b) in groups
        .remainder()
        .chunks_exact(QK)
        .zip(outs.into_remainder())
    {
        let v = load_block(xs);
        let (amax, nan) = block_max(&v);
        let d = amax / 127.0;
        b.d = if nan { f32::NAN } else { d };
        store_quantized(&v, if d == 0.0 { 0.0 } else { 1.0 / d }, b);
    }
}

/// A block's 32 floats as four vectors (`xs` must hold at least 32; panics otherwise).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_block(xs: &[f32]) -> [__m256; 4] {
    let xs = &xs[..QK];
    // Loops, not `array::from_fn`: its closures are not compiled for AVX2.
    let mut v = [_mm256_setzero_ps(); 4];
    for (k, vk) in v.iter_mut().enumerate() {
        // Reads 8 of the 32 floats of `xs`.
        *vk = _mm256_loadu_ps(xs.as_ptr().add(8 * k));
    }
    v
}

/// `max |x|` of a block (NaN lanes ignored, as the scalar fold does) and whether it holds a NaN
/// (then its scale is NaN: [`crate::kernels::mark_nan_blocks`]).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_max(v: &[__m256; 4]) -> (f32, bool) {
    let mut nan = _mm256_setzero_ps();
    for &vk in v {
        nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(vk, vk));
    }
    (abs_max(v), _mm256_movemask_ps(nan) != 0)
}

/// The block's `round(x · id)` saturated to i8, as the scalar twin computes it, into `b.qs`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_quantized(v: &[__m256; 4], id: f32, b: &mut BlockQ8Act) {
    let scale = _mm256_set1_ps(id);
    let mut q = [_mm256_setzero_si256(); 4];
    for (qk, &vk) in q.iter_mut().zip(v) {
        *qk = _mm256_cvtps_epi32(saturate_i8(_mm256_mul_ps(vk, scale)));
    }
    // Writes exactly the 32 bytes of `b.qs`.
    _mm256_storeu_si256(b.qs.as_mut_ptr().cast(), pack_i32_to_i8(q));
}

/// `max |x|` over 32 floats, ignoring NaN lanes as `f32::max` in the scalar fold does.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn abs_max(v: &[__m256; 4]) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for &vi in v {
        // maxps returns its second operand when either is NaN, so `m` never becomes NaN.
        m = _mm256_max_ps(_mm256_andnot_ps(sign, vi), m);
    }
    hmax_ps(m)
}

/// Clamps lanes to [−128, 127] and maps NaN to 0, so the rounding conversion that follows gives
/// what `round_ties_even() as i8` gives (it saturates the same way).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn saturate_i8(p: __m256) -> __m256 {
    let not_nan = _mm256_cmp_ps::<_CMP_ORD_Q>(p, p);
    let p = _mm256_and_ps(p, not_nan);
    _mm256_min_ps(
        _mm256_max_ps(p, _mm256_set1_ps(-128.0)),
        _mm256_set1_ps(127.0),
    )
}

/// Packs 4 × 8 i32 lanes (each in i8 range) into 32 i8 lanes in order: lane `8k + i` of the
/// result is lane `i` of `q[k]`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_i32_to_i8(q: [__m256i; 4]) -> __m256i {
    // The packs work per 128-bit half, leaving 4-byte groups in the order
    // q0.lo q1.lo q2.lo q3.lo | q0.hi q1.hi q2.hi q3.hi; the permute restores element order.
    let w01 = _mm256_packs_epi32(q[0], q[1]);
    let w23 = _mm256_packs_epi32(q[2], q[3]);
    let bytes = _mm256_packs_epi16(w01, w23);
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

// ---------------------------------------------------------------------------------------------
// Integer dot products: four blocks per iteration (their scales converted together) into two
// accumulators, then the remaining 0..=3 blocks.

/// `w · x` of one q8 row and one token: four blocks per iteration, then the rest.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_avx2(w: &[BlockQ8], x: &[BlockQ8Act]) -> f32 {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut quads_w = w.chunks_exact(4);
    let mut quads_x = x.chunks_exact(4);
    for (w4, x4) in (&mut quads_w).zip(&mut quads_x) {
        prefetch_ahead(w4);
        let d = quad_scales(w4, x4);
        acc0 = fma_scaled(acc0, lane::<0>(d), q8_block_lanes(&w4[0], &x4[0]));
        acc1 = fma_scaled(acc1, lane::<1>(d), q8_block_lanes(&w4[1], &x4[1]));
        acc0 = fma_scaled(acc0, lane::<2>(d), q8_block_lanes(&w4[2], &x4[2]));
        acc1 = fma_scaled(acc1, lane::<3>(d), q8_block_lanes(&w4[3], &x4[3]));
    }
    for (bw, bx) in quads_w.remainder().iter().zip(quads_x.remainder()) {
        let d = _mm256_set1_ps(f16_to_f32(bw.d) * bx.d);
        acc0 = fma_scaled(acc0, d, q8_block_lanes(bw, bx));
    }
    hsum_ps(_mm256_add_ps(acc0, acc1))
}

/// `w · x` of one q4 row and one token: four blocks per iteration, then the rest.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_avx2(w: &[BlockQ4], x: &[BlockQ8Act]) -> f32 {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut quads_w = w.chunks_exact(4);
    let mut quads_x = x.chunks_exact(4);
    for (w4, x4) in (&mut quads_w).zip(&mut quads_x) {
        prefetch_ahead(w4);
        let d = quad_scales(w4, x4);
        acc0 = fma_scaled(acc0, lanes_01(d), q4_pair_lanes(&w4[..2], &x4[..2]));
        acc1 = fma_scaled(acc1, lanes_23(d), q4_pair_lanes(&w4[2..], &x4[2..]));
    }
    for (bw, bx) in quads_w.remainder().iter().zip(quads_x.remainder()) {
        let d = _mm256_set1_ps(f16_to_f32(bw.d) * bx.d);
        acc0 = fma_scaled(acc0, d, q4_block_lanes(bw, bx));
    }
    hsum_ps(_mm256_add_ps(acc0, acc1))
}

/// How far ahead of the blocks being multiplied [`prefetch_ahead`] asks for weights, in bytes.
/// Decode streams every weight once; the hardware prefetcher alone left one thread at ~7 GB/s
/// against ~11 GB/s for a plain read loop on the test machine.
const PREFETCH_BYTES: usize = 2048;

/// Hints the cache lines `PREFETCH_BYTES` past the start of `w` (four weight blocks, at most
/// 136 bytes) into L1.
///
/// # Safety
/// The CPU must support SSE (every x86-64 CPU does). Any `w` is fine: a prefetch never
/// faults and changes no memory.
#[inline(always)]
unsafe fn prefetch_ahead<W>(w: &[W]) {
    let p = w.as_ptr().cast::<i8>().wrapping_add(PREFETCH_BYTES);
    // SAFETY: a prefetch is only a hint: it never faults, even for an address past the end of
    // the weights or of the mapping, and it changes no memory.
    for line in 0..std::mem::size_of_val(w).div_ceil(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * line));
    }
}

/// Two q4 blocks' exact integer dots with two activation blocks: lanes 0..4 (i32) sum to block
/// 0's `Σ (q_w − 8) · q_x`, lanes 4..8 to block 1's. Both slices hold two blocks.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_pair_lanes(w: &[BlockQ4], x: &[BlockQ8Act]) -> __m256i {
    debug_assert!(w.len() == 2 && x.len() == 2);
    let (lo, hi) = q4_pair_codes(w);
    // Activations rearranged to match: [x0 0..16 | x1 0..16] and [x0 16..32 | x1 16..32].
    let (x0, x1) = (load_act(&x[0]), load_act(&x[1]));
    let x_lo = _mm256_permute2x128_si256::<0x20>(x0, x1);
    let x_hi = _mm256_permute2x128_si256::<0x31>(x0, x1);
    // i16 pairs: |q · x| sums ≤ 2 · 2 · 15 · 128 and |8 · x| sums ≤ 2 · 2 · 8 · 128, no overflow.
    let wx = _mm256_add_epi16(
        _mm256_maddubs_epi16(lo, x_lo),
        _mm256_maddubs_epi16(hi, x_hi),
    );
    let eight = _mm256_set1_epi8(8);
    let offset = _mm256_add_epi16(
        _mm256_maddubs_epi16(eight, x_lo),
        _mm256_maddubs_epi16(eight, x_hi),
    );
    _mm256_madd_epi16(_mm256_sub_epi16(wx, offset), _mm256_set1_epi16(1))
}

/// Two q4 blocks' codes (`0..=15`) as bytes: `[block 0 | block 1]` of elements 0..16, then of
/// elements 16..32.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (it is inlined into callers compiled for them).
#[inline(always)]
unsafe fn q4_pair_codes(w: &[BlockQ4]) -> (__m256i, __m256i) {
    // Reads exactly the 16 bytes of each `qs`; bytes: [block 0 | block 1].
    let packed = _mm256_set_m128i(
        _mm_loadu_si128(w[1].qs.as_ptr().cast()),
        _mm_loadu_si128(w[0].qs.as_ptr().cast()),
    );
    let mask = _mm256_set1_epi8(0x0F);
    (
        _mm256_and_si256(packed, mask),
        _mm256_and_si256(_mm256_srli_epi16::<4>(packed), mask),
    )
}

/// Scales of four blocks: lane `k` holds `d_w · d_x` of block `k`. Converting four f16 scales at
/// once from a register the code fully defines also avoids a false dependency: converting one
/// lane lets LLVM insert it into whatever register is free (once, an accumulator), which
/// chained every block's scale to the previous block's FMA and cost 3x on `dot_q8`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quad_scales<W: HasF16Scale>(w: &[W], x: &[BlockQ8Act]) -> __m128 {
    debug_assert!(x.len() == 4);
    _mm_mul_ps(
        quad_w_scales(w),
        _mm_setr_ps(x[0].d, x[1].d, x[2].d, x[3].d),
    )
}

/// The f16 scales of four blocks as f32 lanes, converted together (see [`quad_scales`]).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (it is inlined into callers compiled for them).
#[inline(always)]
unsafe fn quad_w_scales<W: HasF16Scale>(w: &[W]) -> __m128 {
    debug_assert!(w.len() == 4);
    // 16-bit lane k = block k's f16 scale; the movd that starts the chain zeroes the rest.
    let bits = |k: usize| w[k].scale().to_bits() as i32;
    let v = _mm_cvtsi32_si128(bits(0));
    let v = _mm_insert_epi16::<1>(v, bits(1));
    let v = _mm_insert_epi16::<2>(v, bits(2));
    let v = _mm_insert_epi16::<3>(v, bits(3));
    _mm_cvtph_ps(v)
}

/// Lane `K` of `d` in all 8 lanes.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lane<const K: i32>(d: __m128) -> __m256 {
    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d), _mm256_set1_epi32(K))
}

/// Lanes 0..4 = `d[0]`, lanes 4..8 = `d[1]` (scales for [`q4_pair_lanes`] of blocks 0 and 1).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lanes_01(d: __m128) -> __m256 {
    let idx = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d), idx)
}

/// Lanes 0..4 = `d[2]`, lanes 4..8 = `d[3]`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lanes_23(d: __m128) -> __m256 {
    let idx = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d), idx)
}

/// `acc + d · lanes`: integer lanes converted to float (exact below 2^24), one FMA.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fma_scaled(acc: __m256, d: __m256, lanes: __m256i) -> __m256 {
    _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), acc)
}

/// Weight blocks with an f16 scale.
trait HasF16Scale {
    fn scale(&self) -> f16;
}

impl HasF16Scale for BlockQ4 {
    fn scale(&self) -> f16 {
        self.d
    }
}

impl HasF16Scale for BlockQ8 {
    fn scale(&self) -> f16 {
        self.d
    }
}

// ---------------------------------------------------------------------------------------------
// Tiles: R weight rows × T tokens per pass, for a batch (prefill). Per block column, each weight
// block is converted to signed bytes once for the T tokens and each activation's `|x|` once for
// the R rows; a pair then costs one sign, `maddubs`, `madd`, a conversion and an FMA. The R · T
// float accumulators stay in registers (R · T ≤ 12 leaves room for the temporaries of the 16
// ymm registers) and are summed horizontally only at the end. Integer block sums are exact as in
// the one-row kernels.

/// How one weight format meets activation blocks in [`tile`].
trait TileFormat {
    /// The weight block.
    type W: HasF16Scale;
    /// The block's 32 weights as signed bytes in element order, none of them −128 (the sign
    /// trick of [`dot_i8_lanes`] negates them).
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available (as for every function below).
    unsafe fn signed_w(w: &Self::W) -> __m256i;
    /// The packed kernels for batches of [`packed::MIN_TOKENS`] tokens or more.
    type Packed: packed::PackFormat<W = Self::W>;
    /// One row against one token: the one-row kernel.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available.
    unsafe fn dot(w: &[Self::W], x: &[BlockQ8Act]) -> f32;
    /// Every row of `w` (rows of `nb` blocks) against one token (decode): the one-row kernel
    /// row by row. Interleaving several rows' weight streams measured slower (2 rows: −40%,
    /// 4 rows: −50% tokens/s) on a memory-bound decode than one stream.
    ///
    /// # Safety
    /// As [`matmul_tiles`] with one token.
    #[inline(always)]
    unsafe fn decode(
        w: &[Self::W],
        x: &[BlockQ8Act],
        _prep: &[PrepLane],
        nb: usize,
        out: &mut [f32],
    ) {
        for (r, y) in out.iter_mut().enumerate() {
            *y = Self::dot(&w[r * nb..(r + 1) * nb], x);
        }
    }
}

/// q8 weights: already signed, `-127..=127`.
struct Q8Tile;
/// q4 weights: codes minus 8, `-8..=7`.
struct Q4Tile;

impl TileFormat for Q8Tile {
    type W = BlockQ8;
    type Packed = packed::Q8Packed;
    /// # Safety
    /// As [`TileFormat::signed_w`].
    #[inline(always)]
    unsafe fn signed_w(w: &BlockQ8) -> __m256i {
        // Reads exactly the 32 bytes of `w.qs`.
        _mm256_loadu_si256(w.qs.as_ptr().cast())
    }
    /// # Safety
    /// As [`TileFormat::dot`].
    #[inline(always)]
    unsafe fn dot(w: &[BlockQ8], x: &[BlockQ8Act]) -> f32 {
        dot_q8_avx2(w, x)
    }
}

impl TileFormat for Q4Tile {
    type W = BlockQ4;
    type Packed = packed::Q4Packed;
    /// # Safety
    /// As [`TileFormat::signed_w`].
    #[inline(always)]
    unsafe fn signed_w(w: &BlockQ4) -> __m256i {
        _mm256_sub_epi8(q4_codes(w), _mm256_set1_epi8(8))
    }
    /// # Safety
    /// As [`TileFormat::dot`].
    #[inline(always)]
    unsafe fn dot(w: &[BlockQ4], x: &[BlockQ8Act]) -> f32 {
        dot_q4_avx2(w, x)
    }
    /// # Safety
    /// As [`TileFormat::decode`].
    #[inline(always)]
    unsafe fn decode(
        w: &[BlockQ4],
        x: &[BlockQ8Act],
        prep: &[PrepLane],
        nb: usize,
        out: &mut [f32],
    ) {
        decode::matmul_q4(w, x, prep, nb, out)
    }
}

/// One block column `b` of a tile: `acc[r][t] += d_w[r] · d_x[t] · Σ q_w · q_x` over the block.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (it is inlined into callers compiled for them).
// Index loops over small const-size arrays: iterator adaptors would add closures that are not
// compiled for AVX2 and would not be inlined here.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile_block<F: TileFormat, const R: usize, const T: usize>(
    w: &[&[F::W]; R],
    x: &[&[BlockQ8Act]; T],
    b: usize,
    acc: &mut [[__m256; T]; R],
) {
    // The rows' signed weights and the pairs' scale products go through the stack: loads and
    // broadcasts from L1 use load ports and hold no register across the pair loop. The scale
    // products are formed four tokens at a time (T ≤ 4).
    let mut wq = [_mm256_setzero_si256(); R];
    let mut dx = [0f32; 4];
    for t in 0..T {
        dx[t] = x[t][b].d;
    }
    let dx = _mm_loadu_ps(dx.as_ptr());
    let mut dd = [[0f32; 4]; R];
    for r in 0..R {
        wq[r] = F::signed_w(&w[r][b]);
        let dw = _mm_cvtph_ps(_mm_set1_epi16(w[r][b].scale().to_bits() as i16));
        _mm_storeu_ps(dd[r].as_mut_ptr(), _mm_mul_ps(dw, dx));
    }
    let ones = _mm256_set1_epi16(1);
    for t in 0..T {
        let qx = load_act(&x[t][b]);
        let abs_x = _mm256_sign_epi8(qx, qx);
        for r in 0..R {
            // |x| · sign(w, x) = w · x; pairs ≤ 2 · 128 · 127, no i16 saturation.
            let pairs = _mm256_maddubs_epi16(abs_x, _mm256_sign_epi8(wq[r], qx));
            let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            acc[r][t] = _mm256_fmadd_ps(_mm256_broadcast_ss(&dd[r][t]), lanes, acc[r][t]);
        }
    }
}

/// `out[r][t]` = the dot of row `w[r]` with token `x[t]` (all `nb` blocks long).
///
/// # Safety
/// AVX2, FMA and F16C must be available; every slice holds at least `nb` blocks.
// Index loops over small const-size arrays: see `tile_block`.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<F: TileFormat, const R: usize, const T: usize>(
    w: [&[F::W]; R],
    x: [&[BlockQ8Act]; T],
    nb: usize,
) -> [[f32; T]; R] {
    let w = w.map(|row| &row[..nb]);
    let x = x.map(|tok| &tok[..nb]);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        tile_block::<F, R, T>(&w, &x, b, &mut acc);
    }
    let mut out = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = hsum_ps(acc[r][t]);
        }
    }
    out
}

/// Rows `r0..rows` of the product for the `T` tokens starting at `t0`: `R` rows at a time, then
/// the remaining rows one by one, into `out` as `at` says.
///
/// # Safety
/// As [`matmul_tiles`], and `t0 + T <= n`.
#[inline(always)]
unsafe fn token_group<F: TileFormat, const R: usize, const T: usize>(
    w: &[F::W],
    x: &[BlockQ8Act],
    nb: usize,
    ((r0, rows), t0, at): ((usize, usize), usize, OutAt),
    out: &mut [f32],
) {
    let row = |r: usize| &w[r * nb..(r + 1) * nb];
    let xs: [&[BlockQ8Act]; T] = std::array::from_fn(|k| &x[(t0 + k) * nb..(t0 + k + 1) * nb]);
    let mut put = |r: usize, y: &[f32; T]| {
        if at.layout == OutLayout::RowMajor {
            out[at.index(r, t0)..][..T].copy_from_slice(y);
        } else {
            for (k, &v) in y.iter().enumerate() {
                out[at.index(r, t0 + k)] = v;
            }
        }
    };
    let mut r = r0;
    while r + R <= rows {
        let ws: [&[F::W]; R] = std::array::from_fn(|k| row(r + k));
        let y = tile::<F, R, T>(ws, xs, nb);
        for (k, yr) in y.iter().enumerate() {
            put(r + k, yr);
        }
        r += R;
    }
    for r in r..rows {
        let [y] = tile::<F, 1, T>([row(r)], xs, nb);
        put(r, &y);
    }
}

/// The packed batch kernels of a table, for weights of format `F`.
trait Batch<F: TileFormat> {
    /// Rows in a packed group.
    const GROUP_ROWS: usize;
    /// The first `groups · GROUP_ROWS` rows of `w` against the `n` tokens of `x` (rows and
    /// tokens of `nb` blocks), prepared in `prep` by the table, into `out` `(n, rows)` or, with
    /// a `dest`, finished there (`out` then holds partial sums).
    ///
    /// # Safety
    /// The CPU must have the kernels' features; otherwise as [`matmul_tiles`].
    unsafe fn matmul(
        w: &[F::W],
        x: &[BlockQ8Act],
        prep: &[PrepLane],
        shape: (usize, usize, usize),
        out: &mut [f32],
        dest: Option<&Dest<'_>>,
    );
}

/// [`packed`]: eight rows per group, AVX2 `maddubs`; q4 reads its terms from the preparation.
struct Avx2Batch;

impl<F: TileFormat> Batch<F> for Avx2Batch {
    const GROUP_ROWS: usize = packed::GROUP_ROWS;
    #[inline(always)]
    unsafe fn matmul(
        w: &[F::W],
        x: &[BlockQ8Act],
        prep: &[PrepLane],
        (nb, groups, n): (usize, usize, usize),
        out: &mut [f32],
        dest: Option<&Dest<'_>>,
    ) {
        let terms = if <F::Packed as packed::PackFormat>::TERMS {
            &lanes_i32(prep)[..n * nb]
        } else {
            &[]
        };
        // SAFETY: as this function's contract.
        unsafe { packed::matmul::<F::Packed>(w, x, terms, (nb, groups, n), out, dest) }
    }
}

/// [`packed512`]: sixteen rows per group, AVX-512 `vpdpbusd`, every block's sum started from the
/// term in the preparation.
struct Vnni512Batch;

impl<F: TileFormat> Batch<F> for Vnni512Batch
where
    F::W: packed512::Weights,
{
    const GROUP_ROWS: usize = packed512::GROUP_ROWS;
    #[inline(always)]
    unsafe fn matmul(
        w: &[F::W],
        x: &[BlockQ8Act],
        prep: &[PrepLane],
        (nb, groups, n): (usize, usize, usize),
        out: &mut [f32],
        dest: Option<&Dest<'_>>,
    ) {
        let terms = &lanes_i32(prep)[..n * nb];
        // SAFETY: as this function's contract.
        unsafe { packed512::matmul(w, x, terms, (nb, groups, n), out, dest) }
    }
}

/// Every row × token of the product, written token-major (`out` is `(n, rows)`). A single
/// token (decode) goes row by row through the streaming one-row kernel; a batch of
/// [`packed::MIN_TOKENS`] or more through the batch kernels `B`, a group of rows at a time; the
/// rows left over, and smaller batches, through the row-major tiles: tokens four at a time
/// against two rows at a time, then the last one to three tokens together. With a `dest`,
/// every value is finished into it instead: the batch kernels finish their groups in
/// registers (`out` then holds only partial sums), the other rows are finished from `out`.
///
/// # Safety
/// AVX2, FMA and F16C, and `B`'s features, must be available; `w.len() == rows · nb`,
/// `x.len() == n · nb`, `out.len() == rows · n`; `prep` is at least
/// [`prepared_len`]`(n, nb)` lanes, prepared by the table `B` belongs to; `dest` as
/// [`super::MatmulIntoFn`] requires.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn matmul_tiles<F: TileFormat, B: Batch<F>>(
    w: &[F::W],
    x: &[BlockQ8Act],
    prep: &[PrepLane],
    (nb, rows, n): (usize, usize, usize),
    out: &mut [f32],
    dest: Option<&Dest<'_>>,
) {
    let mut r0 = 0;
    if n == 1 {
        F::decode(w, x, prep, nb, out);
    } else {
        if n >= packed::MIN_TOKENS {
            let groups = rows / B::GROUP_ROWS;
            // SAFETY: as this function's contract.
            unsafe { B::matmul(w, x, prep, (nb, groups, n), out, dest) };
            r0 = groups * B::GROUP_ROWS;
        }
        let at = OutAt::new(OutLayout::TokenMajor, rows, n);
        row_major_tiles::<F>(w, x, nb, (r0, rows), n, at, out);
    }
    // SAFETY: as this function's contract.
    unsafe { finish_rest(dest, out, (r0, rows)) };
}

/// Finishes rows `r0..rows` of every token of `out` `(n, rows)` into `dest`, if there is one:
/// the rows no packed group finished in registers.
///
/// # Safety
/// `dest` as [`super::MatmulIntoFn`] requires, for a call of `rows` rows.
#[inline(always)]
unsafe fn finish_rest(dest: Option<&Dest<'_>>, out: &[f32], (r0, rows): (usize, usize)) {
    let Some(dest) = dest.filter(|_| r0 < rows) else {
        return;
    };
    for (t, o) in out.chunks_exact(rows).enumerate() {
        // SAFETY: rows `r0..rows` of token `t < n` are the call's, lent to it by the contract.
        unsafe { dest.put(t, r0, &o[r0..]) };
    }
}

/// A packed kernel's walk over the weights: groups of `rows` rows, `blocks` blocks of them
/// packed at a time, group after group.
#[derive(Clone, Copy)]
struct Chunks {
    rows: usize,
    blocks: usize,
}

impl Chunks {
    /// The first row and block of the chunk packed after block `b0` of group `g`, if any.
    fn next(self, g: usize, b0: usize, groups: usize, nb: usize) -> Option<(usize, usize)> {
        if b0 + self.blocks < nb {
            Some((g * self.rows, b0 + self.blocks))
        } else if g + 1 < groups {
            Some(((g + 1) * self.rows, 0))
        } else {
            None
        }
    }

    /// Where the chunk from block `b0` of group `g` puts its results, in an output of `rows`
    /// per token and tokens of `nb` blocks: written for the first chunk of the group, added for
    /// the others, and finished into `dest` (if any) for the last.
    fn span<'d>(
        self,
        (g, b0): (usize, usize),
        rows: usize,
        nb: usize,
        dest: Option<&'d Dest<'d>>,
    ) -> span::Span<'d> {
        span::Span {
            r0: g * self.rows,
            rows,
            nb,
            b0,
            first: b0 == 0,
            dest: dest.filter(|_| b0 + self.blocks >= nb),
        }
    }

    /// Asks for part `i` of `parts` of the chunk from row `r0` and block `b0` of `w` (rows of
    /// `nb` blocks), so that packing it does not wait for memory: a batch reads each weight
    /// from memory once, and a group's rows are more streams than the hardware prefetcher
    /// follows.
    #[inline(always)]
    fn prefetch<W>(self, w: &[W], nb: usize, (r0, b0): (usize, usize), i: usize, parts: usize) {
        let bytes = self.blocks.min(nb - b0) * std::mem::size_of::<W>();
        let (rows_from, rows_to) = (i * self.rows / parts, (i + 1) * self.rows / parts);
        for r in rows_from..rows_to.min(self.rows) {
            let p = w.as_ptr().wrapping_add((r0 + r) * nb + b0).cast::<i8>();
            for line in (0..bytes).step_by(64) {
                // SAFETY: a prefetch is only a hint and never faults, whatever the address; SSE
                // is part of every x86-64 CPU.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line)) };
            }
        }
    }
}

/// Where the row-major tiles put row `r` of token `t` in a call's output of `rows` rows and `n`
/// tokens.
#[derive(Clone, Copy)]
struct OutAt {
    layout: OutLayout,
    rows: usize,
    n: usize,
}

impl OutAt {
    fn new(layout: OutLayout, rows: usize, n: usize) -> Self {
        OutAt { layout, rows, n }
    }

    #[inline(always)]
    fn index(self, r: usize, t: usize) -> usize {
        self.layout.index(r, t, self.rows, self.n)
    }
}

/// The row-major tiles of [`matmul_tiles`] over rows `r0..rows` of `w`, into `out` as `at`
/// says.
///
/// # Safety
/// As [`matmul_tiles`].
#[inline(always)]
unsafe fn row_major_tiles<F: TileFormat>(
    w: &[F::W],
    x: &[BlockQ8Act],
    nb: usize,
    rows: (usize, usize),
    n: usize,
    at: OutAt,
    out: &mut [f32],
) {
    let mut t0 = 0;
    while t0 + 4 <= n {
        token_group::<F, 2, 4>(w, x, nb, (rows, t0, at), out);
        t0 += 4;
    }
    let shape = (rows, t0, at);
    match n - t0 {
        3 => token_group::<F, 2, 3>(w, x, nb, shape, out),
        2 => token_group::<F, 4, 2>(w, x, nb, shape, out),
        1 => token_group::<F, 4, 1>(w, x, nb, shape, out),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Float dot products: 32 per iteration into four accumulators, then 8 at a time, then scalar.

/// 8 f16 weights widened to f32 (lane `i` = `w[i]`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f16x8(w: &[f16]) -> __m256 {
    assert_eq!(w.len(), 8);
    // Reads exactly the 8 halves (16 bytes) of `w`.
    _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().cast()))
}

/// 8 floats (lane `i` = `x[i]`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f32x8(x: &[f32]) -> __m256 {
    assert_eq!(x.len(), 8);
    // Reads exactly the 8 floats of `x`.
    _mm256_loadu_ps(x.as_ptr())
}

/// `w · x` of an f16 row and an f32 vector: 32 per iteration, then 8, then scalar.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(w: &[f16], x: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut c32_w = w.chunks_exact(32);
    let mut c32_x = x.chunks_exact(32);
    for (cw, cx) in (&mut c32_w).zip(&mut c32_x) {
        for (a, (w8, x8)) in acc
            .iter_mut()
            .zip(cw.chunks_exact(8).zip(cx.chunks_exact(8)))
        {
            *a = _mm256_fmadd_ps(load_f16x8(w8), load_f32x8(x8), *a);
        }
    }
    let mut c8_w = c32_w.remainder().chunks_exact(8);
    let mut c8_x = c32_x.remainder().chunks_exact(8);
    for (cw, cx) in (&mut c8_w).zip(&mut c8_x) {
        acc[0] = _mm256_fmadd_ps(load_f16x8(cw), load_f32x8(cx), acc[0]);
    }
    let tail: f32 = c8_w
        .remainder()
        .iter()
        .zip(c8_x.remainder())
        .map(|(a, b)| f16_to_f32(*a) * b)
        .sum();
    hsum_ps(sum4(acc)) + tail
}

/// `a · b` of two f32 vectors: 32 per iteration, then 8, then scalar.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut c32_a = a.chunks_exact(32);
    let mut c32_b = b.chunks_exact(32);
    for (ca, cb) in (&mut c32_a).zip(&mut c32_b) {
        for (s, (a8, b8)) in acc
            .iter_mut()
            .zip(ca.chunks_exact(8).zip(cb.chunks_exact(8)))
        {
            *s = _mm256_fmadd_ps(load_f32x8(a8), load_f32x8(b8), *s);
        }
    }
    let mut c8_a = c32_a.remainder().chunks_exact(8);
    let mut c8_b = c32_b.remainder().chunks_exact(8);
    for (ca, cb) in (&mut c8_a).zip(&mut c8_b) {
        acc[0] = _mm256_fmadd_ps(load_f32x8(ca), load_f32x8(cb), acc[0]);
    }
    let tail: f32 = c8_a
        .remainder()
        .iter()
        .zip(c8_b.remainder())
        .map(|(p, q)| p * q)
        .sum();
    hsum_ps(sum4(acc)) + tail
}

/// Lane-wise sum of four accumulators.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (this function is compiled for them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum4(acc: [__m256; 4]) -> __m256 {
    _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))
}
