//! Float buffers that start on a cache line.
//!
//! The batch kernels store a product's outputs a cache line at a time (one 512-bit vector, or
//! two 256-bit ones, per token and group of rows), and the products of more than one chunk read
//! them back. The system allocator aligns to 16 bytes, and a large block starts 16 bytes into a
//! page, so each of those stores would straddle two lines: on an Ice Lake-SP the products ran
//! 9–14% slower into such a buffer (docs/PERFORMANCE.md). Rows of the outputs are whole lines
//! (GPT-2's widths are multiples of 16 floats), so aligning the first value aligns them all.

use std::ops::{Deref, DerefMut};

/// Bytes in a cache line: where an [`AlignedVec`]'s first value starts.
pub const LINE: usize = 64;

/// Floats allocated beyond the length, enough to move the start to a line.
const PAD: usize = LINE / std::mem::size_of::<f32>() - 1;

/// A fixed-length run of `f32`, zero-initialised, whose first value starts a cache line
/// ([`LINE`] bytes); it is used as a slice.
pub struct AlignedVec {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl AlignedVec {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let buf = vec![0.0; len + PAD];
        // `align_offset` may decline (`usize::MAX`): the values are then only slower to store.
        let start = Some(buf.as_ptr().align_offset(LINE))
            .filter(|&o| o <= PAD)
            .unwrap_or(0);
        AlignedVec { buf, start, len }
    }

    /// Bytes [`AlignedVec::zeroed`] allocates for `len` values, the padding included (the
    /// memory plan's figure).
    pub const fn byte_len_for(len: usize) -> usize {
        (len + PAD) * std::mem::size_of::<f32>()
    }

    /// Bytes held.
    pub fn byte_len(&self) -> usize {
        std::mem::size_of_val(self.buf.as_slice())
    }
}

impl Deref for AlignedVec {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl DerefMut for AlignedVec {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_and_holds_its_length_of_zeros() {
        // Sizes around the allocator's switch to mapped blocks (128 KiB) and GPT-2's widths.
        for len in [0, 1, 15, 16, 17, 768, 2304 * 128, 3072 * 128 + 3, 50257] {
            let mut v = AlignedVec::zeroed(len);
            assert_eq!(v.len(), len);
            assert_eq!(v.byte_len(), AlignedVec::byte_len_for(len));
            assert!(v.iter().all(|&x| x == 0.0));
            if len > 0 {
                assert_eq!(v.as_ptr() as usize % LINE, 0, "len {len}");
            }
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32));
        }
    }
}
