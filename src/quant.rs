//! Block-quantised weight formats: their in-file layout, quantisation and dequantisation.
//!
//! This module owns what a quantised block *is* (bytes, scale, nibble order) and how float weights
//! become blocks and back. It does not own dot products: those are in [`crate::kernels`], which read
//! these structs. Both formats quantise along a matrix row (the input dimension) in blocks of
//! [`QK`] = 32 values with one `f16` scale per block, as ggml's q8_0 / q4_0:
//!
//! * [`BlockQ8`]: `x ≈ d · q`, `q ∈ [-127, 127]`, 34 bytes per 32 weights (8.5 bits per weight).
//! * [`BlockQ4`]: `x ≈ d · (q − 8)`, `q ∈ [0, 15]`, 18 bytes per 32 weights (4.5 bits per weight).
//!   Byte `j` holds element `j` in its low nibble and element `j + 16` in its high nibble, so a SIMD
//!   kernel splits 16 bytes into the two halves of the block with one mask and one shift.
//!
//! There is no per-block offset (minimum) in q4: it would cost 0.5 bits per weight (5.0 in total)
//! and an extra term in every dot product; an error-minimising choice of the scale recovers most of
//! the quality an offset buys on GPT-2's roughly zero-centred weights.

use half::f16;

/// Number of weights in one quantisation block.
pub const QK: usize = 32;

/// Element type of a stored tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE-754 binary32.
    F32,
    /// IEEE-754 binary16.
    F16,
    /// Blocks of 32 int8 with an f16 scale ([`BlockQ8`]).
    Q8,
    /// Blocks of 32 4-bit values with an f16 scale ([`BlockQ4`]).
    Q4,
}

impl DType {
    /// The code stored in the tensor table.
    pub fn code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q8 => 2,
            DType::Q4 => 3,
        }
    }

    /// The dtype with table code `code`, if any.
    pub fn from_code(code: u32) -> Option<Self> {
        [DType::F32, DType::F16, DType::Q8, DType::Q4]
            .into_iter()
            .find(|d| d.code() == code)
    }

    /// Lower-case name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Q8 => "q8",
            DType::Q4 => "q4",
        }
    }

    /// Bytes needed for a row of `n` elements, or `None` if `n` cannot be stored in this dtype
    /// (a quantised row must be a whole number of blocks) or the size overflows.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let qk = QK as u64;
        match self {
            DType::F32 => n.checked_mul(4),
            DType::F16 => n.checked_mul(2),
            DType::Q8 if n.is_multiple_of(qk) => {
                (n / qk).checked_mul(std::mem::size_of::<BlockQ8>() as u64)
            }
            DType::Q4 if n.is_multiple_of(qk) => {
                (n / qk).checked_mul(std::mem::size_of::<BlockQ4>() as u64)
            }
            DType::Q8 | DType::Q4 => None,
        }
    }

    /// Bytes needed for a tensor of `shape` (rows are the last dimension), or `None` as in
    /// [`DType::row_bytes`].
    pub fn tensor_bytes(self, shape: &[u64]) -> Option<u64> {
        let (last, outer) = shape.split_last()?;
        let rows = outer.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
        self.row_bytes(*last)?.checked_mul(rows)
    }
}

/// 32 int8 weights with one f16 scale: `x ≈ d · q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8 {
    /// Scale.
    pub d: f16,
    /// Quantised values, `-127..=127`.
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8>() == 34);
const _: () = assert!(std::mem::align_of::<BlockQ8>() == 2);

/// 32 4-bit weights with one f16 scale: `x ≈ d · (q − 8)`; low nibbles hold elements 0..16, high
/// nibbles elements 16..32.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4 {
    /// Scale.
    pub d: f16,
    /// Packed nibbles: byte `j` = element `j` | element `j + 16` << 4.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4>() == 18);
const _: () = assert!(std::mem::align_of::<BlockQ4>() == 2);

/// Activations quantised on the fly for integer dot products with q8/q4 weights: 32 int8 with
/// an f32 scale, `x ≈ d · q`. Never stored in a file, so the scale stays f32 (no f16 conversion
/// in the kernels, no extra rounding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8Act {
    /// Scale: max|x| / 127 over the block.
    pub d: f32,
    /// Quantised values, `-127..=127`.
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8Act>() == 36);

impl BlockQ8 {
    /// Quantises 32 values: scale = max|x| / 127, values rounded to nearest.
    pub fn quantize(x: &[f32; QK]) -> Self {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let d16 = f16::from_f32(d);
        // Quantise with the scale as stored, so the rounding matches what dequantisation sees.
        let inv = if d16.to_f32() == 0.0 {
            0.0
        } else {
            1.0 / d16.to_f32()
        };
        let mut qs = [0i8; QK];
        for (q, v) in qs.iter_mut().zip(x) {
            *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
        }
        BlockQ8 { d: d16, qs }
    }

    /// Writes the 32 dequantised values into `out`.
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = self.d.to_f32();
        for (o, q) in out.iter_mut().zip(self.qs) {
            *o = d * q as f32;
        }
    }
}

impl BlockQ4 {
    /// The quantised value (0..=15) of element `i` (0..32).
    #[inline]
    pub fn nibble(&self, i: usize) -> u8 {
        let byte = self.qs[i % (QK / 2)];
        if i < QK / 2 {
            byte & 0x0F
        } else {
            byte >> 4
        }
    }

    /// Quantises 32 values, choosing among a few candidate scales the one with the least squared
    /// error (the plain choice, max-magnitude / −8, is one of the candidates).
    pub fn quantize(x: &[f32; QK]) -> Self {
        Self::quantize_weighted(x, &[1.0; QK])
    }

    /// Quantises 32 values minimising the weighted squared error `Σ wᵢ (xᵢ − x̂ᵢ)²`, where `w` says
    /// how much each element's error matters (the mean square of the activation it multiplies,
    /// as the converter estimates it). Equal weights give [`BlockQ4::quantize`].
    pub fn quantize_weighted(x: &[f32; QK], w: &[f32; QK]) -> Self {
        let d = best_q4_scale(x, w);
        let d16 = f16::from_f32(d);
        let q = q4_values(x, d16.to_f32());
        let mut qs = [0u8; QK / 2];
        for (j, byte) in qs.iter_mut().enumerate() {
            *byte = q[j] | (q[j + QK / 2] << 4);
        }
        BlockQ4 { d: d16, qs }
    }

    /// Writes the 32 dequantised values into `out`.
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = self.d.to_f32();
        for (i, o) in out.iter_mut().enumerate() {
            *o = d * (self.nibble(i) as f32 - 8.0);
        }
    }
}

/// The 4-bit codes (0..=15) of `x` under scale `d` (zero scale gives all 8, i.e. zero).
fn q4_values(x: &[f32; QK], d: f32) -> [u8; QK] {
    let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut q = [8u8; QK];
    for (qi, v) in q.iter_mut().zip(x) {
        *qi = ((v * inv).round() + 8.0).clamp(0.0, 15.0) as u8;
    }
    q
}

/// Weighted squared error of representing `x` with scale `d`.
fn q4_error(x: &[f32; QK], w: &[f32; QK], d: f32) -> f32 {
    let q = q4_values(x, d);
    x.iter()
        .zip(q)
        .zip(w)
        .map(|((v, qi), wi)| {
            let e = v - d * (qi as f32 - 8.0);
            wi * e * e
        })
        .sum()
}

/// Searches for the block scale with the least squared error, as stored (at f16 precision).
///
/// Candidates map the value of largest magnitude to a code near −8 or near +7 (the grid is
/// asymmetric, so either side can win), stepping the divisor in 0.05s; for each candidate the
/// codes it gives are then refitted with the least-squares scale `Σ x·q / Σ q²`, which is also a
/// candidate. The plain choice, max / −8, is among them, so the result is never worse.
fn best_q4_scale(x: &[f32; QK], w: &[f32; QK]) -> f32 {
    let max = x
        .iter()
        .copied()
        .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
    if max == 0.0 {
        return 0.0;
    }
    let mut best = (f32::INFINITY, 0.0);
    let mut consider = |d: f32| {
        let d = f16::from_f32(d).to_f32();
        if d != 0.0 && d.is_finite() {
            let err = q4_error(x, w, d);
            if err < best.0 {
                best = (err, d);
            }
        }
    };
    for step in -4..=30 {
        let shift = step as f32 * 0.05;
        for divisor in [-8.0 + shift, 7.0 + shift] {
            let d = max / divisor;
            consider(d);
            consider(least_squares_scale(x, w, &q4_values(x, d)));
        }
    }
    best.1
}

/// The scale minimising `Σ w·(x − d·(q − 8))²` for fixed codes `q`.
fn least_squares_scale(x: &[f32; QK], w: &[f32; QK], q: &[u8; QK]) -> f32 {
    let (mut xq, mut qq) = (0.0f32, 0.0f32);
    for ((&v, &c), &wi) in x.iter().zip(q).zip(w) {
        let c = c as f32 - 8.0;
        xq += wi * v * c;
        qq += wi * c * c;
    }
    if qq == 0.0 {
        0.0
    } else {
        xq / qq
    }
}

/// Quantises a row of `x.len()` values (a multiple of [`QK`]) to q8 blocks, appended to `out`.
pub fn quantize_row_q8(x: &[f32], out: &mut Vec<BlockQ8>) {
    debug_assert_eq!(x.len() % QK, 0);
    for chunk in x.chunks_exact(QK) {
        let block: &[f32; QK] = chunk.try_into().expect("chunks_exact gives QK values");
        out.push(BlockQ8::quantize(block));
    }
}

/// Quantises a row of `x.len()` values (a multiple of [`QK`]) to q4 blocks, appended to `out`.
pub fn quantize_row_q4(x: &[f32], out: &mut Vec<BlockQ4>) {
    quantize_row_q4_weighted(x, None, out);
}

/// As [`quantize_row_q4`], minimising the error weighted by `importance` (one weight per element
/// of the row) when given.
pub fn quantize_row_q4_weighted(x: &[f32], importance: Option<&[f32]>, out: &mut Vec<BlockQ4>) {
    debug_assert_eq!(x.len() % QK, 0);
    for (b, chunk) in x.chunks_exact(QK).enumerate() {
        let block: &[f32; QK] = chunk.try_into().expect("chunks_exact gives QK values");
        let w = match importance {
            Some(imp) => imp[b * QK..(b + 1) * QK]
                .try_into()
                .expect("importance has one weight per column"),
            None => [1.0; QK],
        };
        out.push(BlockQ4::quantize_weighted(block, &w));
    }
}

/// Serialises q8 blocks in file order (scale little-endian, then the 32 bytes).
pub fn q8_blocks_to_bytes(blocks: &[BlockQ8], out: &mut Vec<u8>) {
    for b in blocks {
        out.extend_from_slice(&b.d.to_bits().to_le_bytes());
        out.extend(b.qs.iter().map(|&q| q as u8));
    }
}

/// Serialises q4 blocks in file order (scale little-endian, then the 16 bytes).
pub fn q4_blocks_to_bytes(blocks: &[BlockQ4], out: &mut Vec<u8>) {
    for b in blocks {
        out.extend_from_slice(&b.d.to_bits().to_le_bytes());
        out.extend_from_slice(&b.qs);
    }
}

/// Encodes a row-major tensor of `values` (rows of `cols`) in `dtype`, in file order.
/// Quantised dtypes need `cols` to be a multiple of [`QK`] (the caller checks, see
/// [`DType::row_bytes`]).
pub fn encode_tensor(dtype: DType, values: &[f32], cols: usize) -> Vec<u8> {
    encode_tensor_weighted(dtype, values, cols, None)
}

/// As [`encode_tensor`]; q4 rows minimise their rounding error weighted by `importance` (one
/// non-negative weight per column) when it is given. Other dtypes
/// ignore it.
pub fn encode_tensor_weighted(
    dtype: DType,
    values: &[f32],
    cols: usize,
    importance: Option<&[f32]>,
) -> Vec<u8> {
    if let Some(imp) = importance {
        assert_eq!(
            imp.len(),
            cols,
            "encode_tensor_weighted: one weight per column"
        );
    }
    match dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes())
            .collect(),
        DType::Q8 => {
            let mut blocks = Vec::with_capacity(values.len() / QK);
            for row in values.chunks_exact(cols) {
                quantize_row_q8(row, &mut blocks);
            }
            let mut out = Vec::with_capacity(blocks.len() * 34);
            q8_blocks_to_bytes(&blocks, &mut out);
            out
        }
        DType::Q4 => {
            let mut blocks = Vec::with_capacity(values.len() / QK);
            for row in values.chunks_exact(cols) {
                quantize_row_q4_weighted(row, importance, &mut blocks);
            }
            let mut out = Vec::with_capacity(blocks.len() * 18);
            q4_blocks_to_bytes(&blocks, &mut out);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantised_rows_must_be_whole_blocks() {
        assert_eq!(DType::Q8.tensor_bytes(&[2, 33]), None);
        assert_eq!(DType::Q4.tensor_bytes(&[3, 64]), Some(3 * 2 * 18));
        assert_eq!(DType::F16.tensor_bytes(&[u64::MAX, 4]), None);
    }

    fn ramp(scale: f32) -> [f32; QK] {
        std::array::from_fn(|i| (i as f32 - 15.5) * scale)
    }

    #[test]
    fn q8_round_trip_error_is_within_half_a_step() {
        let x = ramp(0.013);
        let mut y = [0f32; QK];
        let b = BlockQ8::quantize(&x);
        b.dequantize(&mut y);
        let step = b.d.to_f32();
        for (a, b) in x.iter().zip(y) {
            assert!((a - b).abs() <= 0.5 * step + 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn q4_round_trip_error_is_bounded() {
        let x = ramp(0.05);
        let mut y = [0f32; QK];
        let b = BlockQ4::quantize(&x);
        b.dequantize(&mut y);
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in x.iter().zip(y) {
            // One 4-bit step of the largest magnitude is amax / 8; the search may clip the extreme.
            assert!((a - b).abs() <= amax / 8.0, "{a} vs {b}");
        }
    }

    #[test]
    fn q4_scale_search_is_never_worse_than_plain_max_scale() {
        let mut rng = crate::rng::Rng::new(1);
        for _ in 0..200 {
            let x: [f32; QK] = std::array::from_fn(|_| rng.uniform(0.1));
            let max = x
                .iter()
                .copied()
                .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
            let plain = f16::from_f32(max / -8.0).to_f32();
            let b = BlockQ4::quantize(&x);
            let ones = [1.0; QK];
            assert!(q4_error(&x, &ones, b.d.to_f32()) <= q4_error(&x, &ones, plain) + 1e-9);
        }
    }

    #[test]
    fn zero_blocks_stay_zero() {
        let x = [0f32; QK];
        let mut y = [1f32; QK];
        BlockQ4::quantize(&x).dequantize(&mut y);
        assert_eq!(y, [0f32; QK]);
        BlockQ8::quantize(&x).dequantize(&mut y);
        assert_eq!(y, [0f32; QK]);
    }

    #[test]
    fn q4_nibble_order_puts_second_half_in_high_nibbles() {
        let x: [f32; QK] = std::array::from_fn(|i| if i < 16 { -1.0 } else { 0.0 });
        let b = BlockQ4::quantize(&x);
        for j in 0..16 {
            assert_eq!(b.qs[j] >> 4, 8, "element {} should be zero", j + 16);
            assert_ne!(b.qs[j] & 0xF, 8);
        }
    }
}
