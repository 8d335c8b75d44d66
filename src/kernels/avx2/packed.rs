//! Batch products (prefill) over weights packed eight rows at a time.
//!
//! For a batch, every weight block meets many tokens, so it pays to rearrange the weights once
//! per call (as a BLAS packs a panel): a packed block holds eight rows' 32 weights interleaved so
//! that one vector carries four consecutive elements of each row (byte `4r + i` of vector `k` is
//! element `4k + i` of row `r`). Against a broadcast group of four activation bytes, `maddubs`
//! and `madd` then leave row `r`'s partial dot in i32 lane `r`: the eight rows are reduced
//! vertically, and a block's scale is applied with one FMA per eight rows instead of one per
//! row. Packing happens on the stack, a chunk of blocks at a time, inside the kernel; the file
//! format and the one-row decode kernels keep the plain row-major layout.
//!
//! * q8: `|w| · sign(x, w)` per group (the sign trick, with `|w|` taken once per packed vector
//!   for all the tile's tokens), summed in i32.
//! * q4: the unsigned codes go straight into `maddubs` and are summed in i16 over the block
//!   (at most 8 · 2 · 15 · 128 = 30720, no overflow); the `−8` offset is subtracted once per
//!   block as `8 · Σ q_x`, from sums taken once per matrix product ([`q4_act_terms`]).
//!
//! Integer block sums are exact; only the float summation order differs from the scalar twin.

use std::arch::x86_64::*;

use super::span::Span;
use crate::kernels::{lanes_i32_mut, Dest, PrepLane};
use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act};

/// Rows in a packed group: one i32 lane each.
pub(super) const GROUP_ROWS: usize = 8;
/// Blocks packed at a time: 32 · 288 bytes stay in L1 while every token passes over them.
const CHUNK_BLOCKS: usize = 32;
/// How the kernel walks the weights, for prefetching the next chunk.
const CHUNKS: super::Chunks = super::Chunks {
    rows: GROUP_ROWS,
    blocks: CHUNK_BLOCKS,
};
/// Tokens that meet a packed block together.
const TILE_TOKENS: usize = 4;
/// Below this many tokens the row-major tiles are faster than packing.
pub(super) const MIN_TOKENS: usize = 4;

/// Eight rows' block, interleaved (see the module comment), and the rows' scales.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(super) struct PackedBlock {
    q: [[u8; 32]; 8],
    d: [f32; GROUP_ROWS],
}

const EMPTY: PackedBlock = PackedBlock {
    q: [[0; 32]; 8],
    d: [0.0; GROUP_ROWS],
};

/// A weight format the packed kernels take.
pub(super) trait PackFormat {
    /// The weight block.
    type W;
    /// A block's 32 elements as the bytes the kernel multiplies, in element order (q8: the
    /// signed weights; q4: the codes, `0..=15`).
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available.
    unsafe fn bytes(w: &Self::W) -> __m256i;
    /// The block's f16 scale bits.
    fn scale_bits(w: &Self::W) -> u16;
    /// Whether [`PackFormat::chunk`] reads per-activation-block terms ([`q4_act_terms`]).
    const TERMS: bool;
    /// `acc[t]` lane `r` = `Σ_b d_w · d_x · (exact block dot)` of packed row `r` with token
    /// `x[t]` over the chunk's blocks (`x[t][b]` meets `packed[b]`; `terms[t][b]` is
    /// [`q4_act_terms`]'s when [`PackFormat::TERMS`]).
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; every `x[t]` and `terms[t]` holds at least
    /// `packed.len()` blocks.
    unsafe fn chunk<const T: usize>(
        packed: &[PackedBlock],
        x: &[&[BlockQ8Act]; T],
        terms: &[&[i32]; T],
    ) -> [__m256; T];
}

/// `acc` plus, per i32 lane, the four products of unsigned `a` and signed `b` bytes
/// (`maddubs` + `madd`). Exact when each adjacent pair's products fit in i16 (the callers'
/// ranges ensure it).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (it is inlined into callers compiled for them).
#[inline(always)]
unsafe fn dot4(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(a, b);
    _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Packed q8.
pub(super) struct Q8Packed;
/// Packed q4.
pub(super) struct Q4Packed;

/// Four activation bytes (elements `4k..4k+4`) in every i32 lane.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (it is inlined into callers compiled for them).
#[inline(always)]
unsafe fn group_of_four(x: &BlockQ8Act, k: usize) -> __m256i {
    let bytes: [i8; 4] = x.qs[4 * k..4 * k + 4].try_into().expect("four bytes");
    _mm256_set1_epi32(i32::from_le_bytes(bytes.map(|b| b as u8)))
}

/// `acc + (d_w · d_x) · lanes`, the rows' scales `pb.d` times the token's `d_x`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (it is inlined into callers compiled for them).
#[inline(always)]
unsafe fn scaled(acc: __m256, pb: &PackedBlock, x: &BlockQ8Act, lanes: __m256i) -> __m256 {
    // Reads exactly the 8 floats of `pb.d` (32-byte aligned by `repr(align(32))`).
    let d = _mm256_mul_ps(_mm256_load_ps(pb.d.as_ptr()), _mm256_set1_ps(x.d));
    _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), acc)
}

/// Sum of the 8 i32 lanes.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (it is inlined into callers compiled for them).
#[inline(always)]
pub(super) unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Vector `k` of a packed block.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (it is inlined into callers compiled for them).
#[inline(always)]
unsafe fn packed_vector(pb: &PackedBlock, k: usize) -> __m256i {
    // Reads exactly the 32 bytes of `pb.q[k]` (aligned: 32-byte rows of an aligned struct).
    _mm256_load_si256(pb.q[k].as_ptr().cast())
}

impl PackFormat for Q8Packed {
    type W = BlockQ8;
    /// # Safety
    /// As [`PackFormat::bytes`].
    #[inline(always)]
    unsafe fn bytes(w: &BlockQ8) -> __m256i {
        // Reads exactly the 32 bytes of `w.qs`.
        _mm256_loadu_si256(w.qs.as_ptr().cast())
    }
    fn scale_bits(w: &BlockQ8) -> u16 {
        w.d.to_bits()
    }
    const TERMS: bool = false;
    /// # Safety
    /// As [`PackFormat::chunk`].
    // Index loops over small const-size arrays: iterator adaptors would add closures that are
    // not compiled for AVX2.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn chunk<const T: usize>(
        packed: &[PackedBlock],
        x: &[&[BlockQ8Act]; T],
        _: &[&[i32]; T],
    ) -> [__m256; T] {
        let mut acc = [_mm256_setzero_ps(); T];
        for (b, pb) in packed.iter().enumerate() {
            let mut sums = [_mm256_setzero_si256(); T];
            for k in 0..8 {
                let w = packed_vector(pb, k);
                // |w| ≤ 127 unsigned, the sign moved onto the activations (which are in
                // −127..=127, so negating them never wraps): pairs ≤ 2 · 127 · 127.
                let abs_w = _mm256_abs_epi8(w);
                for t in 0..T {
                    let xb = group_of_four(&x[t][b], k);
                    sums[t] = dot4(sums[t], abs_w, _mm256_sign_epi8(xb, w));
                }
            }
            for t in 0..T {
                acc[t] = scaled(acc[t], pb, &x[t][b], sums[t]);
            }
        }
        acc
    }
}

impl PackFormat for Q4Packed {
    type W = BlockQ4;
    /// # Safety
    /// As [`PackFormat::bytes`].
    #[inline(always)]
    unsafe fn bytes(w: &BlockQ4) -> __m256i {
        super::q4_codes(w)
    }
    fn scale_bits(w: &BlockQ4) -> u16 {
        w.d.to_bits()
    }
    const TERMS: bool = true;
    /// # Safety
    /// As [`PackFormat::chunk`].
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn chunk<const T: usize>(
        packed: &[PackedBlock],
        x: &[&[BlockQ8Act]; T],
        terms: &[&[i32]; T],
    ) -> [__m256; T] {
        let mut acc = [_mm256_setzero_ps(); T];
        for (b, pb) in packed.iter().enumerate() {
            let mut sums = [_mm256_setzero_si256(); T];
            for k in 0..8 {
                let w = packed_vector(pb, k);
                for t in 0..T {
                    sums[t] = _mm256_add_epi16(
                        sums[t],
                        _mm256_maddubs_epi16(w, group_of_four(&x[t][b], k)),
                    );
                }
            }
            for t in 0..T {
                let lanes = _mm256_madd_epi16(sums[t], _mm256_set1_epi16(1));
                let dot = _mm256_sub_epi32(lanes, _mm256_set1_epi32(terms[t][b]));
                acc[t] = scaled(acc[t], pb, &x[t][b], dot);
            }
        }
        acc
    }
}

/// Packs blocks `b0..b0 + out.len()` of rows `r0..r0 + 8` of `w` (rows of `nb` blocks).
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[inline(always)]
unsafe fn pack<F: PackFormat>(
    w: &[F::W],
    nb: usize,
    r0: usize,
    b0: usize,
    out: &mut [PackedBlock],
) {
    for (j, pb) in out.iter_mut().enumerate() {
        let block = |r: usize| &w[(r0 + r) * nb + b0 + j];
        // A loop, not `array::from_fn`: its closure is not compiled for AVX2, so the loads
        // inside became calls (7% of a q8 prefill).
        let mut rows = [_mm256_setzero_si256(); GROUP_ROWS];
        for (r, v) in rows.iter_mut().enumerate() {
            *v = F::bytes(block(r));
        }
        for (k, v) in transpose_dwords(rows).into_iter().enumerate() {
            // Writes exactly the 32 bytes of `pb.q[k]` (aligned, as in `packed_vector`).
            _mm256_store_si256(pb.q[k].as_mut_ptr().cast(), v);
        }
        let bits = |r: usize| F::scale_bits(block(r)) as i16;
        let halves = _mm_setr_epi16(
            bits(0),
            bits(1),
            bits(2),
            bits(3),
            bits(4),
            bits(5),
            bits(6),
            bits(7),
        );
        // Writes exactly the 8 floats of `pb.d` (aligned).
        _mm256_store_ps(pb.d.as_mut_ptr(), _mm256_cvtph_ps(halves));
    }
}

/// The 8 × 8 matrix of i32 lanes `m[r]` transposed: lane `r` of vector `k` is lane `k` of `m[r]`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (it is inlined into callers compiled for them).
#[inline(always)]
pub(super) unsafe fn transpose_dwords(m: [__m256i; 8]) -> [__m256i; 8] {
    // Pairs of rows interleaved by dword, then by qword: within each 128-bit half, `u[4q + k]`
    // holds dword `k` (or `k + 4` in the upper half) of rows `4q..4q + 4`.
    let t = |a: usize, b: usize| {
        (
            _mm256_unpacklo_epi32(m[a], m[b]),
            _mm256_unpackhi_epi32(m[a], m[b]),
        )
    };
    let (t01l, t01h) = t(0, 1);
    let (t23l, t23h) = t(2, 3);
    let (t45l, t45h) = t(4, 5);
    let (t67l, t67h) = t(6, 7);
    let u = [
        _mm256_unpacklo_epi64(t01l, t23l),
        _mm256_unpackhi_epi64(t01l, t23l),
        _mm256_unpacklo_epi64(t01h, t23h),
        _mm256_unpackhi_epi64(t01h, t23h),
        _mm256_unpacklo_epi64(t45l, t67l),
        _mm256_unpackhi_epi64(t45l, t67l),
        _mm256_unpacklo_epi64(t45h, t67h),
        _mm256_unpackhi_epi64(t45h, t67h),
    ];
    // Lower halves give dwords 0..4, upper halves dwords 4..8.
    [
        _mm256_permute2x128_si256::<0x20>(u[0], u[4]),
        _mm256_permute2x128_si256::<0x20>(u[1], u[5]),
        _mm256_permute2x128_si256::<0x20>(u[2], u[6]),
        _mm256_permute2x128_si256::<0x20>(u[3], u[7]),
        _mm256_permute2x128_si256::<0x31>(u[0], u[4]),
        _mm256_permute2x128_si256::<0x31>(u[1], u[5]),
        _mm256_permute2x128_si256::<0x31>(u[2], u[6]),
        _mm256_permute2x128_si256::<0x31>(u[3], u[7]),
    ]
}

/// `8 · Σ q_x` of every block of `x`, the q4 kernels' per-block term, into the first
/// `x.len()` i32 values of `prep` (panics if it is shorter).
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_act_terms(x: &[BlockQ8Act], prep: &mut [PrepLane]) {
    // 8 · Σ q_x as `maddubs` of 8s with the bytes (pairs ≤ 2 · 8 · 128), then `madd`.
    let (eights, ones) = (_mm256_set1_epi8(8), _mm256_set1_epi16(1));
    for (t, b) in lanes_i32_mut(prep)[..x.len()].iter_mut().zip(x) {
        let pairs = _mm256_maddubs_epi16(eights, super::load_act(b));
        *t = hsum_epi32(_mm256_madd_epi16(pairs, ones));
    }
}

/// `out[t · rows + r]` for the first `groups · 8` rows of `w` and all `n` tokens of `x` (rows
/// and tokens of `nb` blocks; `out` is `(n, rows)`, `rows = out.len() / n`), with `terms` from
/// [`q4_act_terms`] if `F` reads them. With a `dest`, each finished value goes there instead
/// (bias, then what its epilogue says, in registers) and `out` only holds partial sums.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `w` holds at least `groups · 8 · nb` blocks, `x`
/// holds `n · nb`, `out` holds `n` rows of at least `groups · 8` values, and `terms` holds
/// `n · nb` if [`PackFormat::TERMS`]; `dest` is valid as [`crate::kernels::MatmulIntoFn`]
/// requires.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul<F: PackFormat>(
    w: &[F::W],
    x: &[BlockQ8Act],
    terms: &[i32],
    (nb, groups, n): (usize, usize, usize),
    out: &mut [f32],
    dest: Option<&Dest<'_>>,
) {
    let rows = out.len().checked_div(n).unwrap_or(0);
    let mut packed = [EMPTY; CHUNK_BLOCKS];
    for g in 0..groups {
        let r0 = g * GROUP_ROWS;
        for b0 in (0..nb).step_by(CHUNK_BLOCKS) {
            let chunk = &mut packed[..CHUNK_BLOCKS.min(nb - b0)];
            pack::<F>(w, nb, r0, b0, chunk);
            let chunk = &*chunk;
            let span = CHUNKS.span((g, b0), rows, nb, dest);
            let next = CHUNKS.next(g, b0, groups, nb);
            let tiles = n / TILE_TOKENS;
            let mut t0 = 0;
            while t0 + TILE_TOKENS <= n {
                if let Some((r, b)) = next {
                    CHUNKS.prefetch(w, nb, (r, b), t0 / TILE_TOKENS, tiles);
                }
                tokens::<F, TILE_TOKENS>(chunk, x, terms, &span, t0, out);
                t0 += TILE_TOKENS;
            }
            match n - t0 {
                3 => tokens::<F, 3>(chunk, x, terms, &span, t0, out),
                2 => tokens::<F, 2>(chunk, x, terms, &span, t0, out),
                1 => tokens::<F, 1>(chunk, x, terms, &span, t0, out),
                _ => {}
            }
        }
    }
}

/// One chunk against tokens `t0..t0 + T`, written (first chunk) or added into `out`, or
/// finished into the span's destination.
///
/// # Safety
/// As [`matmul`] (it is inlined into it).
#[inline(always)]
unsafe fn tokens<F: PackFormat, const T: usize>(
    packed: &[PackedBlock],
    x: &[BlockQ8Act],
    terms: &[i32],
    span: &Span<'_>,
    t0: usize,
    out: &mut [f32],
) {
    let (len, nb, b0) = (packed.len(), span.nb, span.b0);
    let xs: [&[BlockQ8Act]; T] = std::array::from_fn(|k| &x[(t0 + k) * nb + b0..][..len]);
    let ts: [&[i32]; T] = std::array::from_fn(|k| {
        if terms.is_empty() {
            &[][..]
        } else {
            &terms[(t0 + k) * nb + b0..][..len]
        }
    });
    let acc = F::chunk::<T>(packed, &xs, &ts);
    for (k, a) in acc.into_iter().enumerate() {
        // SAFETY: rows `r0..r0 + 8` and token `t0 + k` are the call's (the caller's contract,
        // also for `dest`).
        unsafe { span.put(out, t0 + k, a) };
    }
}
