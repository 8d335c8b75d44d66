//! 32-bit ARM (armv7, e.g. 32-bit Raspberry Pi OS) NEON kernels: activation quantisation and
//! the q8/q4 tile products, which are nearly all of a token's work; GELU; and the f16 KV cache's
//! `dot_f16`/`axpy_f16`, whose work grows with the context (a prompt's attention tiles,
//! `scores_f16`/`weighted_sum_f16`, run them one query at a time). The other float entries (layer norm,
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

use super::{prepare_nothing, CausalTile, KernelPath, Ops, PrepLane};
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
        prepare_q8: prepare_nothing,
        prepare_q4: prepare_nothing,
        dot_f16,
        matmul_q8,
        matmul_q4,
        axpy_f16,
        scores_f16,
        weighted_sum_f16,
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
    super::mark_nan_blocks(x, out);
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

/// Attention scores of a tile of queries, one query at a time with this table's [`dot_f16`].
fn scores_f16(keys: &[f16], q: &[f32], scale: f32, tile: &CausalTile, out: &mut [f32]) {
    super::scores_per_query(dot_f16, keys, q, scale, tile, out);
}

/// Weighted sums for a tile of queries, one query at a time with this table's [`axpy_f16`].
fn weighted_sum_f16(values: &[f16], weights: &[f32], tile: &CausalTile, out: &mut [f32]) {
    super::weighted_sum_per_query(axpy_f16, values, weights, tile, out);
}

/// GELU (tanh form) in place.
fn gelu_tanh(x: &mut [f32]) {
    debug_assert!(has_neon_vfpv4());
    // SAFETY: NEON and VFPv4 were detected before this function was handed out.
    unsafe { float::gelu_tanh(x) }
}

/// Rows × tokens of q8 (the activations as they are: `_prep` is not read).
fn matmul_q8(w: &[BlockQ8], x: &[BlockQ8Act], _prep: &[PrepLane], nb: usize, out: &mut [f32]) {
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

/// Rows × tokens of q4 (the activations as they are: `_prep` is not read).
fn matmul_q4(w: &[BlockQ4], x: &[BlockQ8Act], _prep: &[PrepLane], nb: usize, out: &mut [f32]) {
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
    //! What only this module can check; the kernels themselves are tested against their
    //! scalar twins, with every other table, in `kernels::twins`.
    use super::*;

    #[test]
    fn table_is_handed_out_only_with_neon() {
        let table = ops();
        assert_eq!(table.is_some(), has_neon_vfpv4());
        if let Some(t) = table {
            assert_eq!(t.path, KernelPath::Armv7Neon);
        }
    }
}
