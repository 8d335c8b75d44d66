//! Portable scalar kernels: the reference every SIMD kernel is tested against, and the fallback
//! on CPUs without one. Written for clarity; the compiler may still auto-vectorise them.

use half::f16;

use super::{prepare_nothing, CausalTile, KernelPath, Ops, OutLayout, PrepLane};
use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act, QK};
use crate::tensor::{Matrix, Weights};

/// The scalar table.
pub fn ops() -> Ops {
    Ops {
        path: KernelPath::Scalar,
        out_layout: OutLayout::RowMajor,
        quantize_act,
        prepare_q8: prepare_nothing,
        prepare_q4: prepare_nothing,
        dot_f16,
        dot_f32,
        matmul_q8,
        matmul_q4,
        layer_norm,
        gelu_tanh,
        softmax,
        add_assign,
        axpy,
        axpy_f16,
        scores_f16,
        weighted_sum_f16,
        matmul_into: None,
    }
}

/// Quantises activations per block of 32: `d = max|x| / 127`, `q = round_ties_even(x / d)`.
pub fn quantize_act(x: &[f32], out: &mut [BlockQ8Act]) {
    assert_eq!(x.len(), out.len() * QK, "quantize_act: lengths");
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        b.d = d;
        for (q, v) in b.qs.iter_mut().zip(xs) {
            *q = (v * id).round_ties_even() as i8;
        }
    }
    super::mark_nan_blocks(x, out);
}

/// Integer dot product of q8 weights with quantised activations, one float multiply per block.
pub fn dot_q8(w: &[BlockQ8], x: &[BlockQ8Act]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_q8: lengths");
    w.iter()
        .zip(x)
        .map(|(bw, bx)| {
            let s: i32 = bw
                .qs
                .iter()
                .zip(&bx.qs)
                .map(|(&a, &b)| a as i32 * b as i32)
                .sum();
            bw.d.to_f32() * bx.d * s as f32
        })
        .sum()
}

/// Integer sum `Σ (q_w − 8) · q_x` of one q4 block against one activation block.
pub fn block_dot_q4(bw: &BlockQ4, bx: &BlockQ8Act) -> i32 {
    let mut s = 0i32;
    for j in 0..QK / 2 {
        s += ((bw.qs[j] & 0x0F) as i32 - 8) * bx.qs[j] as i32;
        s += ((bw.qs[j] >> 4) as i32 - 8) * bx.qs[j + QK / 2] as i32;
    }
    s
}

/// Integer dot product of q4 weights with quantised activations, one float multiply per block.
pub fn dot_q4(w: &[BlockQ4], x: &[BlockQ8Act]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_q4: lengths");
    w.iter()
        .zip(x)
        .map(|(bw, bx)| bw.d.to_f32() * bx.d * block_dot_q4(bw, bx) as f32)
        .sum()
}

/// Every row of `w` against every token of `x` (`nb` blocks each), `out[r · n + t]`, as
/// [`dot_q8`] computes each product (no preparation: `_prep` is not read).
pub fn matmul_q8(w: &[BlockQ8], x: &[BlockQ8Act], _prep: &[PrepLane], nb: usize, out: &mut [f32]) {
    let (_, n) = super::tile_shape(w.len(), x.len(), nb, out.len());
    for (row, o) in w.chunks_exact(nb).zip(out.chunks_exact_mut(n)) {
        for (tok, y) in x.chunks_exact(nb).zip(o.iter_mut()) {
            *y = dot_q8(row, tok);
        }
    }
}

/// Every row of `w` against every token of `x` (`nb` blocks each), `out[r · n + t]`, as
/// [`dot_q4`] computes each product (no preparation: `_prep` is not read).
pub fn matmul_q4(w: &[BlockQ4], x: &[BlockQ8Act], _prep: &[PrepLane], nb: usize, out: &mut [f32]) {
    let (_, n) = super::tile_shape(w.len(), x.len(), nb, out.len());
    for (row, o) in w.chunks_exact(nb).zip(out.chunks_exact_mut(n)) {
        for (tok, y) in x.chunks_exact(nb).zip(o.iter_mut()) {
            *y = dot_q4(row, tok);
        }
    }
}

/// Dot product of f16 weights with f32 inputs.
pub fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_f16: lengths");
    w.iter().zip(x).map(|(a, b)| a.to_f32() * b).sum()
}

/// Dot product of two float slices of equal length, with eight partial sums so the compiler can
/// vectorise it.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: lengths");
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8 * 8;
    for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a[chunks..]
        .iter()
        .zip(&b[chunks..])
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// Writes row `r` of `w` as floats into `out` (`out.len() == w.cols`).
pub fn dequantize_row(w: &Matrix<'_>, r: usize, out: &mut [f32]) {
    let cols = w.cols;
    match w.weights {
        Weights::F32(data) => out.copy_from_slice(&data[r * cols..(r + 1) * cols]),
        Weights::F16(data) => {
            for (o, v) in out.iter_mut().zip(&data[r * cols..(r + 1) * cols]) {
                *o = v.to_f32();
            }
        }
        Weights::Q8(blocks) => {
            let nb = cols / QK;
            for (b, o) in blocks[r * nb..(r + 1) * nb]
                .iter()
                .zip(out.chunks_exact_mut(QK))
            {
                b.dequantize(o.try_into().expect("chunk of QK"));
            }
        }
        Weights::Q4(blocks) => {
            let nb = cols / QK;
            for (b, o) in blocks[r * nb..(r + 1) * nb]
                .iter()
                .zip(out.chunks_exact_mut(QK))
            {
                b.dequantize(o.try_into().expect("chunk of QK"));
            }
        }
    }
}

/// Layer norm: `out = (x − mean) / sqrt(var + eps) · weight + bias`, biased variance.
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, v), w), b) in out.iter_mut().zip(x).zip(weight).zip(bias) {
        *o = (v - mean) * inv * w + b;
    }
}

/// GELU, tanh approximation (GPT-2's `gelu_new`), in place.
pub fn gelu_tanh(x: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for v in x {
        let u = SQRT_2_OVER_PI * (*v + 0.044715 * *v * *v * *v);
        *v = 0.5 * *v * (1.0 + u.tanh());
    }
}

/// GELU with the exact error function, in place.
pub fn gelu_erf(x: &mut [f32]) {
    for v in x {
        *v = 0.5 * *v * (1.0 + erf(*v / std::f32::consts::SQRT_2));
    }
}

/// Error function (Abramowitz–Stegun 7.1.26 refined in f64; |error| < 1.5e-7).
fn erf(x: f32) -> f32 {
    let x = x as f64;
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let y = 1.0 - poly * (-x * x).exp();
    (if x >= 0.0 { y } else { -y }) as f32
}

/// Softmax in place (max subtracted for stability).
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `acc += x` element-wise.
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

/// `acc += s · x` element-wise.
pub fn axpy(acc: &mut [f32], s: f32, x: &[f32]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += s * v;
    }
}

/// `acc += s · x` element-wise with f16 `x`.
pub fn axpy_f16(acc: &mut [f32], s: f32, x: &[f16]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += s * v.to_f32();
    }
}

/// Attention scores of a tile of queries against f16 keys, one query at a time with
/// [`dot_f16`]: the products the per-query path computes, in the same order.
pub fn scores_f16(keys: &[f16], q: &[f32], scale: f32, tile: &CausalTile, out: &mut [f32]) {
    super::scores_per_query(dot_f16, keys, q, scale, tile, out);
}

/// Weighted sums of f16 values for a tile of queries, one query at a time with [`axpy_f16`].
pub fn weighted_sum_f16(values: &[f16], weights: &[f32], tile: &CausalTile, out: &mut [f32]) {
    super::weighted_sum_per_query(axpy_f16, values, weights, tile, out);
}
