//! 32-bit ARM (armv7, e.g. 32-bit Raspberry Pi OS) NEON kernels: activation quantisation and
//! the q8/q4 tile products, which are nearly all of a token's work; GELU; and the f16 KV cache's
//! `dot_f16`/`axpy_f16`, whose work grows with the context. The other float entries (layer norm,
//! softmax, `add_assign`, `axpy`, `dot_f32`) stay the [`scalar`](super::scalar) twins: together
//! they are about 2% of a decoded token here. GELU's agreement test is the dispatched table's in
//! `kernels::tests`, which runs this table on an emulated Cortex-A7.
//!
//! Stable Rust has neither 32-bit NEON intrinsics nor `#[target_feature(enable = "neon")]` on
//! this architecture (both unstable as of Rust 1.95), and the `armv7-unknown-linux-gnueabihf`
//! baseline has no NEON, so the kernels are `asm!` loops ([`dot`], [`quantize`], [`float`]) that
//! switch the assembler to NEON themselves. [`ops`] hands them out only when the kernel reports
//! NEON and VFPv4 (whose half-precision conversion widens f16 scales and values) in `AT_HWCAP`:
//! every Raspberry Pi since the Pi 2 (Cortex-A7, A53, A72, A76 in 32-bit mode); a CPU without
//! them keeps the scalar table.
//!
//! This module owns the detection, the safe wrappers (the scalar twins' length checks) and the
//! loops over rows and tokens; the `asm!` lives in the submodules.

/// `asm!` with the NEON/VFP registers `d2`–`d31` declared clobbered, so a kernel may use any of
/// them; each kernel names `d0`/`d1` itself (as outputs `s0`–`s3` or clobbers). The registers are
/// named one by one: this target's compiler has no `neon` feature, so it silently ignores clobbers
/// of `q` registers, and `clobber_abi` would not allow the kernels' generic register operands.
/// The template switches the assembler to NEON itself (`.fpu neon` or `.fpu neon-vfpv4`) and
/// back at its end (`.fpu vfpv3`), so that the object's build attributes keep naming the target's
/// baseline (no NEON) rather than the last kernel's instruction set.
macro_rules! neon_asm {
    ($($body:tt)*) => {
        std::arch::asm!(
            $($body)*
            out("d2") _, out("d3") _, out("d4") _, out("d5") _,
            out("d6") _, out("d7") _, out("d8") _, out("d9") _,
            out("d10") _, out("d11") _, out("d12") _, out("d13") _,
            out("d14") _, out("d15") _, out("d16") _, out("d17") _,
            out("d18") _, out("d19") _, out("d20") _, out("d21") _,
            out("d22") _, out("d23") _, out("d24") _, out("d25") _,
            out("d26") _, out("d27") _, out("d28") _, out("d29") _,
            out("d30") _, out("d31") _,
        )
    };
}

mod dot;
mod float;
mod quantize;

use std::ffi::c_ulong;

use half::f16;

use super::{KernelPath, Ops};
use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act, QK};

/// `AT_HWCAP` in the auxiliary vector (`<elf.h>`).
const AT_HWCAP: c_ulong = 16;
/// `HWCAP_NEON` (Linux `arch/arm/include/uapi/asm/hwcap.h`).
const HWCAP_NEON: c_ulong = 1 << 12;
/// `HWCAP_VFPv4`: fused multiply-add and the half-precision conversions.
const HWCAP_VFPV4: c_ulong = 1 << 16;

extern "C" {
    /// glibc (2.16+), musl and bionic: a value of the process's auxiliary vector, 0 if absent.
    fn getauxval(kind: c_ulong) -> c_ulong;
}

/// The CPU's `AT_HWCAP` bits as the kernel reports them.
fn hwcap() -> c_ulong {
    // SAFETY: `getauxval` takes and returns plain integers and only reads the auxiliary vector
    // the kernel gave the process; every libc these targets link provides it.
    unsafe { getauxval(AT_HWCAP) }
}

/// Whether the kernels of this module can run here.
fn has_neon_vfpv4() -> bool {
    let caps = hwcap();
    caps & HWCAP_NEON != 0 && caps & HWCAP_VFPV4 != 0
}

/// The NEON table if the CPU has NEON and VFPv4, else `None` (the caller keeps scalar).
pub(super) fn ops() -> Option<Ops> {
    has_neon_vfpv4().then(|| Ops {
        path: KernelPath::Armv7Neon,
        quantize_act,
        dot_q8,
        dot_q4,
        dot_f16,
        matmul_q8,
        matmul_q4,
        axpy_f16,
        gelu_tanh,
        ..super::scalar::ops()
    })
}

// ---------------------------------------------------------------------------------------------
// Safe wrappers: the scalar twins' checks, then the kernels. Only reachable through the table
// `ops` builds after detecting NEON and VFPv4 (and from tests that detect them first).
// ---------------------------------------------------------------------------------------------

/// Quantises activations per block of 32, bit-identical to [`super::scalar::quantize_act`].
fn quantize_act(x: &[f32], out: &mut [BlockQ8Act]) {
    assert_eq!(x.len(), out.len() * QK, "quantize_act: lengths");
    debug_assert!(has_neon_vfpv4());
    // SAFETY: NEON was detected before this function was handed out; lengths checked above.
    unsafe { quantize::quantize_act(x, out) }
}

/// q8 · activations.
fn dot_q8(w: &[BlockQ8], x: &[BlockQ8Act]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_q8: lengths");
    debug_assert!(has_neon_vfpv4());
    if w.is_empty() {
        return 0.0;
    }
    // SAFETY: NEON and VFPv4 were detected before this function was handed out; both slices
    // hold `w.len() ≥ 1` blocks.
    unsafe { dot::row_q8(w.as_ptr(), x.as_ptr(), w.len()) }
}

/// q4 · activations.
fn dot_q4(w: &[BlockQ4], x: &[BlockQ8Act]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_q4: lengths");
    debug_assert!(has_neon_vfpv4());
    if w.is_empty() {
        return 0.0;
    }
    // SAFETY: as in `dot_q8`.
    unsafe { dot::row_q4(w.as_ptr(), x.as_ptr(), w.len()) }
}

/// f16 weights · f32 inputs.
fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_f16: lengths");
    debug_assert!(has_neon_vfpv4());
    // SAFETY: NEON and VFPv4 were detected; the lengths are equal.
    unsafe { float::dot_f16(w, x) }
}

/// `acc += s · x` with f16 `x`, bit-identical to the scalar twin.
fn axpy_f16(acc: &mut [f32], s: f32, x: &[f16]) {
    assert_eq!(acc.len(), x.len(), "axpy_f16: lengths");
    debug_assert!(has_neon_vfpv4());
    // SAFETY: NEON and VFPv4 were detected; the lengths are equal.
    unsafe { float::axpy_f16(acc, s, x) }
}

/// GELU (tanh form) in place.
fn gelu_tanh(x: &mut [f32]) {
    debug_assert!(has_neon_vfpv4());
    // SAFETY: NEON and VFPv4 were detected before this function was handed out.
    unsafe { float::gelu_tanh(x) }
}

/// Rows × tokens of q8.
fn matmul_q8(w: &[BlockQ8], x: &[BlockQ8Act], nb: usize, out: &mut [f32]) {
    let (rows, n) = super::tile_shape(w.len(), x.len(), nb, out.len());
    debug_assert!(has_neon_vfpv4());
    let kernels = RowKernels {
        rows4x2: dot::rows4x2_q8,
        rows4: dot::rows4_q8,
        row1: dot::row_q8,
    };
    // SAFETY: NEON and VFPv4 were detected; `tile_shape` checked `nb ≥ 1`, `w` holds
    // `rows · nb` blocks, `x` holds `n · nb` and `out` holds `rows · n`.
    unsafe { matmul_rows(w, x, nb, rows, n, out, kernels) }
}

/// Rows × tokens of q4.
fn matmul_q4(w: &[BlockQ4], x: &[BlockQ8Act], nb: usize, out: &mut [f32]) {
    let (rows, n) = super::tile_shape(w.len(), x.len(), nb, out.len());
    debug_assert!(has_neon_vfpv4());
    let kernels = RowKernels {
        rows4x2: dot::rows4x2_q4,
        rows4: dot::rows4_q4,
        row1: dot::row_q4,
    };
    // SAFETY: as in `matmul_q8`.
    unsafe { matmul_rows(w, x, nb, rows, n, out, kernels) }
}

/// A four-row-by-two-token kernel of [`dot`].
type Rows4x2<W> = unsafe fn([*const W; 4], [*const BlockQ8Act; 2], usize) -> [[f32; 4]; 2];

/// One weight format's kernels of [`dot`]: four rows by two tokens, four rows by one, one by one.
struct RowKernels<W> {
    rows4x2: Rows4x2<W>,
    rows4: unsafe fn([*const W; 4], *const BlockQ8Act, usize) -> [f32; 4],
    row1: unsafe fn(*const W, *const BlockQ8Act, usize) -> f32,
}

/// `out[r · n + t]` = row `r` of `w` · token `t` of `x`: four rows at a time against the tokens
/// two at a time (the rows stay in L1 while the tokens stream past; an odd last token alone),
/// the last `rows % 4` rows one at a time.
///
/// # Safety
/// The CPU must have NEON and VFPv4; `nb ≥ 1`, `w.len() == rows · nb`, `x.len() == n · nb`,
/// `out.len() == rows · n`.
#[inline(always)]
unsafe fn matmul_rows<W>(
    w: &[W],
    x: &[BlockQ8Act],
    nb: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
    k: RowKernels<W>,
) {
    if n == 0 {
        return;
    }
    let quads = rows / 4 * 4;
    let (w4, w1) = w.split_at(quads * nb);
    let (out4, out1) = out.split_at_mut(quads * n);
    let tok = |t: usize| x[t * nb..].as_ptr();
    for (wg, og) in w4.chunks_exact(4 * nb).zip(out4.chunks_exact_mut(4 * n)) {
        let ws = [0, 1, 2, 3].map(|i| wg[i * nb..].as_ptr());
        if n == 1 {
            // Decode: the four outputs are contiguous.
            // SAFETY: the four rows and the token each hold `nb` blocks (the caller's shapes).
            og.copy_from_slice(&(k.rows4)(ws, x.as_ptr(), nb));
            continue;
        }
        for t in (0..n - 1).step_by(2) {
            // SAFETY: as above, for tokens t and t + 1.
            let y = (k.rows4x2)(ws, [tok(t), tok(t + 1)], nb);
            for (i, o) in og.chunks_exact_mut(n).enumerate() {
                o[t] = y[0][i];
                o[t + 1] = y[1][i];
            }
        }
        if n % 2 == 1 {
            // SAFETY: as above, for the last token.
            let y = (k.rows4)(ws, tok(n - 1), nb);
            for (o, v) in og.chunks_exact_mut(n).zip(y) {
                o[n - 1] = v;
            }
        }
    }
    for (row, o) in w1.chunks_exact(nb).zip(out1.chunks_exact_mut(n)) {
        for (t, y) in o.iter_mut().enumerate() {
            // SAFETY: as above, for one row.
            *y = (k.row1)(row.as_ptr(), tok(t), nb);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Every kernel against its scalar twin: block counts 1..9 (around the four-row groups and
    //! any unroll), gpt2-xl's widths (1600 and 6400 values = 50 and 200 blocks), integer
    //! extremes, subnormal and zero scales; quantisation bit for bit, including NaN, infinite,
    //! subnormal and all-zero blocks.
    use super::super::scalar;
    use super::*;

    /// Deterministic xorshift32.
    struct Rng(u32);

    impl Rng {
        fn next_u32(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 17;
            self.0 ^= self.0 << 5;
            self.0
        }
        /// Uniform in [-1, 1).
        fn f32(&mut self) -> f32 {
            (self.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        }
        /// Any int8 except −128 (the activation quantiser's range is −127..=127).
        fn code(&mut self) -> i8 {
            (self.next_u32() as i8).max(-127)
        }
    }

    /// Skips a test (with a note) where the emulated or real CPU lacks NEON or VFPv4.
    fn neon() -> bool {
        let ok = has_neon_vfpv4();
        if !ok {
            eprintln!(
                "no NEON + VFPv4 (AT_HWCAP {:#x}): armv7 kernels not tested",
                hwcap()
            );
        }
        ok
    }

    const BLOCK_COUNTS: [usize; 12] = [1, 2, 3, 4, 5, 7, 8, 9, 24, 50, 96, 200];

    fn q8_rows(rng: &mut Rng, n: usize, q: impl Fn(&mut Rng) -> i8) -> Vec<BlockQ8> {
        (0..n)
            .map(|_| BlockQ8 {
                d: f16::from_f32(rng.f32() * 0.02),
                qs: std::array::from_fn(|_| q(rng)),
            })
            .collect()
    }

    fn q4_rows(rng: &mut Rng, n: usize, q: impl Fn(&mut Rng) -> u8) -> Vec<BlockQ4> {
        (0..n)
            .map(|_| BlockQ4 {
                d: f16::from_f32(rng.f32() * 0.02),
                qs: std::array::from_fn(|_| q(rng)),
            })
            .collect()
    }

    fn acts(rng: &mut Rng, n: usize, q: impl Fn(&mut Rng) -> i8) -> Vec<BlockQ8Act> {
        (0..n)
            .map(|_| BlockQ8Act {
                d: rng.f32().abs() * 0.05,
                qs: std::array::from_fn(|_| q(rng)),
            })
            .collect()
    }

    /// `Σ_b |d_w · d_x| · Σ_k |q_w · q_x|` for one row and token: the float error's scale.
    fn abs_terms(dw: &[f32], qw: &[[i32; QK]], x: &[BlockQ8Act]) -> f64 {
        (0..x.len())
            .map(|b| {
                let s: i64 = (0..QK)
                    .map(|k| (qw[b][k] * x[b].qs[k] as i32).abs() as i64)
                    .sum();
                (dw[b] * x[b].d).abs() as f64 * s as f64
            })
            .sum()
    }

    /// Per block of one row: the scale as f32 and the 32 integer codes (q4 with its offset).
    type Codes = (Vec<f32>, Vec<[i32; QK]>);

    fn q8_codes(w: &[BlockQ8]) -> Codes {
        w.iter()
            .map(|b| (b.d.to_f32(), b.qs.map(|q| q as i32)))
            .unzip()
    }

    fn q4_codes(w: &[BlockQ4]) -> Codes {
        w.iter()
            .map(|b| {
                let q = std::array::from_fn(|i| b.nibble(i) as i32 - 8);
                (b.d.to_f32(), q)
            })
            .unzip()
    }

    /// `got` within `1e-5 · Σ|terms| + 1e-30` of `want` (float sums in another order), and
    /// exactly `want` when every scale is 1 and the integer total is exact in f32.
    fn assert_close(got: f32, want: f32, terms: f64, unit: bool, what: &str) {
        if unit && terms < (1u64 << 24) as f64 {
            assert_eq!(got, want, "{what}: exact integer dot");
        }
        let err = (got as f64 - want as f64).abs();
        assert!(
            err <= 1e-5 * terms + 1e-30,
            "{what}: got {got}, want {want}, |err| {err}"
        );
    }

    /// `matmul` and `dot` of one format against the scalar twins, for `rows × n` products of
    /// `nb` blocks.
    #[allow(clippy::too_many_arguments)]
    fn check_format<W>(
        what: &str,
        w: &[W],
        x: &[BlockQ8Act],
        nb: usize,
        matmul: fn(&[W], &[BlockQ8Act], usize, &mut [f32]),
        matmul_ref: fn(&[W], &[BlockQ8Act], usize, &mut [f32]),
        dot: fn(&[W], &[BlockQ8Act]) -> f32,
        codes: fn(&[W]) -> Codes,
    ) {
        let (rows, n) = (w.len() / nb, x.len() / nb);
        let (mut got, mut want) = (vec![f32::NAN; rows * n], vec![0f32; rows * n]);
        matmul(w, x, nb, &mut got);
        matmul_ref(w, x, nb, &mut want);
        for r in 0..rows {
            let (dw, qw) = codes(&w[r * nb..(r + 1) * nb]);
            for t in 0..n {
                let xt = &x[t * nb..(t + 1) * nb];
                let unit = dw.iter().all(|&d| d == 1.0) && xt.iter().all(|b| b.d == 1.0);
                let terms = abs_terms(&dw, &qw, xt);
                let at = format!("{what} {rows}x{n}x{nb} [{r},{t}]");
                assert_close(got[r * n + t], want[r * n + t], terms, unit, &at);
                let one = dot(&w[r * nb..(r + 1) * nb], xt);
                assert_close(one, want[r * n + t], terms, unit, &format!("{at} dot"));
            }
        }
    }

    fn check_q8(w: &[BlockQ8], x: &[BlockQ8Act], nb: usize, what: &str) {
        let name = format!("q8 {what}");
        check_format(
            &name,
            w,
            x,
            nb,
            matmul_q8,
            scalar::matmul_q8,
            dot_q8,
            q8_codes,
        );
    }

    fn check_q4(w: &[BlockQ4], x: &[BlockQ8Act], nb: usize, what: &str) {
        let name = format!("q4 {what}");
        check_format(
            &name,
            w,
            x,
            nb,
            matmul_q4,
            scalar::matmul_q4,
            dot_q4,
            q4_codes,
        );
    }

    /// (rows, tokens): below, at and past the four-row groups, decode (one token) and batches.
    const TILES: [(usize, usize); 6] = [(1, 1), (3, 2), (4, 1), (5, 3), (8, 1), (11, 2)];

    #[test]
    fn matmul_and_dot_q8_agree_with_scalar() {
        if !neon() {
            return;
        }
        let mut rng = Rng(0x1234_5678);
        for nb in BLOCK_COUNTS {
            for (rows, n) in TILES {
                let w = q8_rows(&mut rng, rows * nb, |r| r.next_u32() as i8);
                let x = acts(&mut rng, n * nb, Rng::code);
                check_q8(&w, &x, nb, "random");
            }
        }
    }

    #[test]
    fn matmul_and_dot_q4_agree_with_scalar() {
        if !neon() {
            return;
        }
        let mut rng = Rng(0x9e37_79b9);
        for nb in BLOCK_COUNTS {
            for (rows, n) in TILES {
                let w = q4_rows(&mut rng, rows * nb, |r| r.next_u32() as u8);
                let x = acts(&mut rng, n * nb, |r| r.next_u32() as i8);
                check_q4(&w, &x, nb, "random");
            }
        }
    }

    /// Unit scales and every integer extreme: the float result must be the exact integer. q8
    /// weights include the out-of-format −128 (activations stay within ±127); q4 activations
    /// include −128.
    #[test]
    fn integer_sums_are_exact_at_extremes() {
        if !neon() {
            return;
        }
        let mut rng = Rng(7);
        let unit_q8 = |w: Vec<BlockQ8>| -> Vec<BlockQ8> {
            w.into_iter()
                .map(|b| BlockQ8 { d: f16::ONE, ..b })
                .collect()
        };
        let unit_acts = |x: Vec<BlockQ8Act>| -> Vec<BlockQ8Act> {
            x.into_iter().map(|b| BlockQ8Act { d: 1.0, ..b }).collect()
        };
        for nb in [1, 3, 50] {
            for (wq, xq) in [
                (127, 127),
                (127, -127),
                (-127, -127),
                (-128, -127),
                (-128, 127),
            ] {
                let w = unit_q8(q8_rows(&mut rng, 5 * nb, |_| wq));
                let x = unit_acts(acts(&mut rng, 2 * nb, |_| xq));
                check_q8(&w, &x, nb, &format!("{wq}·{xq}"));
            }
            for nib in [0x00, 0xFF, 0x0F, 0xF0] {
                for xq in [127, -127, -128] {
                    let w: Vec<BlockQ4> = q4_rows(&mut rng, 5 * nb, |_| nib)
                        .into_iter()
                        .map(|b| BlockQ4 { d: f16::ONE, ..b })
                        .collect();
                    let x = unit_acts(acts(&mut rng, 2 * nb, |_| xq));
                    check_q4(&w, &x, nb, &format!("{nib:#x}·{xq}"));
                }
            }
        }
    }

    /// f16 scales that are zero, subnormal, the largest finite, and negative.
    #[test]
    fn unusual_scales_agree_with_scalar() {
        if !neon() {
            return;
        }
        let mut rng = Rng(99);
        let scales = [0.0, -0.0, 6.0e-8, 3.0e-5, 65504.0, -2.0];
        for nb in [1, 5, 24] {
            let mut w = q8_rows(&mut rng, 6 * nb, Rng::code);
            let mut w4 = q4_rows(&mut rng, 6 * nb, |r| r.next_u32() as u8);
            for (i, (a, b)) in w.iter_mut().zip(&mut w4).enumerate() {
                a.d = f16::from_f32(scales[i % scales.len()]);
                b.d = a.d;
            }
            let x = acts(&mut rng, 3 * nb, Rng::code);
            check_q8(&w, &x, nb, "scales");
            check_q4(&w4, &x, nb, "scales");
        }
    }

    /// Bit-identical blocks: codes and scales.
    fn assert_quantized_like_scalar(x: &[f32], what: &str) {
        let nb = x.len() / QK;
        let (mut got, mut want) = (
            vec![BlockQ8Act::default(); nb],
            vec![BlockQ8Act::default(); nb],
        );
        quantize_act(x, &mut got);
        scalar::quantize_act(x, &mut want);
        for (b, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.qs, w.qs, "{what}: codes of block {b}");
            assert_eq!(g.d.to_bits(), w.d.to_bits(), "{what}: scale of block {b}");
        }
    }

    #[test]
    fn quantize_act_matches_scalar_bitwise() {
        if !neon() {
            return;
        }
        let mut rng = Rng(0xfeed_beef);
        for len in [32, 64, 96, 768, 1600, 6400] {
            for scale in [1.0, 1e-3, 40.0, 3e4] {
                let x: Vec<f32> = (0..len).map(|_| rng.f32() * scale).collect();
                assert_quantized_like_scalar(&x, &format!("len {len} scale {scale}"));
            }
        }
        // Ties: exact halves of the step round to even, in both.
        // Block 0 has d = 1 (codes are the values), block 1 has d = 2 (127 / 2 = 63.5).
        let mut x: Vec<f32> = (0..QK)
            .map(|i| i as f32 - 15.5)
            .chain([127.0; 32])
            .collect();
        x[0] = 127.0;
        x[QK] = 254.0;
        assert_quantized_like_scalar(&x, "ties");
    }

    #[test]
    fn quantize_act_matches_scalar_on_special_blocks() {
        if !neon() {
            return;
        }
        let mut rng = Rng(5);
        let mut block = |f: &dyn Fn(usize, f32) -> f32| -> Vec<f32> {
            (0..QK).map(|i| f(i, rng.f32())).collect()
        };
        let blocks = [
            block(&|_, _| 0.0),
            block(&|_, _| -0.0),
            block(&|i, v| if i == 5 { f32::NAN } else { v }),
            block(&|i, v| if i == 31 { f32::INFINITY } else { v }),
            block(&|i, v| if i == 0 { f32::NEG_INFINITY } else { v * 1e30 }),
            block(&|_, v| v * 1e-40),
            block(&|i, v| if i == 3 { 1e-38 } else { v * 1e-40 }),
            block(&|i, v| if i == 7 { 2e-30 } else { v * 1e-39 }),
            block(&|_, v| v * f32::MAX),
            block(&|i, v| if i % 2 == 0 { 127.0 } else { v }),
        ];
        for (i, b) in blocks.iter().enumerate() {
            assert_quantized_like_scalar(b, &format!("special block {i}"));
        }
        let all: Vec<f32> = blocks.concat();
        assert_quantized_like_scalar(&all, "all special blocks");
    }

    /// Lengths around the 8- and 4-lane steps, and GPT-2's widths up to gpt2-xl's 6400.
    const FLOAT_LENS: [usize; 12] = [1, 3, 4, 7, 8, 9, 15, 17, 64, 768, 1600, 6400];

    #[test]
    fn dot_f16_agrees_with_scalar() {
        if !neon() {
            return;
        }
        let mut rng = Rng(0xdead_f00d);
        for n in FLOAT_LENS {
            for scale in [1.0, 1e-3, 300.0] {
                let w: Vec<f16> = (0..n).map(|_| f16::from_f32(rng.f32() * scale)).collect();
                let x: Vec<f32> = (0..n).map(|_| rng.f32() * 4.0).collect();
                let terms: f64 = w
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| (a.to_f64() * *b as f64).abs())
                    .sum();
                let (got, want) = (dot_f16(&w, &x), scalar::dot_f16(&w, &x));
                assert_close(
                    got,
                    want,
                    terms,
                    false,
                    &format!("dot_f16 n={n} scale {scale}"),
                );
            }
            // f16 extremes (subnormal, largest) and signed zeros.
            let special = [
                f16::from_bits(1),
                f16::from_bits(0x8200),
                f16::MAX,
                f16::MIN,
                f16::NEG_ZERO,
            ];
            let w: Vec<f16> = (0..n).map(|i| special[i % special.len()]).collect();
            let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
            let terms: f64 = w
                .iter()
                .zip(&x)
                .map(|(a, b)| (a.to_f64() * *b as f64).abs())
                .sum();
            assert_close(
                dot_f16(&w, &x),
                scalar::dot_f16(&w, &x),
                terms,
                false,
                &format!("dot_f16 n={n} extremes"),
            );
            let mut w = w;
            w[n / 2] = f16::NAN;
            assert!(
                dot_f16(&w, &x).is_nan(),
                "dot_f16 n={n}: NaN must propagate"
            );
        }
        assert_eq!(dot_f16(&[], &[]), 0.0);
    }

    /// Bit for bit, subnormal products and sums included (VFP, not NEON, does the arithmetic).
    #[test]
    fn axpy_f16_matches_scalar_bitwise() {
        if !neon() {
            return;
        }
        let mut rng = Rng(0x0bad_cafe);
        for n in FLOAT_LENS {
            let x: Vec<f16> = (0..n)
                .map(|i| {
                    if i % 5 == 0 {
                        f16::from_bits(i as u16 % 0x400)
                    } else {
                        f16::from_f32(rng.f32() * 60.0)
                    }
                })
                .collect();
            for s in [
                0.37f32,
                -1e-3,
                0.0,
                -0.0,
                1e4,
                1e-36,
                f32::MIN_POSITIVE / 3.0,
            ] {
                let acc0: Vec<f32> = (0..n)
                    .map(|i| {
                        if i % 3 == 0 {
                            f32::MIN_POSITIVE * rng.f32()
                        } else {
                            rng.f32() * 50.0
                        }
                    })
                    .collect();
                let (mut got, mut want) = (acc0.clone(), acc0);
                axpy_f16(&mut got, s, &x);
                scalar::axpy_f16(&mut want, s, &x);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        w.to_bits(),
                        "axpy_f16 n={n} s={s} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn table_is_handed_out_only_with_neon() {
        let table = ops();
        assert_eq!(table.is_some(), has_neon_vfpv4());
        if let Some(t) = table {
            assert_eq!(t.path, KernelPath::Armv7Neon);
        }
    }
}
