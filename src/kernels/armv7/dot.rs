//! The integer dot products of q8/q4 weight blocks with int8 activation blocks, as NEON `asm!`
//! loops over a row's blocks (stable Rust has no 32-bit ARM NEON intrinsics).
//!
//! Per block, the 32 int8 products are widened to int16 (`vmull.s8`/`vmlal.s8`) and
//! pairwise-added into four int32 lanes (`vpaddl`/`vpadal`), so every block's integer sum is
//! exact; then one float multiply-add of `d_w · d_x · sum` per block. The four-row kernels share
//! each activation block's load among four weight rows and reduce the rows' lanes with `vpadd`
//! into one vector, so the scales of four rows are converted (`vcvt.f32.f16`, VFPv4) and applied
//! at once; for a batch, the four-row-by-two-token kernels also share each weight block (and its
//! q4 unpacking) between two tokens.
//!
//! Exactness of q8: two products share an int16 lane, which holds every sum of two int8 products
//! except `(−128)·(−128) + (−128)·(−128)`. Activations come from `quantize_act`, whose codes are
//! within `−127..=127`, so every weight byte (even an out-of-format −128) gives the exact sum.
//! q4 weights are within `−8..=7` after the offset, so four products share a lane (at most 4096).
//!
//! NEON arithmetic flushes subnormal floats to zero: a block whose `d_w · d_x` is below
//! 2⁻¹²⁶ contributes 0 where the scalar twin adds a value below 2⁻¹²⁶ · 2¹⁹ = 2⁻¹⁰⁷.
//! Registers are used freely: every one is declared clobbered.

use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act};

/// The end of a four-row block: the rows' int32 lanes in q0..q3 summed into q0 (lane `i` = row
/// `i`), times the rows' scales (d8, f16) times `d_x` (d9[0]), added to q6.
macro_rules! reduce_scale_4 {
    () => {
        concat!(
            "vpadd.i32 d0, d0, d1\n",
            "vpadd.i32 d1, d2, d3\n",
            "vpadd.i32 d2, d4, d5\n",
            "vpadd.i32 d3, d6, d7\n",
            "vpadd.i32 d0, d0, d1\n",
            "vpadd.i32 d1, d2, d3\n",
            // Block sums are at most 32 · 128² = 2^19 in magnitude: exact in f32.
            "vcvt.f32.s32 q0, q0\n",
            "vcvt.f32.f16 q5, d8\n",
            "vmul.f32 q5, q5, d9[0]\n",
            "vmla.f32 q6, q0, q5",
        )
    };
}

/// The end of a one-row block: q0's int32 lanes times `d_w` (d8[0], f16) times `d_x` (d9[0]),
/// added to q6.
macro_rules! scale_1 {
    () => {
        concat!(
            "vcvt.f32.f16 q5, d8\n",
            "vmul.f32 d10, d10, d9[0]\n",
            "vcvt.f32.s32 q0, q0\n",
            "vmla.f32 q6, q0, d10[0]",
        )
    };
}

/// q6's four lanes summed into s24.
macro_rules! sum_lanes {
    () => {
        concat!("vadd.f32 d12, d12, d13\n", "vpadd.f32 d12, d12, d12",)
    };
}

/// Four q8 rows against one token: lane `i` is `Σ_b d_w[i][b] · d_x[b] · Σ_k q_w[i][b][k] ·
/// q_x[b][k]`.
///
/// # Safety
/// The CPU must have NEON and VFPv4; `nb ≥ 1`; each of `w` and `x` points at `nb` readable
/// consecutive blocks.
#[inline]
pub(super) unsafe fn rows4_q8(w: [*const BlockQ8; 4], x: *const BlockQ8Act, nb: usize) -> [f32; 4] {
    let (r0, r1, r2, r3): (f32, f32, f32, f32);
    // SAFETY: the caller guarantees NEON/VFPv4 and `nb ≥ 1` readable blocks behind every
    // pointer; the loop reads exactly `nb` blocks from each (the pointers advance by one block
    // per iteration) and writes only the declared registers.
    neon_asm!(
        ".fpu neon-vfpv4",
        "vmov.i32 q6, #0",
        "2:",
        // d9[0] = d_x, q10:q11 = q_x; d8[i] = d_w of row i; rows alternate between q12:q13 and
        // q8:q9 so a row loads while the previous one multiplies.
        "vld1.32 {{d9[0]}}, [{x}]!",
        "vld1.8 {{d20-d23}}, [{x}]!",
        "vld1.16 {{d8[0]}}, [{w0}]!",
        "vld1.8 {{d24-d27}}, [{w0}]!",
        "vld1.16 {{d8[1]}}, [{w1}]!",
        "vld1.8 {{d16-d19}}, [{w1}]!",
        "vmull.s8 q14, d24, d20",
        "vmlal.s8 q14, d25, d21",
        "vmull.s8 q15, d26, d22",
        "vmlal.s8 q15, d27, d23",
        "vpaddl.s16 q0, q14",
        "vpadal.s16 q0, q15",
        "vld1.16 {{d8[2]}}, [{w2}]!",
        "vld1.8 {{d24-d27}}, [{w2}]!",
        "vmull.s8 q14, d16, d20",
        "vmlal.s8 q14, d17, d21",
        "vmull.s8 q15, d18, d22",
        "vmlal.s8 q15, d19, d23",
        "vpaddl.s16 q1, q14",
        "vpadal.s16 q1, q15",
        "vld1.16 {{d8[3]}}, [{w3}]!",
        "vld1.8 {{d16-d19}}, [{w3}]!",
        "vmull.s8 q14, d24, d20",
        "vmlal.s8 q14, d25, d21",
        "vmull.s8 q15, d26, d22",
        "vmlal.s8 q15, d27, d23",
        "vpaddl.s16 q2, q14",
        "vpadal.s16 q2, q15",
        "vmull.s8 q14, d16, d20",
        "vmlal.s8 q14, d17, d21",
        "vmull.s8 q15, d18, d22",
        "vmlal.s8 q15, d19, d23",
        "vpaddl.s16 q3, q14",
        "vpadal.s16 q3, q15",
        reduce_scale_4!(),
        "subs {n}, {n}, #1",
        "bne 2b",
        "vmov q0, q6",
        ".fpu vfpv3",
        x = inout(reg) x => _,
        w0 = inout(reg) w[0] => _,
        w1 = inout(reg) w[1] => _,
        w2 = inout(reg) w[2] => _,
        w3 = inout(reg) w[3] => _,
        n = inout(reg) nb => _,
        out("s0") r0, out("s1") r1, out("s2") r2, out("s3") r3,
        options(pure, readonly, nostack),
    );
    [r0, r1, r2, r3]
}

/// Four q4 rows against one token: lane `i` is `Σ_b d_w[i][b] · d_x[b] · Σ_k (q_w[i][b][k] − 8)
/// · q_x[b][k]`.
///
/// # Safety
/// As [`rows4_q8`].
#[inline]
pub(super) unsafe fn rows4_q4(w: [*const BlockQ4; 4], x: *const BlockQ8Act, nb: usize) -> [f32; 4] {
    let (r0, r1, r2, r3): (f32, f32, f32, f32);
    // SAFETY: as in `rows4_q8` (q4 blocks are 18 bytes: a 2-byte scale, 16 bytes of nibbles).
    neon_asm!(
        ".fpu neon-vfpv4",
        "vmov.i32 q6, #0",
        "vmov.i8 q7, #0x0f",
        "vmov.i8 q9, #8",
        "2:",
        // d9[0] = d_x, q10:q11 = q_x; d8[i] = d_w of row i; the nibbles of rows alternate
        // between q12 and q8. Low nibbles (elements 0..16) meet q10, high ones q11.
        "vld1.32 {{d9[0]}}, [{x}]!",
        "vld1.8 {{d20-d23}}, [{x}]!",
        "vld1.16 {{d8[0]}}, [{w0}]!",
        "vld1.8 {{d24-d25}}, [{w0}]!",
        "vld1.16 {{d8[1]}}, [{w1}]!",
        "vld1.8 {{d16-d17}}, [{w1}]!",
        "vand q13, q12, q7",
        "vshr.u8 q12, q12, #4",
        "vsub.i8 q13, q13, q9",
        "vsub.i8 q12, q12, q9",
        "vmull.s8 q14, d26, d20",
        "vmlal.s8 q14, d27, d21",
        "vmlal.s8 q14, d24, d22",
        "vmlal.s8 q14, d25, d23",
        "vpaddl.s16 q0, q14",
        "vld1.16 {{d8[2]}}, [{w2}]!",
        "vld1.8 {{d24-d25}}, [{w2}]!",
        "vand q13, q8, q7",
        "vshr.u8 q8, q8, #4",
        "vsub.i8 q13, q13, q9",
        "vsub.i8 q8, q8, q9",
        "vmull.s8 q15, d26, d20",
        "vmlal.s8 q15, d27, d21",
        "vmlal.s8 q15, d16, d22",
        "vmlal.s8 q15, d17, d23",
        "vpaddl.s16 q1, q15",
        "vld1.16 {{d8[3]}}, [{w3}]!",
        "vld1.8 {{d16-d17}}, [{w3}]!",
        "vand q13, q12, q7",
        "vshr.u8 q12, q12, #4",
        "vsub.i8 q13, q13, q9",
        "vsub.i8 q12, q12, q9",
        "vmull.s8 q14, d26, d20",
        "vmlal.s8 q14, d27, d21",
        "vmlal.s8 q14, d24, d22",
        "vmlal.s8 q14, d25, d23",
        "vpaddl.s16 q2, q14",
        "vand q13, q8, q7",
        "vshr.u8 q8, q8, #4",
        "vsub.i8 q13, q13, q9",
        "vsub.i8 q8, q8, q9",
        "vmull.s8 q15, d26, d20",
        "vmlal.s8 q15, d27, d21",
        "vmlal.s8 q15, d16, d22",
        "vmlal.s8 q15, d17, d23",
        "vpaddl.s16 q3, q15",
        reduce_scale_4!(),
        "subs {n}, {n}, #1",
        "bne 2b",
        "vmov q0, q6",
        ".fpu vfpv3",
        x = inout(reg) x => _,
        w0 = inout(reg) w[0] => _,
        w1 = inout(reg) w[1] => _,
        w2 = inout(reg) w[2] => _,
        w3 = inout(reg) w[3] => _,
        n = inout(reg) nb => _,
        out("s0") r0, out("s1") r1, out("s2") r2, out("s3") r3,
        options(pure, readonly, nostack),
    );
    [r0, r1, r2, r3]
}

/// Four q8 rows against two tokens: `out[t][i] = Σ_b d_w[i][b] · d_x[t][b] · Σ_k q_w[i][b][k] · q_x[t][b][k]`.
/// Every weight block serves both tokens, so prefill loads (and unpacks) each once per pair.
///
/// # Safety
/// The CPU must have NEON and VFPv4; `nb ≥ 1`; each of `w`, `x[0]` and `x[1]` points at `nb`
/// readable consecutive blocks.
#[inline]
pub(super) unsafe fn rows4x2_q8(
    w: [*const BlockQ8; 4],
    x: [*const BlockQ8Act; 2],
    nb: usize,
) -> [[f32; 4]; 2] {
    let mut out = [[0f32; 4]; 2];
    // SAFETY: as in `rows4_q8`, with two activation rows; writes the 32 bytes of `out`.
    neon_asm!(
        ".fpu neon-vfpv4",
        "vmov.i32 q0, #0",
        "vmov.i32 q1, #0",
        "2:",
        // d5 = (d_x of token 0, of token 1), d4[i] = d_w of row i; d20-d27 = the two tokens'
        // codes; each row is loaded into q8:q9 and meets both tokens.
        // Row i's sums with token t are pairwise-added into d(8 + 4t + i).
        "vld1.32 {{d5[0]}}, [{x0}]!",
        "vld1.8 {{d20-d23}}, [{x0}]!",
        "vld1.32 {{d5[1]}}, [{x1}]!",
        "vld1.8 {{d24-d27}}, [{x1}]!",
        "vld1.16 {{d4[0]}}, [{w0}]!",
        "vld1.8 {{d16-d19}}, [{w0}]!",
        "vmull.s8 q14, d16, d20",
        "vmlal.s8 q14, d17, d21",
        "vmull.s8 q15, d18, d22",
        "vmlal.s8 q15, d19, d23",
        "vpaddl.s16 q3, q14",
        "vpadal.s16 q3, q15",
        "vpadd.i32 d8, d6, d7",
        "vmull.s8 q14, d16, d24",
        "vmlal.s8 q14, d17, d25",
        "vmull.s8 q15, d18, d26",
        "vmlal.s8 q15, d19, d27",
        "vpaddl.s16 q3, q14",
        "vpadal.s16 q3, q15",
        "vpadd.i32 d12, d6, d7",
        "vld1.16 {{d4[1]}}, [{w1}]!",
        "vld1.8 {{d16-d19}}, [{w1}]!",
        "vmull.s8 q14, d16, d20",
        "vmlal.s8 q14, d17, d21",
        "vmull.s8 q15, d18, d22",
        "vmlal.s8 q15, d19, d23",
        "vpaddl.s16 q3, q14",
        "vpadal.s16 q3, q15",
        "vpadd.i32 d9, d6, d7",
        "vmull.s8 q14, d16, d24",
        "vmlal.s8 q14, d17, d25",
        "vmull.s8 q15, d18, d26",
        "vmlal.s8 q15, d19, d27",
        "vpaddl.s16 q3, q14",
        "vpadal.s16 q3, q15",
        "vpadd.i32 d13, d6, d7",
        "vld1.16 {{d4[2]}}, [{w2}]!",
        "vld1.8 {{d16-d19}}, [{w2}]!",
        "vmull.s8 q14, d16, d20",
        "vmlal.s8 q14, d17, d21",
        "vmull.s8 q15, d18, d22",
        "vmlal.s8 q15, d19, d23",
        "vpaddl.s16 q3, q14",
        "vpadal.s16 q3, q15",
        "vpadd.i32 d10, d6, d7",
        "vmull.s8 q14, d16, d24",
        "vmlal.s8 q14, d17, d25",
        "vmull.s8 q15, d18, d26",
        "vmlal.s8 q15, d19, d27",
        "vpaddl.s16 q3, q14",
        "vpadal.s16 q3, q15",
        "vpadd.i32 d14, d6, d7",
        "vld1.16 {{d4[3]}}, [{w3}]!",
        "vld1.8 {{d16-d19}}, [{w3}]!",
        "vmull.s8 q14, d16, d20",
        "vmlal.s8 q14, d17, d21",
        "vmull.s8 q15, d18, d22",
        "vmlal.s8 q15, d19, d23",
        "vpaddl.s16 q3, q14",
        "vpadal.s16 q3, q15",
        "vpadd.i32 d11, d6, d7",
        "vmull.s8 q14, d16, d24",
        "vmlal.s8 q14, d17, d25",
        "vmull.s8 q15, d18, d26",
        "vmlal.s8 q15, d19, d27",
        "vpaddl.s16 q3, q14",
        "vpadal.s16 q3, q15",
        "vpadd.i32 d15, d6, d7",
        // q4 = token 0's four row sums, q5 = token 1's.
        "vpadd.i32 d8, d8, d9",
        "vpadd.i32 d9, d10, d11",
        "vpadd.i32 d10, d12, d13",
        "vpadd.i32 d11, d14, d15",
        "vcvt.f32.s32 q4, q4",
        "vcvt.f32.s32 q5, q5",
        "vcvt.f32.f16 q3, d4",
        "vmul.f32 q6, q3, d5[0]",
        "vmul.f32 q7, q3, d5[1]",
        "vmla.f32 q0, q4, q6",
        "vmla.f32 q1, q5, q7",
        "subs {n}, {n}, #1",
        "bne 2b",
        "vst1.32 {{d0-d3}}, [{out}]",
        ".fpu vfpv3",
        x0 = inout(reg) x[0] => _,
        x1 = inout(reg) x[1] => _,
        w0 = inout(reg) w[0] => _,
        w1 = inout(reg) w[1] => _,
        w2 = inout(reg) w[2] => _,
        w3 = inout(reg) w[3] => _,
        n = inout(reg) nb => _,
        out = in(reg) out.as_mut_ptr(),
        out("d0") _, out("d1") _,
        options(nostack),
    );
    out
}

/// Four q4 rows against two tokens: `out[t][i] = Σ_b d_w[i][b] · d_x[t][b] · Σ_k (q_w[i][b][k] − 8) · q_x[t][b][k]`.
/// Every weight block serves both tokens, so prefill loads (and unpacks) each once per pair.
///
/// # Safety
/// The CPU must have NEON and VFPv4; `nb ≥ 1`; each of `w`, `x[0]` and `x[1]` points at `nb`
/// readable consecutive blocks.
#[inline]
pub(super) unsafe fn rows4x2_q4(
    w: [*const BlockQ4; 4],
    x: [*const BlockQ8Act; 2],
    nb: usize,
) -> [[f32; 4]; 2] {
    let mut out = [[0f32; 4]; 2];
    // SAFETY: as in `rows4_q4`, with two activation rows; writes the 32 bytes of `out`.
    neon_asm!(
        ".fpu neon-vfpv4",
        "vmov.i32 q0, #0",
        "vmov.i32 q1, #0",
        // (byte ^ 0x88) holds both nibbles as signed 4-bit `q − 8`: an arithmetic shift right
        // extends the high one, a shift left and back the low one.
        "vmov.i8 q15, #0x88",
        "2:",
        // d5 = (d_x of token 0, of token 1), d4[i] = d_w of row i; d20-d27 = the two tokens'
        // codes; each row's nibbles are unpacked into q9 (elements 0..16) and q8 (16..32) and
        // meet both tokens.
        // Row i's sums with token t are pairwise-added into d(8 + 4t + i).
        "vld1.32 {{d5[0]}}, [{x0}]!",
        "vld1.8 {{d20-d23}}, [{x0}]!",
        "vld1.32 {{d5[1]}}, [{x1}]!",
        "vld1.8 {{d24-d27}}, [{x1}]!",
        "vld1.16 {{d4[0]}}, [{w0}]!",
        "vld1.8 {{d16-d17}}, [{w0}]!",
        "veor q8, q8, q15",
        "vshl.i8 q9, q8, #4",
        "vshr.s8 q9, q9, #4",
        "vshr.s8 q8, q8, #4",
        "vmull.s8 q14, d18, d20",
        "vmlal.s8 q14, d19, d21",
        "vmlal.s8 q14, d16, d22",
        "vmlal.s8 q14, d17, d23",
        "vpaddl.s16 q3, q14",
        "vpadd.i32 d8, d6, d7",
        "vmull.s8 q14, d18, d24",
        "vmlal.s8 q14, d19, d25",
        "vmlal.s8 q14, d16, d26",
        "vmlal.s8 q14, d17, d27",
        "vpaddl.s16 q3, q14",
        "vpadd.i32 d12, d6, d7",
        "vld1.16 {{d4[1]}}, [{w1}]!",
        "vld1.8 {{d16-d17}}, [{w1}]!",
        "veor q8, q8, q15",
        "vshl.i8 q9, q8, #4",
        "vshr.s8 q9, q9, #4",
        "vshr.s8 q8, q8, #4",
        "vmull.s8 q14, d18, d20",
        "vmlal.s8 q14, d19, d21",
        "vmlal.s8 q14, d16, d22",
        "vmlal.s8 q14, d17, d23",
        "vpaddl.s16 q3, q14",
        "vpadd.i32 d9, d6, d7",
        "vmull.s8 q14, d18, d24",
        "vmlal.s8 q14, d19, d25",
        "vmlal.s8 q14, d16, d26",
        "vmlal.s8 q14, d17, d27",
        "vpaddl.s16 q3, q14",
        "vpadd.i32 d13, d6, d7",
        "vld1.16 {{d4[2]}}, [{w2}]!",
        "vld1.8 {{d16-d17}}, [{w2}]!",
        "veor q8, q8, q15",
        "vshl.i8 q9, q8, #4",
        "vshr.s8 q9, q9, #4",
        "vshr.s8 q8, q8, #4",
        "vmull.s8 q14, d18, d20",
        "vmlal.s8 q14, d19, d21",
        "vmlal.s8 q14, d16, d22",
        "vmlal.s8 q14, d17, d23",
        "vpaddl.s16 q3, q14",
        "vpadd.i32 d10, d6, d7",
        "vmull.s8 q14, d18, d24",
        "vmlal.s8 q14, d19, d25",
        "vmlal.s8 q14, d16, d26",
        "vmlal.s8 q14, d17, d27",
        "vpaddl.s16 q3, q14",
        "vpadd.i32 d14, d6, d7",
        "vld1.16 {{d4[3]}}, [{w3}]!",
        "vld1.8 {{d16-d17}}, [{w3}]!",
        "veor q8, q8, q15",
        "vshl.i8 q9, q8, #4",
        "vshr.s8 q9, q9, #4",
        "vshr.s8 q8, q8, #4",
        "vmull.s8 q14, d18, d20",
        "vmlal.s8 q14, d19, d21",
        "vmlal.s8 q14, d16, d22",
        "vmlal.s8 q14, d17, d23",
        "vpaddl.s16 q3, q14",
        "vpadd.i32 d11, d6, d7",
        "vmull.s8 q14, d18, d24",
        "vmlal.s8 q14, d19, d25",
        "vmlal.s8 q14, d16, d26",
        "vmlal.s8 q14, d17, d27",
        "vpaddl.s16 q3, q14",
        "vpadd.i32 d15, d6, d7",
        // q4 = token 0's four row sums, q5 = token 1's.
        "vpadd.i32 d8, d8, d9",
        "vpadd.i32 d9, d10, d11",
        "vpadd.i32 d10, d12, d13",
        "vpadd.i32 d11, d14, d15",
        "vcvt.f32.s32 q4, q4",
        "vcvt.f32.s32 q5, q5",
        "vcvt.f32.f16 q3, d4",
        "vmul.f32 q6, q3, d5[0]",
        "vmul.f32 q7, q3, d5[1]",
        "vmla.f32 q0, q4, q6",
        "vmla.f32 q1, q5, q7",
        "subs {n}, {n}, #1",
        "bne 2b",
        "vst1.32 {{d0-d3}}, [{out}]",
        ".fpu vfpv3",
        x0 = inout(reg) x[0] => _,
        x1 = inout(reg) x[1] => _,
        w0 = inout(reg) w[0] => _,
        w1 = inout(reg) w[1] => _,
        w2 = inout(reg) w[2] => _,
        w3 = inout(reg) w[3] => _,
        n = inout(reg) nb => _,
        out = in(reg) out.as_mut_ptr(),
        out("d0") _, out("d1") _,
        options(nostack),
    );
    out
}

/// One q8 row against one token: `Σ_b d_w[b] · d_x[b] · Σ_k q_w[b][k] · q_x[b][k]`.
///
/// # Safety
/// The CPU must have NEON and VFPv4; `nb ≥ 1`; `w` and `x` each point at `nb` readable
/// consecutive blocks.
#[inline]
pub(super) unsafe fn row_q8(w: *const BlockQ8, x: *const BlockQ8Act, nb: usize) -> f32 {
    let r: f32;
    // SAFETY: as in `rows4_q8`, for one row.
    neon_asm!(
        ".fpu neon-vfpv4",
        "vmov.i32 q6, #0",
        "2:",
        "vld1.32 {{d9[0]}}, [{x}]!",
        "vld1.8 {{d20-d23}}, [{x}]!",
        "vld1.16 {{d8[0]}}, [{w}]!",
        "vld1.8 {{d24-d27}}, [{w}]!",
        "vmull.s8 q14, d24, d20",
        "vmlal.s8 q14, d25, d21",
        "vmull.s8 q15, d26, d22",
        "vmlal.s8 q15, d27, d23",
        "vpaddl.s16 q0, q14",
        "vpadal.s16 q0, q15",
        scale_1!(),
        "subs {n}, {n}, #1",
        "bne 2b",
        sum_lanes!(),
        "vmov.f32 s0, s24",
        ".fpu vfpv3",
        x = inout(reg) x => _,
        w = inout(reg) w => _,
        n = inout(reg) nb => _,
        out("s0") r, out("s1") _, out("d1") _,
        options(pure, readonly, nostack),
    );
    r
}

/// One q4 row against one token: `Σ_b d_w[b] · d_x[b] · Σ_k (q_w[b][k] − 8) · q_x[b][k]`.
///
/// # Safety
/// As [`row_q8`].
#[inline]
pub(super) unsafe fn row_q4(w: *const BlockQ4, x: *const BlockQ8Act, nb: usize) -> f32 {
    let r: f32;
    // SAFETY: as in `rows4_q4`, for one row.
    neon_asm!(
        ".fpu neon-vfpv4",
        "vmov.i32 q6, #0",
        "vmov.i8 q7, #0x0f",
        "vmov.i8 q9, #8",
        "2:",
        "vld1.32 {{d9[0]}}, [{x}]!",
        "vld1.8 {{d20-d23}}, [{x}]!",
        "vld1.16 {{d8[0]}}, [{w}]!",
        "vld1.8 {{d24-d25}}, [{w}]!",
        "vand q13, q12, q7",
        "vshr.u8 q12, q12, #4",
        "vsub.i8 q13, q13, q9",
        "vsub.i8 q12, q12, q9",
        "vmull.s8 q14, d26, d20",
        "vmlal.s8 q14, d27, d21",
        "vmlal.s8 q14, d24, d22",
        "vmlal.s8 q14, d25, d23",
        "vpaddl.s16 q0, q14",
        scale_1!(),
        "subs {n}, {n}, #1",
        "bne 2b",
        sum_lanes!(),
        "vmov.f32 s0, s24",
        ".fpu vfpv3",
        x = inout(reg) x => _,
        w = inout(reg) w => _,
        n = inout(reg) nb => _,
        out("s0") r, out("s1") _, out("d1") _,
        options(pure, readonly, nostack),
    );
    r
}
