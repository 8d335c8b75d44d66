//! Where the packed batch kernels ([`super::packed`], [`super::packed512`]) put a finished tile:
//! each token's run of a row group is one vector (eight rows in a `__m256`, sixteen in a
//! `__m512`), written or added into the call's `(n, rows)` output, or finished into a [`Dest`]
//! (the bias, then GELU or the residual add, in registers).

use std::arch::x86_64::*;

use crate::kernels::{Dest, Then};

/// A vector of consecutive output rows of one token.
pub(super) trait RowVector: Copy {
    /// Rows in the vector.
    const LANES: usize;
    /// # Safety
    /// `p` must be valid for reading `LANES` floats; the CPU must have the vector's features
    /// (the methods are inlined into kernels compiled for them).
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// `p` must be valid for writing `LANES` floats; features as [`RowVector::load`].
    unsafe fn store(self, p: *mut f32);
    /// # Safety
    /// Features as [`RowVector::load`].
    unsafe fn add(self, other: Self) -> Self;
    /// GELU (tanh form) of each lane, as the kernel's table computes it.
    ///
    /// # Safety
    /// Features as [`RowVector::load`].
    unsafe fn gelu_tanh(self) -> Self;
}

impl RowVector for __m256 {
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: as the trait's contract.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: as the trait's contract.
        unsafe { _mm256_storeu_ps(p, self) }
    }
    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        _mm256_add_ps(self, other)
    }
    #[inline(always)]
    unsafe fn gelu_tanh(self) -> Self {
        // SAFETY: the caller runs with AVX2, FMA and F16C.
        unsafe { super::elem::gelu_ps(self) }
    }
}

impl RowVector for __m512 {
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: as the trait's contract.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: as the trait's contract.
        unsafe { _mm512_storeu_ps(p, self) }
    }
    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        _mm512_add_ps(self, other)
    }
    #[inline(always)]
    unsafe fn gelu_tanh(self) -> Self {
        // SAFETY: the caller runs with AVX-512 F.
        unsafe { super::elem512::gelu_ps(self) }
    }
}

/// Where a chunk's results go: rows from `r0` in an output of `rows` per token, the chunk's
/// first block `b0` in tokens of `nb` blocks, whether it is the first chunk of its rows
/// (written, not added), and, for the last chunk of a product finished in place, where to.
pub(super) struct Span<'d> {
    pub(super) r0: usize,
    pub(super) rows: usize,
    pub(super) nb: usize,
    pub(super) b0: usize,
    pub(super) first: bool,
    pub(super) dest: Option<&'d Dest<'d>>,
}

impl Span<'_> {
    /// Token `t`'s sums `a` for the span's rows: written into `out` (`(n, rows)`) for the first
    /// chunk, added to what is there for the others, or, with a destination, added and finished
    /// into it.
    ///
    /// # Safety
    /// The CPU must have `V`'s features; token `t` and rows `r0..r0 + V::LANES` are within the
    /// call, and `dest` (if any) is valid as [`crate::kernels::MatmulIntoFn`] requires.
    #[inline(always)]
    pub(super) unsafe fn put<V: RowVector>(&self, out: &mut [f32], t: usize, a: V) {
        let y = out[t * self.rows + self.r0..][..V::LANES].as_mut_ptr();
        // SAFETY: `y` points at the `V::LANES` floats of the slice just taken.
        let sum = if self.first {
            a
        } else {
            unsafe { V::load(y).add(a) }
        };
        match self.dest {
            // SAFETY: as this function's contract.
            Some(d) => unsafe { finish(d, t, self.r0, sum) },
            // SAFETY: as above.
            None => unsafe { sum.store(y) },
        }
    }
}

/// `V::LANES` finished rows from `r0` of token `t`: the product `v` plus the bias, then what
/// the epilogue says, the arithmetic of [`Dest::put`] in one vector.
///
/// # Safety
/// As [`Span::put`]; rows `r0..r0 + V::LANES` and token `t` are within `dest`'s call.
#[inline(always)]
unsafe fn finish<V: RowVector>(dest: &Dest<'_>, t: usize, r0: usize, v: V) {
    let epi = &dest.epi;
    // SAFETY: the bias slice holds exactly `V::LANES` floats; the features are the caller's.
    let v = unsafe { v.add(V::load(epi.bias[r0..r0 + V::LANES].as_ptr())) };
    // SAFETY: as this function's contract.
    let y = unsafe { dest.run(t, r0, V::LANES) };
    let p = y.as_mut_ptr();
    // SAFETY: each access is exactly the `V::LANES` floats of `y`.
    unsafe {
        match epi.then {
            Then::Store => v.store(p),
            Then::Add => V::load(p).add(v).store(p),
            // This table's GELU (`epi.gelu` is the same function over a slice).
            Then::GeluTanh => v.gelu_tanh().store(p),
            Then::GeluErf => {
                v.store(p);
                crate::kernels::scalar::gelu_erf(y);
            }
        }
    }
}
