//! Borrowed views of weight tensors, as the kernels consume them.
//!
//! A [`Matrix`] is `rows × cols` weights stored row-major in one of the file's dtypes; for the
//! model's linear layers a row holds one output feature's weights over all input features, so
//! `y = W·x` is one dot product per row. Views borrow from the mapped file: nothing is copied.
//!
//! A [`SplitMatrix`] is a matrix whose first rows are stored in another dtype: `--quant q4-pure`
//! keeps the token embedding rows of the most frequent tokens in q8 that way.

use half::f16;

use crate::quant::{BlockQ4, BlockQ8, DType, QK};

/// The element storage of a matrix.
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    /// Plain floats, `rows * cols` of them.
    F32(&'a [f32]),
    /// Half floats, `rows * cols` of them.
    F16(&'a [f16]),
    /// q8 blocks, `rows * cols / 32` of them.
    Q8(&'a [BlockQ8]),
    /// q4 blocks, `rows * cols / 32` of them.
    Q4(&'a [BlockQ4]),
}

/// A row-major weight matrix borrowed from the model file.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    /// Number of rows (output features).
    pub rows: usize,
    /// Number of columns (input features).
    pub cols: usize,
    /// The weights.
    pub weights: Weights<'a>,
}

impl<'a> Matrix<'a> {
    /// Builds a view, checking that the storage holds exactly `rows × cols` weights.
    pub fn new(rows: usize, cols: usize, weights: Weights<'a>) -> Option<Self> {
        let n = rows.checked_mul(cols)?;
        let ok = match weights {
            Weights::F32(w) => w.len() == n,
            Weights::F16(w) => w.len() == n,
            Weights::Q8(w) => cols.is_multiple_of(QK) && w.len() * QK == n,
            Weights::Q4(w) => cols.is_multiple_of(QK) && w.len() * QK == n,
        };
        ok.then_some(Matrix {
            rows,
            cols,
            weights,
        })
    }

    /// The storage dtype.
    pub fn dtype(&self) -> DType {
        match self.weights {
            Weights::F32(_) => DType::F32,
            Weights::F16(_) => DType::F16,
            Weights::Q8(_) => DType::Q8,
            Weights::Q4(_) => DType::Q4,
        }
    }

    /// Bytes of weights (what one pass over the matrix streams from memory).
    pub fn byte_len(&self) -> usize {
        match self.weights {
            Weights::F32(w) => std::mem::size_of_val(w),
            Weights::F16(w) => std::mem::size_of_val(w),
            Weights::Q8(w) => std::mem::size_of_val(w),
            Weights::Q4(w) => std::mem::size_of_val(w),
        }
    }

    /// The view of rows `start..start + n` (`start + n <= rows`).
    pub fn rows_slice(&self, start: usize, n: usize) -> Matrix<'a> {
        let (a, b) = (start * self.cols, (start + n) * self.cols);
        let weights = match self.weights {
            Weights::F32(w) => Weights::F32(&w[a..b]),
            Weights::F16(w) => Weights::F16(&w[a..b]),
            Weights::Q8(w) => Weights::Q8(&w[a / QK..b / QK]),
            Weights::Q4(w) => Weights::Q4(&w[a / QK..b / QK]),
        };
        Matrix {
            rows: n,
            cols: self.cols,
            weights,
        }
    }
}

/// A matrix stored as two row ranges: rows `0..head.rows` in `head`, the rest in `tail`, possibly
/// in different dtypes (both `cols` wide). Without a head it is just `tail`.
#[derive(Clone, Copy, Debug)]
pub struct SplitMatrix<'a> {
    /// The first rows, if stored apart.
    pub head: Option<Matrix<'a>>,
    /// The remaining rows.
    pub tail: Matrix<'a>,
}

impl<'a> SplitMatrix<'a> {
    /// A matrix stored in one piece.
    pub fn whole(m: Matrix<'a>) -> Self {
        SplitMatrix {
            head: None,
            tail: m,
        }
    }

    /// Total rows.
    pub fn rows(&self) -> usize {
        self.head.map_or(0, |h| h.rows) + self.tail.rows
    }

    /// Columns (the same in both parts).
    pub fn cols(&self) -> usize {
        self.tail.cols
    }

    /// Rows stored in the head part.
    pub fn head_rows(&self) -> usize {
        self.head.map_or(0, |h| h.rows)
    }

    /// The part holding row `r` and the row's index within it.
    pub fn locate(&self, r: usize) -> (&Matrix<'a>, usize) {
        match &self.head {
            Some(h) if r < h.rows => (h, r),
            Some(h) => (&self.tail, r - h.rows),
            None => (&self.tail, r),
        }
    }

    /// Bytes of weights in both parts.
    pub fn byte_len(&self) -> usize {
        self.head.map_or(0, |h| h.byte_len()) + self.tail.byte_len()
    }
}
