//! Matrix products over the dispatch table: activation quantisation and preparation once per
//! product, row tiles in parallel (rayon), a batch's rows kept in cache while every token passes,
//! and the moves from the kernels' outputs (`(rows, tokens)`, or `(tokens, rows)` per task) to the
//! callers' `(tokens, rows)`, which also add a linear layer's bias and apply what follows it
//! ([`Then`]: GELU, or the residual add) while the values are in cache.

use rayon::prelude::*;

use std::mem::{size_of, size_of_val};

use super::{ops, prepared_len, MatmulFn, Ops, OutLayout, PrepLane};
use crate::aligned::AlignedVec;
use crate::quant::{BlockQ8Act, QK};
use crate::tensor::{Matrix, SplitMatrix, Weights};

/// Scratch for matrix products: activations quantised to int8, the table's preparation of them
/// and a transposed output tile. Sized once per session for the widest input and the largest
/// batch, so the per-token loop never allocates.
pub struct MatmulScratch {
    act: Vec<BlockQ8Act>,
    prep: Vec<PrepLane>,
    out_t: AlignedVec,
    max_cols: usize,
    max_tokens: usize,
}

impl MatmulScratch {
    /// Room for `max_tokens` input rows of up to `max_cols` values and outputs of up to
    /// `max_rows` values each.
    pub fn new(max_cols: usize, max_rows: usize, max_tokens: usize) -> Self {
        let nb = max_cols.div_ceil(QK);
        MatmulScratch {
            act: vec![BlockQ8Act::default(); nb * max_tokens],
            prep: vec![PrepLane::default(); prepared_len(max_tokens, nb)],
            out_t: AlignedVec::zeroed(max_rows * max_tokens),
            max_cols,
            max_tokens,
        }
    }

    /// Bytes [`MatmulScratch::new`] allocates for these arguments (the memory plan's figure).
    pub fn byte_len_for(max_cols: usize, max_rows: usize, max_tokens: usize) -> usize {
        let nb = max_cols.div_ceil(QK);
        nb * max_tokens * size_of::<BlockQ8Act>()
            + prepared_len(max_tokens, nb) * size_of::<PrepLane>()
            + AlignedVec::byte_len_for(max_rows * max_tokens)
    }

    /// Bytes held.
    pub fn byte_len(&self) -> usize {
        size_of_val(self.act.as_slice()) + size_of_val(self.prep.as_slice()) + self.out_t.byte_len()
    }
}

/// Below this many weights a product runs on one thread: splitting costs more than it saves.
const PARALLEL_MIN_WEIGHTS: usize = 1 << 16;
/// Rows per parallel task: small enough to balance, large enough that a task's weights amortise
/// its scheduling, and for a batch, small enough to stay in L1/L2 while every token uses them.
const ROWS_PER_TASK: usize = 16;

/// What [`linear_batch`] does with each output value `W · x + b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// `y = W · x + b`.
    Store,
    /// `y = gelu_tanh(W · x + b)` (GPT-2's MLP, `gelu_new`).
    GeluTanh,
    /// `y = gelu_erf(W · x + b)`.
    GeluErf,
    /// `y += W · x + b` (a residual connection: `y` is the residual stream).
    Add,
}

/// A linear layer's bias and what follows it, applied to a product's output on its way to `y`.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    pub(crate) bias: &'a [f32],
    pub(crate) then: Then,
    /// The GELU `then` names, as the table computes it (the tanh form's SIMD twin; the erf form
    /// is scalar only).
    gelu: fn(&mut [f32]),
}

impl<'a> Epilogue<'a> {
    fn new(ops: &Ops, bias: &'a [f32], then: Then) -> Self {
        let gelu = match then {
            Then::GeluErf => super::scalar::gelu_erf,
            _ => ops.gelu_tanh,
        };
        Epilogue { bias, then, gelu }
    }

    /// The epilogue of rows `r0..r0 + len` of this one's (bias `r0..`).
    pub(crate) fn rows(&self, r0: usize, len: usize) -> Self {
        Epilogue {
            bias: &self.bias[r0..r0 + len],
            ..*self
        }
    }

    /// Columns `c..c + src.len()` of one token's output: `src` is the product, `dst` the row's
    /// slice of `y`.
    pub(crate) fn apply(&self, c: usize, src: &[f32], dst: &mut [f32]) {
        let b = &self.bias[c..c + src.len()];
        let pairs = dst.iter_mut().zip(src.iter().zip(b));
        match self.then {
            Then::Add => pairs.for_each(|(d, (s, b))| *d += s + b),
            Then::Store => pairs.for_each(|(d, (s, b))| *d = s + b),
            Then::GeluTanh | Then::GeluErf => {
                pairs.for_each(|(d, (s, b))| *d = s + b);
                (self.gelu)(dst);
            }
        }
    }

    /// Columns `c..c + y.len()` of one token's output, in place, for everything but
    /// [`Then::Add`] (which needs the product apart from `y`).
    fn finish(&self, ops: &Ops, c: usize, y: &mut [f32]) {
        (ops.add_assign)(y, &self.bias[c..c + y.len()]);
        if matches!(self.then, Then::GeluTanh | Then::GeluErf) {
            (self.gelu)(y);
        }
    }
}

/// [`Epilogue::finish`] over every `rows`-wide token row of `y`, 16 tokens per parallel task.
fn finish_rows(ops: &Ops, epi: &Epilogue<'_>, rows: usize, y: &mut [f32]) {
    const TOKENS: usize = 16;
    let tokens = |ys: &mut [f32]| {
        ys.chunks_exact_mut(rows)
            .for_each(|y| epi.finish(ops, 0, y))
    };
    if y.len() < PARALLEL_MIN_WEIGHTS {
        tokens(y);
    } else {
        y.par_chunks_mut(TOKENS * rows).for_each(tokens);
    }
}

/// Where a kernel that finishes its own outputs ([`super::MatmulInto`]) puts them: output row
/// `r` of the call, token `t`, becomes `W · x + bias[r]` and then what the epilogue says, at
/// `ptr + t · stride + r`.
// Only the x86-64 tables finish their own outputs so far; elsewhere nothing reads these.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy)]
pub struct Dest<'a> {
    ptr: *mut f32,
    stride: usize,
    pub(crate) epi: Epilogue<'a>,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Dest<'_> {
    /// Token `t`'s outputs from row `r0`, `len` of them.
    ///
    /// # Safety
    /// Rows `r0..r0 + len` must be within the call's rows and `t` below its tokens; the call
    /// must be the only writer of them (the contract of the [`super::MatmulIntoFn`] that got
    /// this `Dest`).
    // A `Dest` is a raw pointer lent for the call: exclusivity is this function's contract, not
    // the borrow of `self`.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn run(&self, t: usize, r0: usize, len: usize) -> &mut [f32] {
        // SAFETY: by this function's contract, within the destination the caller lent out and
        // written by no one else meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(t * self.stride + r0), len) }
    }

    /// Finishes token `t`'s product values `src` for rows `r0..` into place.
    ///
    /// # Safety
    /// As [`Dest::run`] for `src.len()` rows.
    pub(crate) unsafe fn put(&self, t: usize, r0: usize, src: &[f32]) {
        // SAFETY: as this function's contract.
        let dst = unsafe { self.run(t, r0, src.len()) };
        self.epi.apply(r0, src, dst);
    }
}

/// `y[t] = W · x[t]` for `n` tokens: `x` is `(n, w.cols)` and `y` is `(n, w.rows)`, row-major.
pub fn matmul(w: &Matrix<'_>, x: &[f32], n: usize, y: &mut [f32], scratch: &mut MatmulScratch) {
    matmul_with(ops(), w, x, n, y, scratch);
}

/// [`matmul`] over a matrix stored in two row ranges (the token embedding as LM head): `y` is
/// `(n, w.rows())`, as if the parts were one matrix.
pub fn matmul_split(
    w: &SplitMatrix<'_>,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    matmul_parts(ops(), (w.head.as_ref(), &w.tail), x, n, y, scratch, None);
}

/// [`matmul`] with a given table of operations (benchmarks compare SIMD with scalar this way).
pub fn matmul_with(
    ops: &Ops,
    w: &Matrix<'_>,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    matmul_parts(ops, (None, w), x, n, y, scratch, None);
}

/// The product of the matrix whose rows are `head`'s (if any) then `tail`'s with `n` tokens,
/// through `epi` if given (else stored as it is).
fn matmul_parts(
    ops: &Ops,
    (head, tail): (Option<&Matrix<'_>>, &Matrix<'_>),
    x: &[f32],
    n: usize,
    y: &mut [f32],
    scratch: &mut MatmulScratch,
    epi: Option<Epilogue<'_>>,
) {
    let cols = tail.cols;
    let head_rows = head.map_or(0, |h| h.rows);
    let rows = head_rows + tail.rows;
    assert!(
        head.is_none_or(|h| h.cols == cols),
        "matmul: parts differ in width"
    );
    assert_eq!(x.len(), n * cols, "matmul: input length");
    assert_eq!(y.len(), n * rows, "matmul: output length");
    assert!(
        cols <= scratch.max_cols && n <= scratch.max_tokens,
        "matmul: scratch too small"
    );
    let nb = cols / QK;
    let act = &mut scratch.act[..nb * n];
    let quantised = |w: &Matrix<'_>| matches!(w.weights, Weights::Q8(_) | Weights::Q4(_));
    if quantised(tail) || head.is_some_and(quantised) {
        let quantize = |(xs, a): (&[f32], &mut [BlockQ8Act])| (ops.quantize_act)(xs, a);
        if n * cols < PARALLEL_MIN_WEIGHTS {
            x.chunks_exact(cols)
                .zip(act.chunks_exact_mut(nb))
                .for_each(quantize);
        } else {
            x.par_chunks_exact(cols)
                .zip(act.par_chunks_exact_mut(nb))
                .for_each(quantize);
        }
    }
    let (act, prep) = (&*act, &mut scratch.prep[..prepared_len(n, nb)]);
    // Row tiles in parallel, every token against a tile while it is in cache. Each task (and
    // each part) writes one contiguous slice of the output: `(rows, n)` or, for a table whose
    // kernels lay out a call's output token-major, `(n, task rows)` per task, which the task
    // then moves into its columns of `y`. One token's output is `y` itself in both layouts, and
    // so is a token-major product made by one task (unless it adds into `y`).
    let token_major = ops.out_layout == OutLayout::TokenMajor;
    // `y += …` needs the product apart from `y`.
    let adds = epi.is_some_and(|e| e.then == Then::Add);
    let direct =
        !adds && (n == 1 || (token_major && head.is_none() && task_rows(tail, n) >= tail.rows));
    // A table whose batch kernels finish their outputs themselves stores them in place.
    let finished_by_kernel = epi.is_some() && n > 1 && ops.matmul_into.is_some();
    let epi_ops = epi.as_ref().map(|e| (ops, e));
    if token_major && (!direct || finished_by_kernel) {
        // Each task moves its `(n, task rows)` output into its columns of `y` itself, while
        // the output is in cache, in the same parallel section as the product.
        let (out_head, out_tail) = scratch.out_t[..n * rows].split_at_mut(head_rows * n);
        let y = YColumns::new(y, rows, n);
        if let Some(h) = head {
            matmul_part(
                ops,
                h,
                x,
                (act, &mut *prep),
                n,
                out_head,
                Some(y.at(0, epi_ops)),
            );
        }
        let sink = Some(y.at(head_rows, epi_ops));
        matmul_part(ops, tail, x, (act, prep), n, out_tail, sink);
        return;
    }
    let out = if direct {
        &mut *y
    } else {
        &mut scratch.out_t[..n * rows]
    };
    let (out_head, out_tail) = out.split_at_mut(head_rows * n);
    if let Some(h) = head {
        matmul_part(ops, h, x, (act, &mut *prep), n, out_head, None);
    }
    matmul_part(ops, tail, x, (act, prep), n, out_tail, None);
    match (direct, &epi) {
        (true, Some(epi)) => finish_rows(ops, epi, rows, y),
        (true, None) => {}
        (false, _) => transpose(&scratch.out_t[..n * rows], rows, n, y, epi_ops),
    }
}

/// The caller's output `y` `(n, rows)` shared by the row tasks of a token-major product, each of
/// which writes its own columns of every token's row ([`Sink::put`]).
struct YColumns<'y> {
    ptr: *mut f32,
    rows: usize,
    n: usize,
    _y: std::marker::PhantomData<&'y mut [f32]>,
}

impl<'y> YColumns<'y> {
    fn new(y: &'y mut [f32], rows: usize, n: usize) -> Self {
        assert_eq!(y.len(), rows * n, "matmul: output length");
        YColumns {
            ptr: y.as_mut_ptr(),
            rows,
            n,
            _y: std::marker::PhantomData,
        }
    }

    /// Where the tasks of a part whose first row is column `col0` of `y` put their outputs.
    fn at<'s>(&'s self, col0: usize, epi: Option<(&'s Ops, &'s Epilogue<'s>)>) -> Sink<'s> {
        Sink { y: self, col0, epi }
    }
}

// SAFETY: `YColumns` is a `&mut [f32]` split by columns: the tasks that share it write disjoint
// columns ([`Sink::put`]'s contract) and nothing reads `y` while they run.
unsafe impl Send for YColumns<'_> {}
// SAFETY: as above.
unsafe impl Sync for YColumns<'_> {}

/// One part's way into [`YColumns`]: its first column and the epilogue.
#[derive(Clone, Copy)]
struct Sink<'s> {
    y: &'s YColumns<'s>,
    col0: usize,
    epi: Option<(&'s Ops, &'s Epilogue<'s>)>,
}

impl Sink<'_> {
    /// The destination of a task's rows `r0..r0 + len` for a kernel that finishes its outputs
    /// ([`super::MatmulInto`]); `None` without an epilogue.
    fn dest(&self, r0: usize, len: usize) -> Option<Dest<'_>> {
        let (_, epi) = self.epi?;
        let c = self.col0 + r0;
        assert!(c + len <= self.y.rows, "matmul: task outside the output");
        Some(Dest {
            // In bounds (`c < rows`, or the end when `len` is 0).
            ptr: self.y.ptr.wrapping_add(c),
            stride: self.y.rows,
            epi: epi.rows(c, len),
        })
    }

    /// Moves a task's output `out` `(n, len)` for the part's rows `r0..r0 + len` into columns
    /// `col0 + r0..` of every token's row of `y`, through the epilogue if any.
    ///
    /// # Safety
    /// No other task of the product may put the same rows of the same part, and nothing else may
    /// access `y` until the tasks are done.
    unsafe fn put(&self, r0: usize, out: &[f32]) {
        let YColumns { ptr, rows, n, .. } = *self.y;
        let len = out.len() / n;
        let c = self.col0 + r0;
        assert!(
            c + len <= rows && out.len() == len * n,
            "matmul: task outside the output"
        );
        for (t, run) in out.chunks_exact(len.max(1)).enumerate() {
            // SAFETY: `t · rows + c + len <= n · rows = y.len()` by the assertion, `y` is
            // exclusively borrowed for `'y`, and by this function's contract no other task
            // writes these columns.
            let dst = unsafe { std::slice::from_raw_parts_mut(ptr.add(t * rows + c), len) };
            match self.epi {
                Some((_, e)) => e.apply(c, run, dst),
                None => dst.copy_from_slice(run),
            }
        }
    }
}

/// `y` `(n, rows)` from `y_t` `(rows, n)`, 16 tokens per parallel task and 16 × 16 tiles within
/// it, so that the cache lines read or written are used whole while they are in L1 (one token at a
/// time, on one thread, took 7% of a prefill at one thread and more at two); through `epi`, if
/// given, once a task's tokens are in place.
fn transpose(
    y_t: &[f32],
    rows: usize,
    n: usize,
    y: &mut [f32],
    epi: Option<(&Ops, &Epilogue<'_>)>,
) {
    const TILE: usize = 16;
    let add_bias = epi.and_then(|(_, e)| (e.then == Then::Add).then_some(e.bias));
    let tokens = |(i, ys): (usize, &mut [f32])| {
        let t0 = i * TILE;
        for r0 in (0..rows).step_by(TILE) {
            let r1 = (r0 + TILE).min(rows);
            // Contiguous stores, strided loads: the store buffer drains a line at a time.
            for (k, y) in ys.chunks_exact_mut(rows).enumerate() {
                let values = (r0..r1).map(|r| y_t[r * n + t0 + k]);
                match add_bias {
                    Some(b) => {
                        for ((v, p), b) in y[r0..r1].iter_mut().zip(values).zip(&b[r0..r1]) {
                            *v += p + b;
                        }
                    }
                    None => y[r0..r1].iter_mut().zip(values).for_each(|(v, p)| *v = p),
                }
            }
        }
        if let Some((ops, e)) = epi.filter(|(_, e)| e.then != Then::Add) {
            ys.chunks_exact_mut(rows).for_each(|y| e.finish(ops, 0, y));
        }
    };
    if rows * n < PARALLEL_MIN_WEIGHTS {
        y.chunks_mut(TILE * rows).enumerate().for_each(tokens);
    } else {
        y.par_chunks_mut(TILE * rows).enumerate().for_each(tokens);
    }
}

/// One matrix against `n` tokens (`x` as floats, `act` quantised, with room to prepare it)
/// into `out`, `(w.rows, n)`. The activation is prepared once here, on the calling thread, and
/// shared by every row task.
fn matmul_part(
    ops: &Ops,
    w: &Matrix<'_>,
    x: &[f32],
    (act, prep): (&[BlockQ8Act], &mut [PrepLane]),
    n: usize,
    out: &mut [f32],
    sink: Option<Sink<'_>>,
) {
    let nb = w.cols / QK;
    match w.weights {
        Weights::Q8(_) => (ops.prepare_q8)(act, nb, prep),
        Weights::Q4(_) => (ops.prepare_q4)(act, nb, prep),
        Weights::F32(_) | Weights::F16(_) => {}
    }
    let prep = &*prep;
    // A token-major kernel gets the whole task (its output must be one `(n, task rows)` block);
    // the NEON kernels keep their packed rows in L1 themselves.
    let tile_rows = ops.out_layout == OutLayout::RowMajor;
    let into = ops.matmul_into.filter(|_| n > 1 && nb > 0);
    rows_parallel(w, n, out, |part, r0, ys| {
        if let Some((k, d)) = into.zip(sink.as_ref().and_then(|s| s.dest(r0, part.rows))) {
            // SAFETY: `d` covers this task's rows of `y` only (`rows_parallel` hands each task a
            // different row range) for every token, and nothing else touches `y` until
            // `matmul_parts` returns.
            match part.weights {
                Weights::Q8(wb) => return unsafe { (k.q8)(wb, act, prep, nb, ys, d) },
                Weights::Q4(wb) => return unsafe { (k.q4)(wb, act, prep, nb, ys, d) },
                Weights::F32(_) | Weights::F16(_) => {}
            }
        }
        match part.weights {
            Weights::Q8(wb) => tiled(ops.matmul_q8, wb, (act, prep), (nb, tile_rows), n, ys),
            Weights::Q4(wb) => tiled(ops.matmul_q4, wb, (act, prep), (nb, tile_rows), n, ys),
            Weights::F32(_) | Weights::F16(_) => {
                for r in 0..part.rows {
                    for (t, xs) in x.chunks_exact(w.cols).enumerate() {
                        ys[ops.out_layout.index(r, t, part.rows, n)] = dot_row(ops, part, r, xs);
                    }
                }
            }
        }
        if let Some(sink) = &sink {
            // SAFETY: `rows_parallel` hands each task a different row range of `w`, and `y`
            // is touched by nothing but the tasks until `matmul_parts` returns.
            unsafe { sink.put(r0, ys) };
        }
    });
}

/// Float dot product of row `r` of `part` with one token's input (quantised weights go through
/// [`tiled`] instead).
#[inline]
fn dot_row(ops: &Ops, part: &Matrix<'_>, r: usize, x: &[f32]) -> f32 {
    let cols = part.cols;
    match part.weights {
        Weights::F32(w) => (ops.dot_f32)(&w[r * cols..(r + 1) * cols], x),
        Weights::F16(w) => (ops.dot_f16)(&w[r * cols..(r + 1) * cols], x),
        Weights::Q8(_) | Weights::Q4(_) => unreachable!("quantised rows go through `tiled`"),
    }
}

/// Rows the widest packed kernel takes as a group (AVX-512's sixteen i32 lanes); row tiles and
/// tasks are multiples of it.
const GROUP_ROWS: usize = 16;

/// Bytes of weights a batch works on at a time: the rows stay in L2 while every token of the
/// batch passes over them.
const TILE_WEIGHT_BYTES: usize = 96 << 10;

/// Runs a `matmul_q8`/`matmul_q4` kernel over `w` (rows of `nb` blocks) and `n` tokens of `act`
/// (prepared as `prep`) into `ys`, with `tile_rows` a few rows at a time so a batch reuses them
/// from cache (then `ys` is `(rows, n)`), else in one call.
fn tiled<W>(
    kernel: MatmulFn<W>,
    w: &[W],
    (act, prep): (&[BlockQ8Act], &[PrepLane]),
    (nb, tile_rows): (usize, bool),
    n: usize,
    ys: &mut [f32],
) {
    if nb == 0 {
        ys.fill(0.0);
        return;
    }
    let rows = if n == 1 || !tile_rows {
        w.len() / nb
    } else {
        (TILE_WEIGHT_BYTES / (nb * std::mem::size_of::<W>())).max(GROUP_ROWS) / GROUP_ROWS
            * GROUP_ROWS
    };
    for (wc, yc) in w.chunks(rows * nb).zip(ys.chunks_mut(rows * n)) {
        kernel(wc, act, prep, nb, yc);
    }
}

/// Rows per parallel task of a product of `w` with `n` tokens: `w.rows` (or more) when it runs as
/// one task.
fn task_rows(w: &Matrix<'_>, n: usize) -> usize {
    let threads = rayon::current_num_threads();
    if threads == 1 || w.rows * w.cols * n < PARALLEL_MIN_WEIGHTS {
        return w.rows.max(1);
    }
    // A batch works in larger tasks: each one converts its activations' per-block terms and
    // packs its weights once. Multiples of `GROUP_ROWS` keep the batch kernels' row groups
    // whole; one token's rows go eight at a time, finer for the threads to share.
    let (tasks_per_thread, group) = if n == 1 { (16, 8) } else { (4, GROUP_ROWS) };
    ROWS_PER_TASK
        .max(w.rows / (threads * tasks_per_thread))
        .next_multiple_of(group)
}

/// Runs `f(tile, first row, outputs)` over tasks of [`task_rows`] rows of `w` (outputs
/// `tile.rows · n` values, one contiguous slice each), in parallel when there are several.
fn rows_parallel(
    w: &Matrix<'_>,
    n: usize,
    y_t: &mut [f32],
    f: impl Fn(&Matrix<'_>, usize, &mut [f32]) + Sync,
) {
    let rows_per_task = task_rows(w, n);
    if rows_per_task >= w.rows {
        f(w, 0, y_t);
        return;
    }
    y_t.par_chunks_mut(rows_per_task * n)
        .enumerate()
        .for_each(|(i, ys)| {
            let part = w.rows_slice(i * rows_per_task, ys.len() / n);
            f(&part, i * rows_per_task, ys);
        });
}

/// `y[t] = W · x[t] + b` for `n` tokens, then what `then` says (GELU, or added into `y`); the
/// bias and `then` are applied as the product's output moves into place, not in passes of
/// their own.
#[allow(clippy::too_many_arguments)]
pub fn linear_batch(
    w: &Matrix<'_>,
    b: &[f32],
    x: &[f32],
    n: usize,
    y: &mut [f32],
    scratch: &mut MatmulScratch,
    then: Then,
) {
    assert_eq!(b.len(), w.rows, "linear: bias length");
    let ops = ops();
    let epi = Epilogue::new(ops, b, then);
    matmul_parts(ops, (None, w), x, n, y, scratch, Some(epi));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmap::{self, ModelFile};
    use crate::quant::{encode_tensor, DType};
    use crate::rng::Rng;

    fn matrix(file: &ModelFile, dtype: DType, rows: usize, cols: usize) -> Matrix<'_> {
        let b = file.bytes();
        let w = match dtype {
            DType::Q8 => Weights::Q8(mmap::as_q8(b).unwrap()),
            DType::Q4 => Weights::Q4(mmap::as_q4(b).unwrap()),
            _ => Weights::F32(mmap::as_f32(b).unwrap()),
        };
        Matrix::new(rows, cols, w).unwrap()
    }

    /// `W · x + b` and what follows it, applied as the output moves into place or by the
    /// kernels themselves, equal what the separate passes give (the plain product, then the
    /// bias, GELU or the residual add), bit for bit, for every table, on one and two threads
    /// (one task written in place, tasks writing their columns, transposed), one token and
    /// batches with leftover tiles.
    #[test]
    fn linear_epilogues_equal_separate_passes() {
        // Sixteen-row groups in one chunk of blocks; and rows outside the groups with two
        // chunks of blocks (partial sums before the finished values).
        for (rows, cols) in [(96, 128), (100, 1088)] {
            linear_epilogues_equal_separate_passes_for(rows, cols);
        }
    }

    fn linear_epilogues_equal_separate_passes_for(rows: usize, cols: usize) {
        let mut rng = Rng::new(11);
        let bias = rng.floats(rows, 1.0);
        for dtype in [DType::Q8, DType::Q4, DType::F32] {
            let file =
                ModelFile::from_bytes(&encode_tensor(dtype, &rng.floats(rows * cols, 0.1), cols));
            let w = matrix(&file, dtype, rows, cols);
            for ops in super::super::tables() {
                for threads in [1, 2] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    for n in [1, 3, 20, 37] {
                        let x = rng.floats(n * cols, 1.0);
                        let residual = rng.floats(n * rows, 1.0);
                        let mut scratch = MatmulScratch::new(cols, rows, n);
                        let mut plain = vec![0f32; n * rows];
                        pool.install(|| matmul_with(&ops, &w, &x, n, &mut plain, &mut scratch));
                        for then in [Then::Store, Then::GeluTanh, Then::GeluErf, Then::Add] {
                            let mut want = residual.clone();
                            for (t, y) in want.chunks_exact_mut(rows).enumerate() {
                                let p = &plain[t * rows..(t + 1) * rows];
                                let mut z: Vec<f32> =
                                    p.iter().zip(&bias).map(|(p, b)| p + b).collect();
                                match then {
                                    Then::Add => y
                                        .iter_mut()
                                        .zip(p.iter().zip(&bias))
                                        .for_each(|(y, (p, b))| *y += p + b),
                                    Then::GeluTanh => {
                                        (ops.gelu_tanh)(&mut z);
                                        y.copy_from_slice(&z)
                                    }
                                    Then::GeluErf => {
                                        super::super::scalar::gelu_erf(&mut z);
                                        y.copy_from_slice(&z)
                                    }
                                    Then::Store => y.copy_from_slice(&z),
                                }
                            }
                            let mut got = residual.clone();
                            let epi = Some(Epilogue::new(&ops, &bias, then));
                            pool.install(|| {
                                matmul_parts(&ops, (None, &w), &x, n, &mut got, &mut scratch, epi)
                            });
                            assert_eq!(
                                got,
                                want,
                                "{} {} t={threads} n={n} {then:?}",
                                dtype.name(),
                                ops.path.name()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn transpose_moves_every_element_once() {
        for (rows, n) in [(1, 2), (16, 16), (37, 21), (3, 130)] {
            let y_t: Vec<f32> = (0..rows * n).map(|i| i as f32).collect();
            let mut y = vec![-1.0; rows * n];
            transpose(&y_t, rows, n, &mut y, None);
            for r in 0..rows {
                for t in 0..n {
                    assert_eq!(y[t * rows + r], y_t[r * n + t], "{rows}x{n} [{r},{t}]");
                }
            }
        }
    }
}
