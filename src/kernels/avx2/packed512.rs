//! Batch products (prefill) on AVX-512 VNNI: sixteen weight rows per 512-bit `vpdpbusd`.
//!
//! The layout of [`super::packed`], twice as wide: a packed block holds sixteen rows' 32
//! weights, and dword `r` of vector `k` is row `r`'s elements `4k..4k + 4`. `vpdpbusd`
//! multiplies unsigned by signed bytes, four products into each i32 lane, so the weights are
//! packed unsigned — a q8 weight as `w + 128`, a q4 code as it is stored, `w + 8` — and the
//! activations stay signed: a block's sum is `Σ w · x + c · Σ x` (c = 128 or 8), and each block's
//! sum starts from `−c · Σ x`, prepared once per product ([`neg_act_terms`]). No sign trick and
//! no i16 stage: one instruction per four bytes of sixteen rows.
//!
//! Eight tokens meet a packed block while its eight vectors sit in registers; each token's four
//! activation bytes are broadcast by the instruction's memory operand. A block then costs, per
//! token and sixteen rows, eight `vpdpbusd`, the start from the term, a conversion, the product
//! of the rows' scales with the token's, and one FMA.
//!
//! Integer block sums are exact; only the float summation order differs from the scalar twin.

use std::arch::x86_64::*;

use super::span::Span;
use crate::kernels::{lanes_i32_mut, Dest, PrepLane};
use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act};

/// Rows in a packed group: one i32 lane of a 512-bit vector each.
pub(super) const GROUP_ROWS: usize = 16;
/// Blocks packed at a time: 32 · 576 bytes stay in L1 while the tokens pass over them.
const CHUNK_BLOCKS: usize = 32;
/// How the kernel walks the weights, for prefetching the next chunk.
const CHUNKS: super::Chunks = super::Chunks {
    rows: GROUP_ROWS,
    blocks: CHUNK_BLOCKS,
};
/// Tokens that meet a packed block together.
const TILE_TOKENS: usize = 8;

/// Sixteen rows' block, interleaved (see the module comment), and the rows' scales.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct PackedBlock {
    q: [[u8; 64]; 8],
    d: [f32; GROUP_ROWS],
}

const EMPTY: PackedBlock = PackedBlock {
    q: [[0; 64]; 8],
    d: [0.0; GROUP_ROWS],
};

/// A weight format the kernels take.
pub(super) trait Weights {
    /// `c`: what each activation byte's weight is offset by when packed unsigned.
    const OFFSET: i32;
    /// A block's 32 weights plus [`Weights::OFFSET`], as unsigned bytes in element order.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available.
    unsafe fn unsigned_bytes(&self) -> __m256i;
    /// The block's f16 scale bits.
    fn scale_bits(&self) -> u16;
}

impl Weights for BlockQ8 {
    const OFFSET: i32 = 128;
    /// # Safety
    /// As [`Weights::unsigned_bytes`].
    #[inline(always)]
    unsafe fn unsigned_bytes(&self) -> __m256i {
        // Reads exactly the 32 bytes of `qs`; `w ^ 0x80` is `w + 128` as an unsigned byte.
        let w = _mm256_loadu_si256(self.qs.as_ptr().cast());
        _mm256_xor_si256(w, _mm256_set1_epi8(i8::MIN))
    }
    fn scale_bits(&self) -> u16 {
        self.d.to_bits()
    }
}

impl Weights for BlockQ4 {
    const OFFSET: i32 = 8;
    /// # Safety
    /// As [`Weights::unsigned_bytes`].
    #[inline(always)]
    unsafe fn unsigned_bytes(&self) -> __m256i {
        super::q4_codes(self)
    }
    fn scale_bits(&self) -> u16 {
        self.d.to_bits()
    }
}

/// `−c · Σ q_x` of every block of `x` into the first `x.len()` i32 values of `prep` (panics if
/// it is shorter): the start of each block's sum in [`matmul`] for weights offset by `c`.
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn neg_act_terms(x: &[BlockQ8Act], c: i32, prep: &mut [PrepLane]) {
    // Σ q_x as `maddubs` of ones with the bytes (pairs within ±256), then `madd`.
    let (ones8, ones16) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1));
    for (t, b) in lanes_i32_mut(prep)[..x.len()].iter_mut().zip(x) {
        let pairs = _mm256_maddubs_epi16(ones8, super::load_act(b));
        *t = -c * super::packed::hsum_epi32(_mm256_madd_epi16(pairs, ones16));
    }
}

/// `out[t · rows + r]` for the first `groups · 16` rows of `w` and all `n` tokens of `x` (rows
/// and tokens of `nb` blocks; `out` is `(n, rows)`, `rows = out.len() / n`), with `terms` from
/// [`neg_act_terms`] for `W::OFFSET`. With a `dest`, each finished value goes there instead
/// (bias, then what its epilogue says, in registers) and `out` only holds partial sums.
///
/// # Safety
/// AVX2, FMA, F16C, AVX-512 F, BW and VNNI must be available; `w` holds at least
/// `groups · 16 · nb` blocks, `x` and `terms` hold `n · nb`, and `out` holds `n` rows of at least
/// `groups · 16` values; `dest` is valid as [`crate::kernels::MatmulIntoFn`] requires.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn matmul<W: Weights>(
    w: &[W],
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
            pack(w, nb, r0, b0, chunk);
            let span = CHUNKS.span((g, b0), rows, nb, dest);
            let next = CHUNKS.next(g, b0, groups, nb);
            let tiles = n / TILE_TOKENS;
            let mut t0 = 0;
            while t0 + TILE_TOKENS <= n {
                if let Some((r, b)) = next {
                    CHUNKS.prefetch(w, nb, (r, b), t0 / TILE_TOKENS, tiles);
                }
                tokens::<TILE_TOKENS>(chunk, x, terms, &span, t0, out);
                t0 += TILE_TOKENS;
            }
            match n - t0 {
                7 => tokens::<7>(chunk, x, terms, &span, t0, out),
                6 => tokens::<6>(chunk, x, terms, &span, t0, out),
                5 => tokens::<5>(chunk, x, terms, &span, t0, out),
                4 => tokens::<4>(chunk, x, terms, &span, t0, out),
                3 => tokens::<3>(chunk, x, terms, &span, t0, out),
                2 => tokens::<2>(chunk, x, terms, &span, t0, out),
                1 => tokens::<1>(chunk, x, terms, &span, t0, out),
                _ => {}
            }
        }
    }
}

/// Packs blocks `b0..b0 + out.len()` of rows `r0..r0 + 16` of `w` (rows of `nb` blocks).
///
/// # Safety
/// AVX2, FMA, F16C and AVX-512 F must be available (it is inlined into [`matmul`]).
#[inline(always)]
unsafe fn pack<W: Weights>(w: &[W], nb: usize, r0: usize, b0: usize, out: &mut [PackedBlock]) {
    for (j, pb) in out.iter_mut().enumerate() {
        let block = |r: usize| &w[(r0 + r) * nb + b0 + j];
        // Vector `i`: row `i`'s 32 bytes, then row `i + 8`'s.
        let mut rows = [_mm512_setzero_si512(); 8];
        for (i, v) in rows.iter_mut().enumerate() {
            let (lo, hi) = (block(i).unsigned_bytes(), block(i + 8).unsigned_bytes());
            *v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        }
        for (k, v) in transpose_dwords_16(rows).into_iter().enumerate() {
            // Writes exactly the 64 bytes of `pb.q[k]` (aligned).
            _mm512_store_si512(pb.q[k].as_mut_ptr().cast(), v);
        }
        let mut bits = [0u16; GROUP_ROWS];
        for (r, b) in bits.iter_mut().enumerate() {
            *b = block(r).scale_bits();
        }
        // Reads the 32 bytes of `bits`; writes exactly the 16 floats of `pb.d` (aligned).
        let halves = _mm256_loadu_si256(bits.as_ptr().cast());
        _mm512_store_ps(pb.d.as_mut_ptr(), _mm512_cvtph_ps(halves));
    }
}

/// Sixteen rows of eight dwords, given as vectors of rows `i` and `i + 8`, as eight vectors of
/// sixteen: vector `k` holds dword `k` of rows `0..16` in order.
///
/// # Safety
/// AVX-512 F must be available (it is inlined into [`matmul`]).
#[inline(always)]
unsafe fn transpose_dwords_16(m: [__m512i; 8]) -> [__m512i; 8] {
    // Within each 128-bit lane, rows in fours: `u[k]` (and `u[4 + k]` for rows 4..8 and 12..16)
    // holds, lane by lane, dword k of rows 0..4, dword k + 4 of rows 0..4, dword k of rows 8..12
    // and dword k + 4 of rows 8..12.
    // Plain calls, no closures: a closure's body is not compiled for the caller's features.
    let (t01l, t01h) = (
        _mm512_unpacklo_epi32(m[0], m[1]),
        _mm512_unpackhi_epi32(m[0], m[1]),
    );
    let (t23l, t23h) = (
        _mm512_unpacklo_epi32(m[2], m[3]),
        _mm512_unpackhi_epi32(m[2], m[3]),
    );
    let (t45l, t45h) = (
        _mm512_unpacklo_epi32(m[4], m[5]),
        _mm512_unpackhi_epi32(m[4], m[5]),
    );
    let (t67l, t67h) = (
        _mm512_unpacklo_epi32(m[6], m[7]),
        _mm512_unpackhi_epi32(m[6], m[7]),
    );
    let u = [
        _mm512_unpacklo_epi64(t01l, t23l),
        _mm512_unpackhi_epi64(t01l, t23l),
        _mm512_unpacklo_epi64(t01h, t23h),
        _mm512_unpackhi_epi64(t01h, t23h),
        _mm512_unpacklo_epi64(t45l, t67l),
        _mm512_unpackhi_epi64(t45l, t67l),
        _mm512_unpacklo_epi64(t45h, t67h),
        _mm512_unpackhi_epi64(t45h, t67h),
    ];
    // Dword k of rows 0..16 is lane 0 of u[k], lane 0 of u[4 + k], lane 2 of u[k], lane 2 of
    // u[4 + k] (qwords 0, 1, 8, 9, 4, 5, 12, 13 of the pair); dword k + 4 the odd lanes.
    let even = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
    let odd = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    [
        _mm512_permutex2var_epi64(u[0], even, u[4]),
        _mm512_permutex2var_epi64(u[1], even, u[5]),
        _mm512_permutex2var_epi64(u[2], even, u[6]),
        _mm512_permutex2var_epi64(u[3], even, u[7]),
        _mm512_permutex2var_epi64(u[0], odd, u[4]),
        _mm512_permutex2var_epi64(u[1], odd, u[5]),
        _mm512_permutex2var_epi64(u[2], odd, u[6]),
        _mm512_permutex2var_epi64(u[3], odd, u[7]),
    ]
}

/// One chunk against tokens `t0..t0 + T`, written (first chunk) or added into `out`.
///
/// # Safety
/// As [`matmul`] (it is inlined into it).
#[inline(always)]
unsafe fn tokens<const T: usize>(
    packed: &[PackedBlock],
    x: &[BlockQ8Act],
    terms: &[i32],
    span: &Span<'_>,
    t0: usize,
    out: &mut [f32],
) {
    let first = t0 * span.nb + span.b0;
    let end = (t0 + T - 1) * span.nb + span.b0 + packed.len();
    assert!(
        end <= x.len() && end <= terms.len(),
        "packed512: tokens out of range"
    );
    let acc = chunk::<T>(packed, &x[first..end], &terms[first..end], span.nb);
    for (k, a) in acc.into_iter().enumerate() {
        // SAFETY: rows `r0..r0 + 16` and token `t0 + k` are the call's (the caller's contract,
        // also for `dest`).
        unsafe { span.put(out, t0 + k, a) };
    }
}

/// Runs `$body` with `$t` bound to each constant `0..8` below `$n`: unrolled, so that arrays
/// indexed by `$t` stay in registers.
macro_rules! unrolled {
    ($t:ident < $n:expr, $body:block) => {
        unrolled!(@each $t < $n, $body, 0, 1, 2, 3, 4, 5, 6, 7)
    };
    (@each $t:ident < $n:expr, $body:block, $($i:literal),*) => {
        $({
            let $t: usize = $i;
            if $t < $n $body
        })*
    };
}

/// `acc[t]` lane `r` = `Σ_b d_w · d_x · (exact block dot)` of packed row `r` with token `t`
/// over the chunk's blocks, where token `t`'s block `b` is `x[t · stride + b]` (its term
/// `terms[t · stride + b]`).
///
/// # Safety
/// As [`matmul`] (it is inlined into it); `T ≤ 8`, and `x` and `terms` hold at least
/// `(T − 1) · stride + packed.len()` values.
#[inline(always)]
unsafe fn chunk<const T: usize>(
    packed: &[PackedBlock],
    x: &[BlockQ8Act],
    terms: &[i32],
    stride: usize,
) -> [__m512; T] {
    let mut acc = [_mm512_setzero_ps(); T];
    for (b, pb) in packed.iter().enumerate() {
        let mut w = [_mm512_setzero_si512(); 8];
        unrolled!(k < 8, {
            // Reads exactly the 64 bytes of `pb.q[k]` (aligned: 64-byte rows of an aligned struct).
            w[k] = _mm512_load_si512(pb.q[k].as_ptr().cast());
        });
        // Reads exactly the 16 floats of `pb.d` (aligned).
        let d = _mm512_load_ps(pb.d.as_ptr());
        let mut sums = [_mm512_setzero_si512(); T];
        unrolled!(t < T, {
            // In bounds by the caller's contract: `t · stride + b < (T − 1) · stride + len`.
            sums[t] = _mm512_set1_epi32(*terms.get_unchecked(t * stride + b));
        });
        unrolled!(k < 8, {
            unrolled!(t < T, {
                // As above; reads the 4 bytes `qs[4k..4k + 4]` of the block.
                let xb = x.get_unchecked(t * stride + b);
                let group = xb.qs.as_ptr().add(4 * k).cast::<i32>().read_unaligned();
                sums[t] = _mm512_dpbusd_epi32(sums[t], w[k], _mm512_set1_epi32(group));
            });
        });
        unrolled!(t < T, {
            let xb = x.get_unchecked(t * stride + b);
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(xb.d));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[t]), scale, acc[t]);
        });
    }
    acc
}
