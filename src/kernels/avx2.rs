//! x86-64 AVX2 kernels (placeholder until written: returns the scalar table).
use super::Ops;

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
pub(super) unsafe fn ops() -> Ops {
    super::scalar::ops()
}
