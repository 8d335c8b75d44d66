//! Batch products (prefill) over weights packed four rows at a time.
//!
//! For a batch every weight block meets many tokens, so the kernels rearrange the weights once
//! per call, on the stack, a chunk of blocks at a time (as a BLAS packs a panel): a packed block
//! holds four rows' 32 weights as signed int8 (q4 codes already minus 8), interleaved so that
//! vector `k` carries elements `4k..4k+4` of each row (byte `4r + i` of vector `k` is element
//! `4k + i` of row `r`), then the four rows' scales. Against group `k` of a token's activation,
//! one `sdot` by element adds four products to each row's i32 lane: a block costs eight `sdot`
//! for four rows and a token, and its scales one multiply and one FMA. q8 and q4 share the
//! kernels once packed; integer block sums are exact, only the float summation order differs
//! from the scalar twins.
//!
//! * With `dotprod` ([`matmul_sdot`]), a tile is four rows × twelve tokens, written in `asm!`
//!   so that all 32 vector registers are named: the packed block (eight vectors and the scales)
//!   stays in registers while twelve tokens pass, two at a time, each token's float sums in its
//!   own accumulator. The tokens come from a batch laid out once per product by [`prepare`] in
//!   panels of twelve: per block the twelve scales (three vectors), then the tokens' values back
//!   to back, so that one `ld1` of four vectors brings two tokens' blocks. A block of the tile
//!   costs 96 `sdot` and 59 other instructions: three loads of the packed block, seven of the
//!   panel, per token a zeroed integer accumulator, its conversion, the scale product and the
//!   FMA, and half a loop count (two blocks per iteration); with four tokens read from the
//!   activation as it is, it was 32 `sdot` and 29 others. One `asm!` loop runs every full panel
//!   of a chunk and stores each token's four rows straight into the output; a last panel of
//!   four, eight or twelve tokens (zeros past the batch) takes its own tile.
//! * Without it ([`matmul_mull`]), each group of four activation bytes is broadcast and
//!   multiplied with `smull`/`smlal`, two products per i16 lane (exact: activations stay within
//!   `−127..=127`), then pairwise-added into i32 (`sadalp`), four tokens per pass.
//!
//! Both write their output token-major, `(n, rows)` (the NEON tables' [`OutLayout::TokenMajor`]):
//! a token's four rows of a group are one vector store, and the callers need no transpose.
//!
//! [`OutLayout::TokenMajor`]: crate::kernels::OutLayout::TokenMajor

use std::arch::aarch64::*;
use std::arch::asm;

use super::f16x4_to_f32;
use crate::kernels::PrepLane;
use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act, QK};

/// Rows in a packed group: one i32 lane each.
const GROUP_ROWS: usize = 4;
/// Blocks packed at a time: 64 · 144 bytes stay in L1 while every token passes over them.
const CHUNK_BLOCKS: usize = 64;
/// From this many tokens on, packing pays for itself.
pub(super) const MIN_TOKENS: usize = 4;
/// Tokens per panel of a prepared batch: the `sdot` tile's width.
const PANEL: usize = 12;
/// Bytes one token's block takes in a panel: its scale and its 32 values.
const TOKEN_BLOCK_BYTES: usize = 4 + QK;

/// Four rows' block, interleaved (see the module comment), and the rows' scales.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct PackedBlock {
    q: [[i8; 16]; 8],
    d: [f32; GROUP_ROWS],
}

const EMPTY: PackedBlock = PackedBlock {
    q: [[0; 16]; 8],
    d: [0.0; GROUP_ROWS],
};

/// A weight format the packed kernels take.
pub(super) trait PackFormat {
    /// The weight block.
    type W;
    /// The block's 32 weights as signed int8, (elements 0..16, elements 16..32).
    ///
    /// # Safety
    /// NEON must be available.
    unsafe fn weights(w: &Self::W) -> (int8x16_t, int8x16_t);
    /// The block's f16 scale bits.
    fn scale_bits(w: &Self::W) -> u16;
}

/// Packed q8.
pub(super) struct Q8;
/// Packed q4.
pub(super) struct Q4;

impl PackFormat for Q8 {
    type W = BlockQ8;
    /// # Safety
    /// As [`PackFormat::weights`].
    #[inline(always)]
    unsafe fn weights(w: &BlockQ8) -> (int8x16_t, int8x16_t) {
        let p = w.qs.as_ptr();
        (vld1q_s8(p), vld1q_s8(p.add(16)))
    }
    #[inline(always)]
    fn scale_bits(w: &BlockQ8) -> u16 {
        w.d.to_bits()
    }
}

impl PackFormat for Q4 {
    type W = BlockQ4;
    /// # Safety
    /// As [`PackFormat::weights`].
    #[inline(always)]
    unsafe fn weights(w: &BlockQ4) -> (int8x16_t, int8x16_t) {
        let v = vld1q_u8(w.qs.as_ptr());
        let eight = vdupq_n_s8(8);
        let lo = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
        let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
        (vsubq_s8(lo, eight), vsubq_s8(hi, eight))
    }
    #[inline(always)]
    fn scale_bits(w: &BlockQ4) -> u16 {
        w.d.to_bits()
    }
}

/// Packs block `b` of the rows `w[r]` (`None`: a missing row, packed as zeros).
///
/// # Safety
/// NEON must be available; every present row holds more than `b` blocks.
#[inline(always)]
unsafe fn pack<F: PackFormat>(
    rows: &[Option<&[F::W]>; GROUP_ROWS],
    b: usize,
    out: &mut PackedBlock,
) {
    let zero = vdupq_n_s8(0);
    let mut halves = [(zero, zero); GROUP_ROWS];
    let mut d = [0u16; GROUP_ROWS];
    for (r, row) in rows.iter().enumerate() {
        if let Some(row) = row {
            halves[r] = F::weights(&row[b]);
            d[r] = F::scale_bits(&row[b]);
        }
    }
    let a = interleave([halves[0].0, halves[1].0, halves[2].0, halves[3].0]);
    let c = interleave([halves[0].1, halves[1].1, halves[2].1, halves[3].1]);
    for (k, v) in a.iter().chain(&c).enumerate() {
        vst1q_s8(out.q[k].as_mut_ptr(), *v);
    }
    vst1q_f32(out.d.as_mut_ptr(), f16x4_to_f32(vld1_u16(d.as_ptr())));
}

/// A 4 × 4 transpose of 32-bit groups: vector `k` of the result holds group `k` of each input
/// (four consecutive elements of each of the four rows).
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn interleave(r: [int8x16_t; 4]) -> [int8x16_t; 4] {
    let r = r.map(|v| vreinterpretq_s32_s8(v));
    let t0 = vreinterpretq_s64_s32(vtrn1q_s32(r[0], r[1]));
    let t1 = vreinterpretq_s64_s32(vtrn2q_s32(r[0], r[1]));
    let t2 = vreinterpretq_s64_s32(vtrn1q_s32(r[2], r[3]));
    let t3 = vreinterpretq_s64_s32(vtrn2q_s32(r[2], r[3]));
    [
        vtrn1q_s64(t0, t2),
        vtrn1q_s64(t1, t3),
        vtrn2q_s64(t0, t2),
        vtrn2q_s64(t1, t3),
    ]
    .map(|v| vreinterpretq_s8_s64(v))
}

/// Panels of a prepared batch of `n` tokens: `(first token, tokens, width)`, the width (the
/// tile's) being the tokens rounded up to four; every panel but the last is full.
fn panels(n: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..n).step_by(PANEL).map(move |t0| {
        let tn = PANEL.min(n - t0);
        (t0, tn, tn.next_multiple_of(4))
    })
}

/// Lanes [`prepare`] fills for `n` tokens of `nb` blocks.
pub(super) fn prepared_lanes(n: usize, nb: usize) -> usize {
    (n.next_multiple_of(4) * nb * TOKEN_BLOCK_BYTES).div_ceil(std::mem::size_of::<PrepLane>())
}

/// Lays out `x` (`n · nb` blocks, token-major) in panels of [`PANEL`] tokens for
/// [`matmul_sdot`]: panel by panel, block by block, the panel's scales (`width` f32) then its
/// tokens' 32 values each; a last panel's missing tokens are zeros.
///
/// # Safety
/// NEON must be available.
#[target_feature(enable = "neon")]
pub(super) unsafe fn prepare(x: &[BlockQ8Act], nb: usize, prep: &mut [PrepLane]) {
    let n = x.len() / nb;
    assert!(prep.len() >= prepared_lanes(n, nb), "prepare: room");
    let base = prep.as_mut_ptr().cast::<u8>();
    for (t0, tn, width) in panels(n) {
        // SAFETY: panels before this one are full: its blocks start `t0 · nb` token blocks in,
        // and the room for `n` tokens rounded up to four was checked above.
        let mut p = base.add(t0 * nb * TOKEN_BLOCK_BYTES);
        for b in 0..nb {
            let (d, q) = (p.cast::<f32>(), p.add(4 * width).cast::<i8>());
            for k in 0..width {
                let (scale, lo, hi) = match x.get((t0 + k) * nb + b).filter(|_| k < tn) {
                    Some(xb) => (
                        xb.d,
                        vld1q_s8(xb.qs.as_ptr()),
                        vld1q_s8(xb.qs.as_ptr().add(16)),
                    ),
                    None => (0.0, vdupq_n_s8(0), vdupq_n_s8(0)),
                };
                // SAFETY: the block's `width` scales and `width · 32` values lie within the
                // panel's `width · 36` bytes for block `b` (the room was checked); `p` is
                // 16-byte aligned (lanes are 32-byte aligned, and `width · 36` is a multiple
                // of 16).
                *d.add(k) = scale;
                vst1q_s8(q.add(QK * k), lo);
                vst1q_s8(q.add(QK * k + 16), hi);
            }
            p = p.add(width * TOKEN_BLOCK_BYTES);
        }
    }
}

/// Each group of four rows of `w` (`rows` rows of `nb` blocks) packed a chunk at a time, and
/// `each(chunk, first block, first row, rows in the group)` called with it.
///
/// # Safety
/// NEON must be available; `w.len() == rows · nb`.
#[inline(always)]
unsafe fn by_chunks<F: PackFormat>(
    w: &[F::W],
    nb: usize,
    rows: usize,
    mut each: impl FnMut(&[PackedBlock], usize, usize, usize),
) {
    let mut packed = [EMPTY; CHUNK_BLOCKS];
    for r0 in (0..rows).step_by(GROUP_ROWS) {
        let rg = GROUP_ROWS.min(rows - r0);
        let group: [Option<&[F::W]>; GROUP_ROWS] =
            std::array::from_fn(|k| (k < rg).then(|| &w[(r0 + k) * nb..(r0 + k + 1) * nb]));
        for b0 in (0..nb).step_by(CHUNK_BLOCKS) {
            let blocks = CHUNK_BLOCKS.min(nb - b0);
            for (i, pb) in packed[..blocks].iter_mut().enumerate() {
                pack::<F>(&group, b0 + i, pb);
            }
            each(&packed[..blocks], b0, r0, rg);
        }
    }
}

/// Stores `acc[k]` (rows `r0..r0 + rg` of token `t0 + k`, `k < tn`) into `out` (`(n, rows)`),
/// or adds it to what is there unless `first`.
///
/// # Safety
/// NEON must be available.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn store(
    out: &mut [f32],
    (rows, r0, rg): (usize, usize, usize),
    t0: usize,
    acc: &[float32x4_t],
    tn: usize,
    first: bool,
) {
    for (k, a) in acc[..tn].iter().enumerate() {
        let dst = &mut out[(t0 + k) * rows + r0..][..rg];
        if rg == GROUP_ROWS {
            // SAFETY: `dst` holds four floats.
            let v = if first {
                *a
            } else {
                vaddq_f32(vld1q_f32(dst.as_ptr()), *a)
            };
            vst1q_f32(dst.as_mut_ptr(), v);
        } else {
            let mut lanes = [0f32; GROUP_ROWS];
            vst1q_f32(lanes.as_mut_ptr(), *a);
            for (o, &v) in dst.iter_mut().zip(&lanes) {
                *o = if first { v } else { *o + v };
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `sdot`: four rows × twelve (eight, four) tokens in named registers.
// ---------------------------------------------------------------------------------------------

/// Loads the packed block at `{pw}` into v0–v7 (values) and v8 (scales), advancing `{pw}`.
macro_rules! load_packed {
    () => {
        concat!(
            "ld1 {{v0.16b, v1.16b, v2.16b, v3.16b}}, [{pw}], #64\n",
            "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{pw}], #64\n",
            "ldr q8, [{pw}], #16\n",
        )
    };
}

/// Two tokens of a block against the packed block in v0–v8: loads their values from `{xb}`
/// (advancing it) into v24–v27, sums each token's eight `sdot` in v28 and v29, then adds
/// `d_w · d_x · sum` to the accumulators `v$a0` and `v$a1`, the tokens' scales being lanes `$l0`
/// and `$l1` of `v$dx`. The products `d_w · d_x` go into value registers, free by then.
macro_rules! two_tokens {
    ($dx:literal, $l0:literal, $l1:literal, $a0:literal, $a1:literal) => {
        concat!(
            "ld1 {{v24.16b, v25.16b, v26.16b, v27.16b}}, [{xb}], #64\n",
            "movi v28.4s, #0\n",
            "movi v29.4s, #0\n",
            "sdot v28.4s, v0.16b, v24.4b[0]\n",
            "sdot v29.4s, v0.16b, v26.4b[0]\n",
            "sdot v28.4s, v1.16b, v24.4b[1]\n",
            "sdot v29.4s, v1.16b, v26.4b[1]\n",
            "sdot v28.4s, v2.16b, v24.4b[2]\n",
            "sdot v29.4s, v2.16b, v26.4b[2]\n",
            "sdot v28.4s, v3.16b, v24.4b[3]\n",
            "sdot v29.4s, v3.16b, v26.4b[3]\n",
            "sdot v28.4s, v4.16b, v25.4b[0]\n",
            "sdot v29.4s, v4.16b, v27.4b[0]\n",
            "sdot v28.4s, v5.16b, v25.4b[1]\n",
            "sdot v29.4s, v5.16b, v27.4b[1]\n",
            "sdot v28.4s, v6.16b, v25.4b[2]\n",
            "sdot v29.4s, v6.16b, v27.4b[2]\n",
            "sdot v28.4s, v7.16b, v25.4b[3]\n",
            "sdot v29.4s, v7.16b, v27.4b[3]\n",
            "scvtf v28.4s, v28.4s\n",
            "scvtf v29.4s, v29.4s\n",
            "fmul v24.4s, v8.4s, v",
            $dx,
            ".s[",
            $l0,
            "]\n",
            "fmul v26.4s, v8.4s, v",
            $dx,
            ".s[",
            $l1,
            "]\n",
            "fmla v",
            $a0,
            ".4s, v28.4s, v24.4s\n",
            "fmla v",
            $a1,
            ".4s, v29.4s, v26.4s\n",
        )
    };
}

/// One block of a panel of twelve tokens: the packed block, the twelve scales (v9–v11), then six
/// pairs of tokens into the accumulators v12–v23.
macro_rules! block12 {
    () => {
        concat!(
            load_packed!(),
            "ld1 {{v9.4s, v10.4s, v11.4s}}, [{xb}], #48\n",
            two_tokens!(9, 0, 1, 12, 13),
            two_tokens!(9, 2, 3, 14, 15),
            two_tokens!(10, 0, 1, 16, 17),
            two_tokens!(10, 2, 3, 18, 19),
            two_tokens!(11, 0, 1, 20, 21),
            two_tokens!(11, 2, 3, 22, 23),
        )
    };
}

/// `acc[t]` = rows 0..4 of token `t`: `Σ_b d_w · d_x · (exact block dot)` over the packed
/// blocks and a panel of eight tokens starting at `xb` (at the chunk's first block).
///
/// # Safety
/// The CPU must have `dotprod`; `xb` points at `packed.len()` readable blocks of an eight-token
/// panel as [`prepare`] lays them out; `packed` is not empty.
#[inline(always)]
unsafe fn tile8(packed: &[PackedBlock], xb: *const u8) -> [float32x4_t; 8] {
    let mut acc = [vdupq_n_f32(0.0); 8];
    // SAFETY: the loop reads `packed.len()` packed blocks (144 bytes each) from `pw` and as many
    // panel blocks (8 · 36 bytes each) from `xb`, all readable (the caller's contract); it writes
    // only the named registers.
    asm!(
        "2:",
        load_packed!(),
        "ldp q9, q10, [{xb}], #32",
        two_tokens!(9, 0, 1, 12, 13),
        two_tokens!(9, 2, 3, 14, 15),
        two_tokens!(10, 0, 1, 16, 17),
        two_tokens!(10, 2, 3, 18, 19),
        "subs {blocks}, {blocks}, #1",
        "b.ne 2b",
        pw = inout(reg) packed.as_ptr() => _,
        xb = inout(reg) xb => _,
        blocks = inout(reg) packed.len() => _,
        inout("v12") acc[0],
        inout("v13") acc[1],
        inout("v14") acc[2],
        inout("v15") acc[3],
        inout("v16") acc[4],
        inout("v17") acc[5],
        inout("v18") acc[6],
        inout("v19") acc[7],
        out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
        out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
        out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _,
        options(readonly, nostack)
    );
    acc
}

/// [`tile8`] for a panel of twelve tokens (the rows of a last, partial group; full groups go
/// through [`full_panels`]).
///
/// # Safety
/// As [`tile8`], with a twelve-token panel.
#[inline(always)]
unsafe fn tile12(packed: &[PackedBlock], xb: *const u8) -> [float32x4_t; 12] {
    let mut acc = [vdupq_n_f32(0.0); 12];
    // SAFETY: as in `tile8`, with 12 · 36 bytes per panel block.
    asm!(
        "2:",
        block12!(),
        "subs {blocks}, {blocks}, #1",
        "b.ne 2b",
        pw = inout(reg) packed.as_ptr() => _,
        xb = inout(reg) xb => _,
        blocks = inout(reg) packed.len() => _,
        inout("v12") acc[0],
        inout("v13") acc[1],
        inout("v14") acc[2],
        inout("v15") acc[3],
        inout("v16") acc[4],
        inout("v17") acc[5],
        inout("v18") acc[6],
        inout("v19") acc[7],
        inout("v20") acc[8],
        inout("v21") acc[9],
        inout("v22") acc[10],
        inout("v23") acc[11],
        out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
        out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
        out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _,
        options(readonly, nostack)
    );
    acc
}

/// [`tile8`] for a panel of four tokens.
///
/// # Safety
/// As [`tile8`], with a four-token panel.
#[inline(always)]
unsafe fn tile4(packed: &[PackedBlock], xb: *const u8) -> [float32x4_t; 4] {
    let mut acc = [vdupq_n_f32(0.0); 4];
    // SAFETY: as in `tile8`, with 4 · 36 bytes per panel block.
    asm!(
        "2:",
        load_packed!(),
        "ldr q9, [{xb}], #16",
        two_tokens!(9, 0, 1, 12, 13),
        two_tokens!(9, 2, 3, 14, 15),
        "subs {blocks}, {blocks}, #1",
        "b.ne 2b",
        pw = inout(reg) packed.as_ptr() => _,
        xb = inout(reg) xb => _,
        blocks = inout(reg) packed.len() => _,
        inout("v12") acc[0],
        inout("v13") acc[1],
        inout("v14") acc[2],
        inout("v15") acc[3],
        out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
        out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
        out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _,
        options(readonly, nostack)
    );
    acc
}

/// Four rows × twelve tokens over `panels` full panels, `stride` bytes apart from `px`, written
/// straight into `out` (the four rows' outputs of the first panel's first token, the next
/// token's `row_bytes` further on), or added to what is there unless `first`. One `asm!` loop
/// over the panels, so that a panel costs a few instructions besides its blocks.
///
/// # Safety
/// The CPU must have `dotprod`; `packed` is not empty; each panel holds `packed.len()` readable
/// blocks of twelve tokens as [`prepare`] lays them out; `out` points at four writable floats
/// for each of the `12 · panels` tokens, `row_bytes` apart.
#[inline(always)]
unsafe fn full_panels(
    packed: &[PackedBlock],
    px: *const u8,
    (stride, panels): (usize, usize),
    (out, row_bytes): (*mut f32, usize),
    first: bool,
) {
    // SAFETY: each panel's loop reads `packed.len()` packed blocks (144 bytes each) from `pw`
    // and as many panel blocks (12 · 36 bytes each) from `xb`, all readable, and the stores
    // write the 48 floats of each panel's tokens at `out` (the caller's contract).
    asm!(
        "3:",
        "cbz {first:w}, 4f",
        "movi v12.4s, #0",
        "movi v13.4s, #0",
        "movi v14.4s, #0",
        "movi v15.4s, #0",
        "movi v16.4s, #0",
        "movi v17.4s, #0",
        "movi v18.4s, #0",
        "movi v19.4s, #0",
        "movi v20.4s, #0",
        "movi v21.4s, #0",
        "movi v22.4s, #0",
        "movi v23.4s, #0",
        "b 5f",
        "4:",
        "mov {o}, {out}",
        "ld1 {{v12.4s}}, [{o}], {row}",
        "ld1 {{v13.4s}}, [{o}], {row}",
        "ld1 {{v14.4s}}, [{o}], {row}",
        "ld1 {{v15.4s}}, [{o}], {row}",
        "ld1 {{v16.4s}}, [{o}], {row}",
        "ld1 {{v17.4s}}, [{o}], {row}",
        "ld1 {{v18.4s}}, [{o}], {row}",
        "ld1 {{v19.4s}}, [{o}], {row}",
        "ld1 {{v20.4s}}, [{o}], {row}",
        "ld1 {{v21.4s}}, [{o}], {row}",
        "ld1 {{v22.4s}}, [{o}], {row}",
        "ld1 {{v23.4s}}, [{o}], {row}",
        "5:",
        "mov {pw}, {pk}",
        "mov {xb}, {px}",
        "mov {blocks}, {nblocks}",
        // Two blocks per iteration (one loop count for 192 `sdot`), after a first one alone
        // when the count is odd.
        "tbz {blocks}, #0, 2f",
        block12!(),
        "subs {blocks}, {blocks}, #1",
        "b.eq 6f",
        "2:",
        block12!(),
        block12!(),
        "subs {blocks}, {blocks}, #2",
        "b.ne 2b",
        "6:",
        "st1 {{v12.4s}}, [{out}], {row}",
        "st1 {{v13.4s}}, [{out}], {row}",
        "st1 {{v14.4s}}, [{out}], {row}",
        "st1 {{v15.4s}}, [{out}], {row}",
        "st1 {{v16.4s}}, [{out}], {row}",
        "st1 {{v17.4s}}, [{out}], {row}",
        "st1 {{v18.4s}}, [{out}], {row}",
        "st1 {{v19.4s}}, [{out}], {row}",
        "st1 {{v20.4s}}, [{out}], {row}",
        "st1 {{v21.4s}}, [{out}], {row}",
        "st1 {{v22.4s}}, [{out}], {row}",
        "st1 {{v23.4s}}, [{out}], {row}",
        "add {px}, {px}, {stride}",
        "subs {panels}, {panels}, #1",
        "b.ne 3b",
        pk = in(reg) packed.as_ptr(),
        nblocks = in(reg) packed.len(),
        stride = in(reg) stride,
        row = in(reg) row_bytes,
        first = in(reg) u32::from(first),
        px = inout(reg) px => _,
        panels = inout(reg) panels => _,
        out = inout(reg) out => _,
        pw = out(reg) _,
        xb = out(reg) _,
        blocks = out(reg) _,
        o = out(reg) _,
        out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
        out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
        out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _,
        out("v12") _, out("v13") _, out("v14") _, out("v15") _, out("v16") _, out("v17") _,
        out("v18") _, out("v19") _, out("v20") _, out("v21") _, out("v22") _, out("v23") _,
        options(nostack)
    );
}

/// `out` (`(n, rows)`) = every row of `w` against every token of the batch [`prepare`] laid out
/// in `prep`: each group of four rows packed a chunk at a time, every panel of tokens against the
/// chunk while it is in L1.
///
/// # Safety
/// The CPU must have `dotprod`; `w.len() == rows · nb`, `out.len() == rows · n`, `nb > 0`.
#[inline(always)]
pub(super) unsafe fn matmul_sdot<F: PackFormat>(
    w: &[F::W],
    prep: &[PrepLane],
    nb: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
) {
    assert!(prep.len() >= prepared_lanes(n, nb), "matmul: preparation");
    assert_eq!(out.len(), rows * n, "matmul: output length");
    let base = prep.as_ptr().cast::<u8>();
    by_chunks::<F>(w, nb, rows, |pk, b0, r0, rg| {
        // Full panels of a full group go in one loop, straight into the output; the rest one
        // panel at a time.
        let full = if rg == GROUP_ROWS { n / PANEL } else { 0 };
        if full > 0 {
            // SAFETY: the panels' blocks `b0..` lie within the preparation checked above (see
            // `prepare` for the layout); `pk` holds at least one block; rows `r0..r0 + 4` of
            // the first `12 · full <= n` tokens are in `out`.
            let px = base.add(b0 * PANEL * TOKEN_BLOCK_BYTES);
            let stride = PANEL * nb * TOKEN_BLOCK_BYTES;
            let dst = out.as_mut_ptr().add(r0);
            full_panels(pk, px, (stride, full), (dst, 4 * rows), b0 == 0);
        }
        for (t0, tn, width) in panels(n).skip(full) {
            // SAFETY: as above, for one panel.
            let px = base.add((t0 * nb + b0 * width) * TOKEN_BLOCK_BYTES);
            let at = (rows, r0, rg);
            match width {
                4 => store(out, at, t0, &tile4(pk, px), tn, b0 == 0),
                8 => store(out, at, t0, &tile8(pk, px), tn, b0 == 0),
                _ => store(out, at, t0, &tile12(pk, px), tn, b0 == 0),
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// `smull`/`smlal`: four rows × four tokens from the activation as it is.
// ---------------------------------------------------------------------------------------------

/// Lanes: rows 0..4's exact `Σ_i w[r][i] · x[i]` over the packed block `q`, each group of the
/// token broadcast and multiplied in i16.
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn mull_block(q: &[int8x16_t; 8], x0: int8x16_t, x1: int8x16_t) -> int32x4_t {
    // `lo` lanes hold rows 0, 0, 1, 1 and `hi` rows 2, 2, 3, 3.
    let (mut lo, mut hi) = (vdupq_n_s32(0), vdupq_n_s32(0));
    let x = [vreinterpretq_s32_s8(x0), vreinterpretq_s32_s8(x1)];
    let group = |k: usize| vreinterpretq_s8_s32(broadcast_lane(x[k / 4], k % 4));
    for k in (0..8).step_by(2) {
        let (g0, g1) = (group(k), group(k + 1));
        // Two products per i16 lane, each at most 128 · 127 (activations never hold −128):
        // a lane stays within ±32512.
        let l = vmlal_s8(
            vmull_s8(vget_low_s8(q[k]), vget_low_s8(g0)),
            vget_low_s8(q[k + 1]),
            vget_low_s8(g1),
        );
        let h = vmlal_high_s8(vmull_high_s8(q[k], g0), q[k + 1], g1);
        lo = vpadalq_s16(lo, l);
        hi = vpadalq_s16(hi, h);
    }
    vpaddq_s32(lo, hi)
}

/// Lane `i` (a constant after unrolling) of `v` in every lane.
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn broadcast_lane(v: int32x4_t, i: usize) -> int32x4_t {
    match i {
        0 => vdupq_laneq_s32::<0>(v),
        1 => vdupq_laneq_s32::<1>(v),
        2 => vdupq_laneq_s32::<2>(v),
        _ => vdupq_laneq_s32::<3>(v),
    }
}

/// The packed chunk (blocks `b0..`) of rows `r0..r0 + rg` against tokens `t0..t0 + T` of `x`
/// (`nb` blocks each), stored into `out` (`(n, rows)`).
///
/// # Safety
/// NEON must be available; `x` holds `(t0 + T) · nb` blocks and `b0 + packed.len() <= nb`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn mull_tokens<const T: usize>(
    packed: &[PackedBlock],
    x: &[BlockQ8Act],
    nb: usize,
    b0: usize,
    t0: usize,
    out: &mut [f32],
    at: (usize, usize, usize),
) {
    let mut xs: [&[BlockQ8Act]; T] =
        std::array::from_fn(|k| &x[(t0 + k) * nb + b0..(t0 + k + 1) * nb]);
    let mut acc = [vdupq_n_f32(0.0); T];
    for pb in packed {
        let q: [int8x16_t; 8] = std::array::from_fn(|k| vld1q_s8(pb.q[k].as_ptr()));
        let dw = vld1q_f32(pb.d.as_ptr());
        for t in 0..T {
            let (xb, rest) = xs[t].split_first().unwrap_unchecked();
            xs[t] = rest;
            let p = xb.qs.as_ptr();
            let sums = mull_block(&q, vld1q_s8(p), vld1q_s8(p.add(16)));
            // Block sums are at most 32 · 128² = 2^19 in magnitude: exact in f32.
            acc[t] = vfmaq_f32(acc[t], vcvtq_f32_s32(sums), vmulq_n_f32(dw, xb.d));
        }
    }
    store(out, at, t0, &acc, T, b0 == 0);
}

/// `out` (`(n, rows)`) = every row of `w` against every token of `x`, four tokens per pass over
/// a packed chunk.
///
/// # Safety
/// NEON must be available; `w.len() == rows · nb`, `x.len() == n · nb`,
/// `out.len() == rows · n`.
#[inline(always)]
pub(super) unsafe fn matmul_mull<F: PackFormat>(
    w: &[F::W],
    x: &[BlockQ8Act],
    nb: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
) {
    by_chunks::<F>(w, nb, rows, |pk, b0, r0, rg| {
        let at = (rows, r0, rg);
        let mut t0 = 0;
        while t0 + 4 <= n {
            mull_tokens::<4>(pk, x, nb, b0, t0, out, at);
            t0 += 4;
        }
        match n - t0 {
            1 => mull_tokens::<1>(pk, x, nb, b0, t0, out, at),
            2 => mull_tokens::<2>(pk, x, nb, b0, t0, out, at),
            3 => mull_tokens::<3>(pk, x, nb, b0, t0, out, at),
            _ => {}
        }
    });
}

const _: () = assert!(std::mem::size_of::<PackedBlock>() == 8 * 16 + 4 * GROUP_ROWS);
const _: () = assert!(QK == 32);
const _: () = assert!(PANEL == 12);
