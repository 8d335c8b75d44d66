//! aarch64 NEON kernels (placeholder until written: returns the scalar table).
use super::Ops;

pub(super) fn ops() -> Ops {
    super::scalar::ops()
}
