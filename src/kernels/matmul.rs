//! Matrix products over the dispatch table: activation quantisation and preparation once per
//! product, row tiles in parallel (rayon), a batch's rows kept in cache while every token passes,
//! and the moves from the kernels' outputs (`(rows, tokens)`, or `(tokens, rows)` per task) to the
//! callers' `(tokens, rows)`.

use rayon::prelude::*;

use std::mem::{size_of, size_of_val};

use super::{add_assign, ops, prepared_len, MatmulFn, Ops, OutLayout, PrepLane};
use crate::quant::{BlockQ8Act, QK};
use crate::tensor::{Matrix, SplitMatrix, Weights};

/// Scratch for matrix products: activations quantised to int8, the table's preparation of them
/// and a transposed output tile. Sized once per session for the widest input and the largest
/// batch, so the per-token loop never allocates.
pub struct MatmulScratch {
    act: Vec<BlockQ8Act>,
    prep: Vec<PrepLane>,
    out_t: Vec<f32>,
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
            out_t: vec![0.0; max_rows * max_tokens],
            max_cols,
            max_tokens,
        }
    }

    /// Bytes [`MatmulScratch::new`] allocates for these arguments (the memory plan's figure).
    pub fn byte_len_for(max_cols: usize, max_rows: usize, max_tokens: usize) -> usize {
        let nb = max_cols.div_ceil(QK);
        nb * max_tokens * size_of::<BlockQ8Act>()
            + prepared_len(max_tokens, nb) * size_of::<PrepLane>()
            + max_rows * max_tokens * size_of::<f32>()
    }

    /// Bytes held.
    pub fn byte_len(&self) -> usize {
        size_of_val(self.act.as_slice())
            + size_of_val(self.prep.as_slice())
            + size_of_val(self.out_t.as_slice())
    }
}

/// Below this many weights a product runs on one thread: splitting costs more than it saves.
const PARALLEL_MIN_WEIGHTS: usize = 1 << 16;
/// Rows per parallel task: small enough to balance, large enough that a task's weights amortise
/// its scheduling, and for a batch, small enough to stay in L1/L2 while every token uses them.
const ROWS_PER_TASK: usize = 16;

/// `y[t] = W · x[t]` for `n` tokens: `x` is `(n, w.cols)` and `y` is `(n, w.rows)`, row-major.
pub fn matmul(w: &Matrix<'_>, x: &[f32], n: usize, y: &mut [f32], scratch: &mut MatmulScratch) {
    matmul_with(ops(), w, x, n, y, scratch);
}

/// The activation quantisers skip NaN when taking `max |x|` (as `f32::max` does) and store it as
/// 0, which would silently turn a NaN activation (a damaged weight upstream) into a plausible
/// one. A block holding a NaN gets a NaN scale instead, so the fault reaches the logits, where
/// the sampler reports it. (An infinite value already gives `0 * inf = NaN` in the dot products.)
fn poison_nan_blocks(xs: &[f32], act: &mut [BlockQ8Act]) {
    for (block, a) in xs.chunks_exact(QK).zip(act) {
        // A count rather than `any`: without the early exit the loop vectorises (a tenth of
        // the instructions on NEON).
        if block.iter().map(|v| v.is_nan() as u32).sum::<u32>() > 0 {
            a.d = f32::NAN;
        }
    }
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
    matmul_parts(ops(), w.head.as_ref(), &w.tail, x, n, y, scratch);
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
    matmul_parts(ops, None, w, x, n, y, scratch);
}

/// The product of the matrix whose rows are `head`'s (if any) then `tail`'s with `n` tokens.
fn matmul_parts(
    ops: &Ops,
    head: Option<&Matrix<'_>>,
    tail: &Matrix<'_>,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    scratch: &mut MatmulScratch,
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
        let quantize = |(xs, a): (&[f32], &mut [BlockQ8Act])| {
            (ops.quantize_act)(xs, a);
            poison_nan_blocks(xs, a);
        };
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
    // kernels lay out a call's output token-major, `(n, task rows)` per task. One token's output
    // is `y` itself in both layouts, and so is a token-major product made by one task.
    let token_major = ops.out_layout == OutLayout::TokenMajor;
    let direct = n == 1 || (token_major && head.is_none() && task_rows(tail, n) >= tail.rows);
    let out = if direct {
        &mut *y
    } else {
        &mut scratch.out_t[..n * rows]
    };
    let (out_head, out_tail) = out.split_at_mut(head_rows * n);
    if let Some(h) = head {
        matmul_part(ops, h, x, (act, &mut *prep), n, out_head);
    }
    matmul_part(ops, tail, x, (act, prep), n, out_tail);
    if !direct {
        let out_t = &scratch.out_t[..n * rows];
        if token_major {
            let parts = [head, Some(tail)].map(|p| p.map_or((0, 1), |m| (m.rows, task_rows(m, n))));
            gather_tasks(out_t, parts, n, y);
        } else {
            transpose(out_t, rows, n, y);
        }
    }
}

/// `y` `(n, rows)` from the parts' outputs one after the other, each made of tasks of
/// `(part rows, rows per task)` whose outputs are `(n, task rows)`: per token, each task's run
/// of outputs is copied into place, 16 tokens per parallel task.
fn gather_tasks(y_t: &[f32], parts: [(usize, usize); 2], n: usize, y: &mut [f32]) {
    const TOKENS: usize = 16;
    let rows = parts[0].0 + parts[1].0;
    let tokens = |(i, ys): (usize, &mut [f32])| {
        let t0 = i * TOKENS;
        let (mut src, mut col) = (y_t, 0);
        for (part_rows, task) in parts {
            let (part, rest) = src.split_at(part_rows * n);
            for (j, out) in part.chunks(task * n).enumerate() {
                let len = out.len() / n;
                let c = col + j * task;
                let runs = out[t0 * len..].chunks_exact(len);
                for (run, dst) in runs.zip(ys.chunks_exact_mut(rows)) {
                    dst[c..c + len].copy_from_slice(run);
                }
            }
            (src, col) = (rest, col + part_rows);
        }
    };
    if rows * n < PARALLEL_MIN_WEIGHTS {
        y.chunks_mut(TOKENS * rows).enumerate().for_each(tokens);
    } else {
        y.par_chunks_mut(TOKENS * rows).enumerate().for_each(tokens);
    }
}

/// `y` `(n, rows)` from `y_t` `(rows, n)`, 16 tokens per parallel task and 16 × 16 tiles within
/// it, so that the cache lines read or written are used whole while they are in L1 (one token at a
/// time, on one thread, took 7% of a prefill at one thread and more at two).
fn transpose(y_t: &[f32], rows: usize, n: usize, y: &mut [f32]) {
    const TILE: usize = 16;
    let tokens = |(i, ys): (usize, &mut [f32])| {
        let t0 = i * TILE;
        for r0 in (0..rows).step_by(TILE) {
            let r1 = (r0 + TILE).min(rows);
            // Contiguous stores, strided loads: the store buffer drains a line at a time.
            for (k, y) in ys.chunks_exact_mut(rows).enumerate() {
                for (r, v) in (r0..r1).zip(&mut y[r0..r1]) {
                    *v = y_t[r * n + t0 + k];
                }
            }
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
    rows_parallel(w, n, out, |part, ys| match part.weights {
        Weights::Q8(wb) => tiled(ops.matmul_q8, wb, (act, prep), (nb, tile_rows), n, ys),
        Weights::Q4(wb) => tiled(ops.matmul_q4, wb, (act, prep), (nb, tile_rows), n, ys),
        Weights::F32(_) | Weights::F16(_) => {
            for r in 0..part.rows {
                for (t, xs) in x.chunks_exact(w.cols).enumerate() {
                    ys[ops.out_layout.index(r, t, part.rows, n)] = dot_row(ops, part, r, xs);
                }
            }
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

/// Runs `f(tile, outputs)` over tasks of [`task_rows`] rows of `w` (outputs `tile.rows · n`
/// values, one contiguous slice each), in parallel when there are several.
fn rows_parallel(
    w: &Matrix<'_>,
    n: usize,
    y_t: &mut [f32],
    f: impl Fn(&Matrix<'_>, &mut [f32]) + Sync,
) {
    let rows_per_task = task_rows(w, n);
    if rows_per_task >= w.rows {
        f(w, y_t);
        return;
    }
    y_t.par_chunks_mut(rows_per_task * n)
        .enumerate()
        .for_each(|(i, ys)| {
            let part = w.rows_slice(i * rows_per_task, ys.len() / n);
            f(&part, ys);
        });
}

/// `y[t] = W · x[t] + b` for `n` tokens.
pub fn linear_batch(
    w: &Matrix<'_>,
    b: &[f32],
    x: &[f32],
    n: usize,
    y: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    assert_eq!(b.len(), w.rows, "linear: bias length");
    matmul(w, x, n, y, scratch);
    for row in y.chunks_exact_mut(w.rows) {
        add_assign(row, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_moves_every_element_once() {
        for (rows, n) in [(1, 2), (16, 16), (37, 21), (3, 130)] {
            let y_t: Vec<f32> = (0..rows * n).map(|i| i as f32).collect();
            let mut y = vec![-1.0; rows * n];
            transpose(&y_t, rows, n, &mut y);
            for r in 0..rows {
                for t in 0..n {
                    assert_eq!(y[t * rows + r], y_t[r * n + t], "{rows}x{n} [{r},{t}]");
                }
            }
        }
    }
}
