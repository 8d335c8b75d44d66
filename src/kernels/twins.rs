//! The twin tests: every kernel of every table this CPU runs ([`tables`]: scalar, AVX2 on x86-64,
//! NEON and NEON+`dotprod` on aarch64, armv7 NEON) against the scalar twin, on random inputs,
//! edge values and the shapes that exercise each kernel's remainders (lengths not a multiple
//! of a block or vector, gpt2-xl's 1600 and 6400). Integer block sums must agree exactly; float
//! results within the bounds documented at each test.

use half::f16;

use super::{prepared_len, scalar, tables, tile_shape, CausalTile, Ops, PrepLane};
use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act, QK};
use crate::rng::Rng;

// ---------------------------------------------------------------------------------------------
// Integer matrix products.

/// `ops`' q8 product of `w` and `x`, prepared as the matrix code prepares it, into `out` as
/// `out[r · n + t]` whatever the table's layout.
fn matmul_q8(ops: &Ops, w: &[BlockQ8], x: &[BlockQ8Act], nb: usize, out: &mut [f32]) {
    let (_, n) = tile_shape(w.len(), x.len(), nb, out.len());
    let mut prep = vec![PrepLane::default(); prepared_len(n, nb)];
    (ops.prepare_q8)(x, nb, &mut prep);
    (ops.matmul_q8)(w, x, &prep, nb, out);
    to_row_major(ops, n, out);
}

/// `ops`' q4 product of `w` and `x`, as [`matmul_q8`].
fn matmul_q4(ops: &Ops, w: &[BlockQ4], x: &[BlockQ8Act], nb: usize, out: &mut [f32]) {
    let (_, n) = tile_shape(w.len(), x.len(), nb, out.len());
    let mut prep = vec![PrepLane::default(); prepared_len(n, nb)];
    (ops.prepare_q4)(x, nb, &mut prep);
    (ops.matmul_q4)(w, x, &prep, nb, out);
    to_row_major(ops, n, out);
}

/// Rewrites a product laid out as `ops` lays it out ([`Ops::out_layout`]) as `out[r · n + t]`.
fn to_row_major(ops: &Ops, n: usize, out: &mut [f32]) {
    let rows = out.len() / n;
    let laid_out = out.to_vec();
    for r in 0..rows {
        for t in 0..n {
            out[r * n + t] = laid_out[ops.out_layout.index(r, t, rows, n)];
        }
    }
}

/// How the blocks of a test are made.
#[derive(Clone, Copy, Debug)]
enum Fill {
    /// Random values and scales.
    Random,
    /// Every value at its extreme, large scales.
    Edge,
    /// Random values with unusual weight scales: zeros, subnormal and largest f16, negative.
    Scales,
}

fn scale(rng: &mut Rng) -> f32 {
    rng.below(1000) as f32 / 1000.0 * 0.05 + 1e-4
}

/// Weight scales for [`Fill::Scales`].
const ODD_SCALES: [f32; 6] = [0.0, -0.0, 6.0e-8, 3.0e-5, 65504.0, -2.0];

fn q8(rng: &mut Rng, n: usize, fill: Fill) -> Vec<BlockQ8> {
    (0..n)
        .map(|i| BlockQ8 {
            d: f16::from_f32(match fill {
                Fill::Random => scale(rng),
                Fill::Edge => 65504.0 / 4096.0,
                Fill::Scales => ODD_SCALES[i % ODD_SCALES.len()],
            }),
            qs: std::array::from_fn(|j| match fill {
                Fill::Edge if (i + j) % 3 == 0 => -127,
                Fill::Edge => 127,
                _ => rng.i8().max(-127),
            }),
        })
        .collect()
}

fn q4(rng: &mut Rng, n: usize, fill: Fill) -> Vec<BlockQ4> {
    (0..n)
        .map(|i| BlockQ4 {
            d: f16::from_f32(match fill {
                Fill::Random => scale(rng),
                Fill::Edge => 2.0,
                Fill::Scales => ODD_SCALES[i % ODD_SCALES.len()],
            }),
            qs: std::array::from_fn(|j| match fill {
                Fill::Edge => [0x00, 0xFF, 0x0F][(i + j) % 3],
                _ => rng.u8(),
            }),
        })
        .collect()
}

/// Activation blocks; at the edge, values at both ends of `−127..=127`.
fn acts(rng: &mut Rng, n: usize, fill: Fill) -> Vec<BlockQ8Act> {
    (0..n)
        .map(|i| BlockQ8Act {
            d: match fill {
                Fill::Edge => 3.0,
                _ => scale(rng),
            },
            qs: std::array::from_fn(|j| match fill {
                Fill::Edge if (i + 2 * j) % 5 == 0 => 127,
                Fill::Edge => -127,
                _ => rng.i8().max(-127),
            }),
        })
        .collect()
}

fn q8_codes(b: &BlockQ8) -> (f32, Vec<i32>) {
    (b.d.to_f32(), b.qs.iter().map(|&q| q as i32).collect())
}

fn q4_codes(b: &BlockQ4) -> (f32, Vec<i32>) {
    let q = (0..QK)
        .map(|i| {
            let byte = b.qs[i % 16];
            (if i < 16 { byte & 0x0F } else { byte >> 4 }) as i32 - 8
        })
        .collect();
    (b.d.to_f32(), q)
}

/// `Σ |d_w · d_x| · Σ |q_w · q_x|` of one product: the float error bound's scale.
fn abs_terms(dw: &[f32], wq: &[Vec<i32>], x: &[BlockQ8Act]) -> f64 {
    dw.iter()
        .zip(wq)
        .zip(x)
        .map(|((d, q), bx)| {
            let s: i64 = q
                .iter()
                .zip(&bx.qs)
                .map(|(&a, &b)| (a * b as i32).abs() as i64)
                .sum();
            (d * bx.d).abs() as f64 * s as f64
        })
        .sum()
}

/// (rows, tokens, blocks per row): tile remainders in every dimension, gpt2-xl widths (50 and
/// 200 blocks), batches of four tokens or more (packed kernels, tiles of four and eight tokens)
/// with leftover rows, every token count from 1 to 9, 13 and 67 (leftover tokens after full
/// tiles), widths around the packing chunk of 64 blocks; single tokens (decode) with 0..=3
/// blocks beyond a multiple of four; two or three tokens with rows not a multiple of eight; a
/// row of 257 blocks.
const SHAPES: [(usize, usize, usize); 27] = [
    (1, 1, 1),
    (3, 5, 3),
    (2, 4, 4),
    (5, 9, 5),
    (7, 4, 24),
    (4, 7, 50),
    (3, 8, 200),
    (9, 1, 50),
    (2, 13, 7),
    (8, 4, 1),
    (17, 9, 33),
    (16, 6, 200),
    (9, 13, 64),
    (40, 4, 24),
    (8, 7, 32),
    (5, 1, 7),
    (16, 1, 200),
    (6, 2, 9),
    (7, 3, 50),
    (13, 2, 257),
    (32, 15, 40),
    (48, 8, 50),
    (33, 11, 9),
    (6, 67, 65),
    (5, 16, 129),
    (4, 12, 1),
    (11, 67, 3),
];

/// `ops`' product (`fast`) against the scalar one on every shape and fill, within
/// `1e-5 · abs_terms` (float summation order only).
fn check<W>(
    name: &str,
    ops: &Ops,
    fast: fn(&Ops, &[W], &[BlockQ8Act], usize, &mut [f32]),
    codes: impl Fn(&W) -> (f32, Vec<i32>),
    make: impl Fn(&mut Rng, usize, Fill) -> Vec<W>,
) {
    let mut rng = Rng::new(0x9E37_79B9);
    let scalar = scalar::ops();
    for fill in [Fill::Random, Fill::Edge, Fill::Scales] {
        for (rows, n, nb) in SHAPES {
            let w = make(&mut rng, rows * nb, fill);
            let x = acts(&mut rng, n * nb, fill);
            let (mut a, mut b) = (vec![0f32; rows * n], vec![0f32; rows * n]);
            fast(ops, &w, &x, nb, &mut a);
            fast(&scalar, &w, &x, nb, &mut b);
            for r in 0..rows {
                let (dw, wq): (Vec<f32>, Vec<Vec<i32>>) =
                    w[r * nb..(r + 1) * nb].iter().map(&codes).unzip();
                for t in 0..n {
                    let bound = 1e-5 * abs_terms(&dw, &wq, &x[t * nb..(t + 1) * nb]) + 1e-30;
                    let (got, want) = (a[r * n + t], b[r * n + t]);
                    assert!(
                        ((got - want) as f64).abs() <= bound,
                        "{:?} {name} {rows}x{n}x{nb} {fill:?} [{r},{t}]: {got} vs {want}",
                        ops.path
                    );
                }
            }
        }
    }
}

#[test]
fn every_table_is_listed_once_with_the_detected_one() {
    let all = tables();
    assert_eq!(all[0].path, super::KernelPath::Scalar);
    assert!(all.iter().any(|t| t.path == super::path()));
    for (i, t) in all.iter().enumerate() {
        assert!(
            all[i + 1..].iter().all(|u| u.path != t.path),
            "{:?} twice",
            t.path
        );
    }
}

#[test]
fn matmul_q8_agrees_with_scalar() {
    for ops in tables() {
        check("q8", &ops, matmul_q8, q8_codes, q8);
    }
}

#[test]
fn matmul_q4_agrees_with_scalar() {
    for ops in tables() {
        check("q4", &ops, matmul_q4, q4_codes, q4);
    }
}

#[test]
fn integer_tile_sums_are_exact_at_the_range_limits() {
    // The widest values both sides may hold (q8 weights and activations in −127..=127), all
    // products of one sign: the NEON kernels sum two of them per i16 lane (32258).
    for ops in tables() {
        for (rows, n, nb) in [(5, 1, 3), (6, 3, 2), (9, 6, 3), (8, 2, 9), (32, 11, 3)] {
            for (wq, xq) in [(127i8, 127i8), (-127, 127), (-127, -127)] {
                let w = vec![
                    BlockQ8 {
                        d: f16::ONE,
                        qs: [wq; QK]
                    };
                    rows * nb
                ];
                let x = vec![
                    BlockQ8Act {
                        d: 1.0,
                        qs: [xq; QK]
                    };
                    n * nb
                ];
                let mut a = vec![0f32; rows * n];
                matmul_q8(&ops, &w, &x, nb, &mut a);
                let want = wq as f32 * xq as f32 * (QK * nb) as f32;
                assert!(
                    a.iter().all(|&v| v == want),
                    "{:?} {rows}x{n}x{nb} w={wq} x={xq}",
                    ops.path
                );
                // q4 codes at both ends (0 and 15: weights −8 and 7).
                for (byte, code) in [(0x00u8, -8i32), (0xFF, 7)] {
                    let w4 = vec![
                        BlockQ4 {
                            d: f16::ONE,
                            qs: [byte; QK / 2]
                        };
                        rows * nb
                    ];
                    matmul_q4(&ops, &w4, &x, nb, &mut a);
                    let want = (code * xq as i32 * (QK * nb) as i32) as f32;
                    assert!(
                        a.iter().all(|&v| v == want),
                        "{:?} q4 {byte:#x} x={xq}",
                        ops.path
                    );
                }
            }
        }
    }
}

#[test]
fn integer_tile_sums_are_exact_with_unit_scales() {
    // Unit scales and one block: every product is an exact integer in f32.
    for ops in tables() {
        let mut rng = Rng::new(7);
        let mut w = q8(&mut rng, 6, Fill::Edge);
        let mut x = acts(&mut rng, 5, Fill::Random);
        w.iter_mut().for_each(|b| b.d = f16::ONE);
        x.iter_mut().for_each(|b| b.d = 1.0);
        let (mut a, mut b) = (vec![0f32; 30], vec![0f32; 30]);
        matmul_q8(&ops, &w, &x, 1, &mut a);
        matmul_q8(&scalar::ops(), &w, &x, 1, &mut b);
        assert_eq!(a, b, "{:?} q8", ops.path);
        let w4: Vec<BlockQ4> = q4(&mut rng, 6, Fill::Edge)
            .into_iter()
            .map(|b| BlockQ4 { d: f16::ONE, ..b })
            .collect();
        matmul_q4(&ops, &w4, &x, 1, &mut a);
        matmul_q4(&scalar::ops(), &w4, &x, 1, &mut b);
        assert_eq!(a, b, "{:?} q4", ops.path);
    }
}

#[test]
fn zero_activations_scales_and_offset_codes_give_zero() {
    for ops in tables() {
        let mut rng = Rng::new(77);
        for (rows, n, nb) in [(9, 1, 7), (8, 4, 33), (3, 2, 200), (16, 5, 1)] {
            let mut zero = vec![BlockQ8Act::default(); n * nb];
            (ops.quantize_act)(&vec![0.0; n * nb * QK], &mut zero);
            assert!(zero.iter().all(|b| b.d == 0.0 && b.qs == [0; QK]));
            let mut w8 = q8(&mut rng, rows * nb, Fill::Random);
            let mut w4 = q4(&mut rng, rows * nb, Fill::Random);
            let mut y = vec![f32::NAN; rows * n];
            matmul_q8(&ops, &w8, &zero, nb, &mut y);
            assert!(
                y.iter().all(|&v| v == 0.0),
                "{:?} q8 zero activations",
                ops.path
            );
            matmul_q4(&ops, &w4, &zero, nb, &mut y);
            assert!(
                y.iter().all(|&v| v == 0.0),
                "{:?} q4 zero activations",
                ops.path
            );
            let x = acts(&mut rng, n * nb, Fill::Random);
            w8.iter_mut().for_each(|b| b.d = f16::ZERO);
            w4.iter_mut().for_each(|b| b.d = f16::ZERO);
            matmul_q8(&ops, &w8, &x, nb, &mut y);
            assert!(y.iter().all(|&v| v == 0.0), "{:?} q8 zero scales", ops.path);
            matmul_q4(&ops, &w4, &x, nb, &mut y);
            assert!(y.iter().all(|&v| v == 0.0), "{:?} q4 zero scales", ops.path);
            let eights = vec![
                BlockQ4 {
                    d: f16::ONE,
                    qs: [0x88; QK / 2]
                };
                rows * nb
            ];
            matmul_q4(&ops, &eights, &x, nb, &mut y);
            assert!(y.iter().all(|&v| v == 0.0), "{:?} q4 codes of 8", ops.path);
        }
    }
}

#[test]
#[should_panic(expected = "output length")]
fn matmul_checks_shapes() {
    let w = vec![
        BlockQ8 {
            d: f16::ONE,
            qs: [0; QK]
        };
        4
    ];
    let x = vec![BlockQ8Act::default(); 2];
    let ops = super::ops();
    (ops.matmul_q8)(&w, &x, &[], 2, &mut [0.0; 3]);
}

#[test]
fn matmul_refuses_a_missing_preparation() {
    // A decode product given too short a preparation must stop, not read past the slice (the
    // scalar and armv7 tables read none).
    let w = vec![
        BlockQ4 {
            d: f16::ONE,
            qs: [0x11; QK / 2]
        };
        8 * 4
    ];
    let x = vec![
        BlockQ8Act {
            d: 1.0,
            qs: [1; QK]
        };
        4
    ];
    for ops in tables() {
        if matches!(
            ops.path,
            super::KernelPath::Scalar | super::KernelPath::Armv7Neon
        ) {
            continue;
        }
        let mut prep = vec![PrepLane::default(); prepared_len(1, 4)];
        (ops.prepare_q4)(&x, 4, &mut prep);
        let run = std::panic::AssertUnwindSafe(|| {
            let mut y = [0f32; 8];
            (ops.matmul_q4)(&w, &x, &prep[..1], 4, &mut y);
        });
        assert!(std::panic::catch_unwind(run).is_err(), "{:?}", ops.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Activation quantisation: bit-identical to the scalar twin.

fn assert_quantized_like_scalar(ops: &Ops, x: &[f32], what: &str) {
    let n = x.len() / QK;
    let (mut got, mut want) = (
        vec![BlockQ8Act::default(); n],
        vec![BlockQ8Act::default(); n],
    );
    (ops.quantize_act)(x, &mut got);
    scalar::quantize_act(x, &mut want);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g.qs == w.qs && (g.d.to_bits() == w.d.to_bits() || (g.d.is_nan() && w.d.is_nan())),
            "{:?} quantize_act {what} block {i}: {g:?} vs {w:?}",
            ops.path
        );
        // A NaN input makes the block's scale NaN (so it reaches the logits), never a 0.
        let has_nan = x[i * QK..(i + 1) * QK].iter().any(|v| v.is_nan());
        assert_eq!(
            g.d.is_nan(),
            has_nan,
            "{:?} quantize_act {what} block {i}: NaN scale",
            ops.path
        );
    }
}

#[test]
fn quantize_act_is_bit_identical_on_random_rows() {
    for ops in tables() {
        let mut rng = Rng::new(3);
        for blocks in [1, 2, 3, 24, 50, 200] {
            for a in [1e-3, 1.0, 80.0, 3e4] {
                let x = rng.floats(blocks * QK, a);
                assert_quantized_like_scalar(&ops, &x, &format!("{blocks} blocks ±{a}"));
            }
        }
    }
}

#[test]
fn quantize_act_is_bit_identical_on_ties_and_special_values() {
    let mut rng = Rng::new(5);
    let mut block = |f: &dyn Fn(usize, f32) -> f32| -> Vec<f32> {
        (0..QK).map(|i| f(i, rng.uniform(1.0))).collect()
    };
    let d = 0.731f32 / 127.0;
    let blocks = [
        // amax 127 → d = 1: exact ties k + 0.5.
        block(&|i, _| {
            if i == 0 {
                127.0
            } else {
                (i as f32 - 16.0) + 0.5
            }
        }),
        // amax 63.5 → d = 0.5: x = k/2 + 1/4 gives k + 0.5.
        block(&|i, _| {
            if i == 0 {
                -63.5
            } else {
                (i as f32 - 16.0) * 0.5 + 0.25
            }
        }),
        // Ties against an arbitrary scale.
        block(&|i, _| if i == 0 { 0.731 } else { (i as f32 - 16.5) * d }),
        block(&|_, _| 0.0),
        block(&|i, _| if i % 2 == 0 { -0.0 } else { 0.0 }),
        block(&|_, _| 0.3),
        block(&|i, _| if i == 31 { -5.0 } else { 1e-3 }),
        block(&|i, _| [1e-44f32, -1e-44, 0.0, 3e-45][i % 4]),
        block(&|i, _| if i == 0 { 1e-40 } else { 0.0 }),
        block(&|i, v| if i == 3 { 1e-38 } else { v * 1e-40 }),
        block(&|i, v| if i == 7 { 2e-30 } else { v * 1e-39 }),
        block(&|i, _| (i as f32 - 16.0) * 1e37),
        block(&|_, v| v * f32::MAX),
        block(&|i, v| if i % 2 == 0 { 127.0 } else { v }),
        block(&|i, _| [f32::INFINITY, 1.0, -2.0, 0.0][i % 4]),
        block(&|i, v| if i == 0 { f32::NEG_INFINITY } else { v * 1e30 }),
        block(&|i, _| [f32::NAN, 1.0, -2.0, 0.5][i % 4]),
        block(&|i, v| if i == 5 { f32::NAN } else { v }),
        block(&|_, _| f32::NAN),
    ];
    for ops in tables() {
        for (i, b) in blocks.iter().enumerate() {
            assert_quantized_like_scalar(&ops, b, &format!("special block {i}"));
        }
        assert_quantized_like_scalar(&ops, &blocks.concat(), "all special blocks");
        // The NaN blocks first, where the kernels quantise blocks in groups, not one by one.
        let last_first: Vec<f32> = blocks.iter().rev().flatten().copied().collect();
        assert_quantized_like_scalar(&ops, &last_first, "all special blocks, last first");
    }
}

// ---------------------------------------------------------------------------------------------
// Float dot products.

/// Lengths around the vector widths and unrolls (4, 8, 16, 32) and GPT-2's widths.
const FLOAT_LENS: [usize; 12] = [1, 3, 7, 8, 15, 16, 31, 33, 64, 100, 1600, 6400];

/// `Σ |a · b|`, the float error bound's scale.
fn abs_products(a: impl Iterator<Item = f32>, b: &[f32]) -> f64 {
    a.zip(b).map(|(x, y)| (x as f64 * *y as f64).abs()).sum()
}

fn assert_close(got: f32, want: f32, terms: f64, what: &str) {
    // Different summation orders: at most `len · ulp` relative to Σ|a·b|; far less in practice.
    let bound = 1e-5 * terms + 1e-30;
    assert!(
        ((got - want) as f64).abs() <= bound,
        "{what}: {got} vs {want} (bound {bound})"
    );
}

#[test]
fn float_dots_agree_with_scalar() {
    for ops in tables() {
        let mut rng = Rng::new(4242);
        for n in FLOAT_LENS {
            let a = rng.floats(n, 2.0);
            let b = rng.floats(n, 4.0);
            let h: Vec<f16> = a.iter().map(|&v| f16::from_f32(v * 0.25)).collect();
            let what = format!("{:?} len {n}", ops.path);
            let terms = abs_products(a.iter().copied(), &b);
            assert_close((ops.dot_f32)(&a, &b), scalar::dot_f32(&a, &b), terms, &what);
            let terms = abs_products(h.iter().map(|v| v.to_f32()), &b);
            assert_close((ops.dot_f16)(&h, &b), scalar::dot_f16(&h, &b), terms, &what);
            // f16 extremes (largest and smallest subnormal) against small integers.
            let w: Vec<f16> = (0..n)
                .map(|i| [f16::MAX, -f16::MAX, f16::from_bits(1)][i % 3])
                .collect();
            let x: Vec<f32> = (0..n).map(|i| (i % 5) as f32).collect();
            let terms = abs_products(w.iter().map(|v| v.to_f32()), &x);
            assert_close((ops.dot_f16)(&w, &x), scalar::dot_f16(&w, &x), terms, &what);
            assert_eq!((ops.dot_f16)(&vec![f16::ZERO; n], &x), 0.0, "{what}");
        }
    }
}

#[test]
fn float_dots_are_exact_on_integers_and_propagate_nan() {
    for ops in tables() {
        let mut rng = Rng::new(5);
        for n in FLOAT_LENS {
            let a: Vec<f32> = (0..n).map(|_| rng.below(17) as f32 - 8.0).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.below(9) as f32 - 4.0).collect();
            let h: Vec<f16> = a.iter().map(|&v| f16::from_f32(v)).collect();
            let what = format!("{:?} len {n}", ops.path);
            assert_eq!((ops.dot_f32)(&a, &b), scalar::dot_f32(&a, &b), "{what}");
            assert_eq!((ops.dot_f16)(&h, &b), scalar::dot_f16(&h, &b), "{what}");
            let mut a = a;
            a[n - 1] = f32::NAN;
            assert!((ops.dot_f32)(&a, &b).is_nan(), "{what}");
            let mut h = h;
            h[n / 2] = f16::NAN;
            assert!((ops.dot_f16)(&h, &b).is_nan(), "{what}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Element-wise kernels.

/// Lengths: below, at and around the vector widths (4 and 8), and GPT-2's widths up to
/// gpt2-xl's MLP (6400).
const ELEM_LENS: [usize; 9] = [1, 7, 31, 33, 64, 100, 768, 1600, 6400];

/// Test rows of length `n`: uniform at three scales, edge values (±80, ±1e4, ±0) mixed with
/// ordinary ones, and rows of one repeated edge value.
fn elem_rows(rng: &mut Rng, n: usize) -> Vec<Vec<f32>> {
    const EDGES: [f32; 8] = [80.0, -80.0, 1e4, -1e4, 0.0, -0.0, 5.0, -5.0];
    let mut rows: Vec<Vec<f32>> = [1.0, 8.0, 80.0]
        .iter()
        .map(|&a| (0..n).map(|_| rng.uniform(a)).collect())
        .collect();
    rows.push(
        (0..n)
            .map(|i| {
                if i % 3 == 0 {
                    EDGES[(i / 3) % EDGES.len()]
                } else {
                    rng.uniform(4.0)
                }
            })
            .collect(),
    );
    for e in [80.0, -1e4, -0.0] {
        rows.push(vec![e; n]);
    }
    rows
}

/// NaN in both, the same infinity, or `|got − want| ≤ bound`.
fn close(got: f32, want: f32, bound: f64) -> bool {
    if want.is_nan() || got.is_nan() {
        return want.is_nan() && got.is_nan();
    }
    if want.is_infinite() || got.is_infinite() {
        return got == want;
    }
    ((got - want) as f64).abs() <= bound
}

/// GELU: `|Δ| ≤ 1e-6·|want| + 2e-7·|x|`. The relative term covers the vector exp (≲ 4e-7)
/// and the division; the `|x|` term covers the scalar twin's own rounding of `1 + tanh u`
/// near `x ≈ −3..−10`, where `0.5·x·(1 + tanh u)` keeps only an absolute accuracy of about
/// `0.5·|x|·ulp(1)` (the SIMD form `x / (1 + e^(−2u))` has no such cancellation).
#[test]
fn gelu_tanh_agrees_with_scalar() {
    for ops in tables() {
        let mut rng = Rng::new(0x5EED_0001);
        let mut worst = 0f64;
        for n in ELEM_LENS {
            let mut rows = elem_rows(&mut rng, n);
            // NaN (at the start, in the middle, in the tail) and infinities.
            let mut special: Vec<f32> = (0..n).map(|_| rng.uniform(6.0)).collect();
            for (i, v) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30]
                .into_iter()
                .enumerate()
            {
                special[(i * 7 + n / 2) % n] = v;
            }
            special[n - 1] = f32::NAN;
            special[0] = f32::NAN;
            rows.push(special);
            for x in rows {
                let (mut got, mut want) = (x.clone(), x.clone());
                (ops.gelu_tanh)(&mut got);
                scalar::gelu_tanh(&mut want);
                for i in 0..n {
                    let bound = 1e-6 * want[i].abs() as f64 + 2e-7 * x[i].abs() as f64;
                    assert!(
                        close(got[i], want[i], bound),
                        "{:?} gelu len {n} [{i}] x={}: {} vs {}",
                        ops.path,
                        x[i],
                        got[i],
                        want[i]
                    );
                    if x[i].is_nan() {
                        assert!(got[i].is_nan(), "gelu must propagate NaN");
                    }
                    if got[i].is_finite() && want[i].is_finite() && bound > 0.0 {
                        worst = worst.max(((got[i] - want[i]) as f64).abs() / bound);
                    }
                }
            }
        }
        println!("{:?} gelu: worst |Δ| / bound = {worst:.3}", ops.path);
    }
}

/// Softmax: `|Δp| ≤ p · (2e-6 + 1.2e-7·len) + 1e-37`. The vector exp is within ~4e-7
/// relative; the sums run in different orders, whose worst case is `len · ulp/2` relative
/// for each (the measured error is far smaller, see the printed ratio). The absolute term:
/// the SIMD exp flushes `e^x < 2^−126` to 0 where the scalar one returns a subnormal.
#[test]
fn softmax_agrees_with_scalar() {
    for ops in tables() {
        let mut rng = Rng::new(0x5EED_0002);
        let mut worst = 0f64;
        for n in ELEM_LENS {
            let mut rows = elem_rows(&mut rng, n);
            // Masked (−inf) positions with a finite maximum, as a causal mask would give.
            let mut masked: Vec<f32> = (0..n).map(|_| rng.uniform(10.0)).collect();
            for i in (1..n).step_by(3) {
                masked[i] = f32::NEG_INFINITY;
            }
            rows.push(masked);
            for x in rows {
                let (mut got, mut want) = (x.clone(), x.clone());
                (ops.softmax)(&mut got);
                scalar::softmax(&mut want);
                let rel = 2e-6 + 1.2e-7 * n as f64;
                for i in 0..n {
                    let bound = rel * want[i] as f64 + 1e-37;
                    assert!(
                        close(got[i], want[i], bound),
                        "{:?} softmax len {n} [{i}] x={}: {} vs {}",
                        ops.path,
                        x[i],
                        got[i],
                        want[i]
                    );
                    worst = worst.max(((got[i] - want[i]) as f64).abs() / bound);
                }
            }
            // One NaN anywhere (first, middle, last) makes every output NaN, in both.
            for pos in [0, n / 2, n - 1] {
                let mut x: Vec<f32> = (0..n).map(|_| rng.uniform(3.0)).collect();
                x[pos] = f32::NAN;
                let mut want = x.clone();
                scalar::softmax(&mut want);
                (ops.softmax)(&mut x);
                assert!(
                    x.iter().all(|v| v.is_nan()),
                    "{:?} softmax len {n}: NaN at {pos}",
                    ops.path
                );
                assert!(want.iter().all(|v| v.is_nan()));
            }
        }
        println!("{:?} softmax: worst |Δ| / bound = {worst:.3}", ops.path);
        let mut empty: [f32; 0] = [];
        (ops.softmax)(&mut empty);
    }
}

/// Layer norm: `|Δ| ≤ 1e-5 · (|w|·inv·(|x − mean| + mean|x|) + |b|)` with `inv = 1/√(var+eps)`:
/// the two implementations sum `x` and `(x − mean)²` in different orders, so the mean moves
/// by a few ulp of `mean|x|` (amplified by `inv`, which is large for near-constant rows).
#[test]
fn layer_norm_agrees_with_scalar() {
    for ops in tables() {
        let mut rng = Rng::new(0x5EED_0003);
        let mut worst = 0f64;
        for n in ELEM_LENS {
            let w: Vec<f32> = (0..n).map(|_| rng.uniform(2.0)).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.uniform(1.0)).collect();
            let mut rows = elem_rows(&mut rng, n);
            let mut with_nan: Vec<f32> = (0..n).map(|_| rng.uniform(1.0)).collect();
            with_nan[n / 2] = f32::NAN;
            rows.push(with_nan);
            for x in rows {
                let (mut got, mut want) = (vec![0f32; n], vec![0f32; n]);
                (ops.layer_norm)(&x, &w, &b, 1e-5, &mut got);
                scalar::layer_norm(&x, &w, &b, 1e-5, &mut want);
                let nf = n as f64;
                let mean = x.iter().map(|&v| v as f64).sum::<f64>() / nf;
                let mean_abs = x.iter().map(|&v| v.abs() as f64).sum::<f64>() / nf;
                let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / nf;
                let inv = 1.0 / (var + 1e-5).sqrt();
                for i in 0..n {
                    let scale = w[i].abs() as f64 * inv * ((x[i] as f64 - mean).abs() + mean_abs)
                        + b[i].abs() as f64;
                    let bound = 1e-5 * scale;
                    assert!(
                        close(got[i], want[i], bound),
                        "{:?} layer_norm len {n} [{i}] x={}: {} vs {}",
                        ops.path,
                        x[i],
                        got[i],
                        want[i]
                    );
                    if bound.is_finite() {
                        worst = worst.max(((got[i] - want[i]) as f64).abs() / bound);
                    }
                }
            }
        }
        println!("{:?} layer_norm: worst |Δ| / bound = {worst:.3}", ops.path);
    }
}

/// Same bits, or NaN in both.
fn same(got: &[f32], want: &[f32], what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what} [{i}]: {g} vs {w}"
        );
    }
}

/// `add_assign`, `axpy` and `axpy_f16` round the product and the sum separately in every
/// table, so they must match the scalar twins bit for bit.
#[test]
fn add_assign_and_axpy_match_scalar_bitwise() {
    for ops in tables() {
        let mut rng = Rng::new(0x5EED_0004);
        for n in ELEM_LENS {
            let rows = elem_rows(&mut rng, n);
            let mut acc0: Vec<f32> = (0..n).map(|_| rng.uniform(50.0)).collect();
            acc0[n / 2] = f32::NAN;
            for x in &rows {
                let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
                for s in [0.37f32, -1e-3, 0.0, -0.0, 1e4] {
                    let (mut got, mut want) = (acc0.clone(), acc0.clone());
                    (ops.axpy)(&mut got, s, x);
                    scalar::axpy(&mut want, s, x);
                    same(&got, &want, &format!("{:?} axpy len {n} s={s}", ops.path));
                    let (mut got, mut want) = (acc0.clone(), acc0.clone());
                    (ops.axpy_f16)(&mut got, s, &xh);
                    scalar::axpy_f16(&mut want, s, &xh);
                    same(
                        &got,
                        &want,
                        &format!("{:?} axpy_f16 len {n} s={s}", ops.path),
                    );
                }
                let (mut got, mut want) = (acc0.clone(), acc0.clone());
                (ops.add_assign)(&mut got, x);
                scalar::add_assign(&mut want, x);
                same(&got, &want, &format!("{:?} add_assign len {n}", ops.path));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Attention tiles over the f16 KV cache.

/// Head sizes: GPT-2's 64, 80 (gpt2-xl), sizes that leave every remainder of the kernels'
/// 16-, 8- and 4-wide steps (1, 7, 48, 100), and one past the widest the NEON eight-query scores
/// take (136).
const HEAD_DIMS: [usize; 7] = [1, 7, 48, 64, 80, 100, 136];
/// Positions the first query of a tile sees: short (below a block of keys), ragged, long.
const FIRST_LENS: [usize; 11] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 33, 200];
/// What the kernels must never write (checked bit for bit).
const UNTOUCHED: f32 = 7777.0;

/// A tile with gaps between rows of `q`, scores and `out`, so writes outside the rows show.
fn gapped_tile(head_dim: usize, queries: usize, first_len: usize) -> CausalTile {
    let positions = first_len + queries - 1;
    CausalTile {
        head_dim,
        queries,
        first_len,
        q_stride: 3 * head_dim + 5,
        score_stride: positions + 3,
        out_stride: head_dim + 2,
    }
}

/// `rows` f16 rows of `hd`, random, then two NaN rows past what the tile may read.
fn f16_rows(rng: &mut Rng, rows: usize, hd: usize) -> Vec<f16> {
    let mut v: Vec<f16> = rng
        .floats(rows * hd, 2.0)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    v.extend(std::iter::repeat_n(f16::NAN, 2 * hd));
    v
}

/// Whether index `k` of a row-strided buffer lies in one of `tile`'s `width`-long rows.
fn in_row(k: usize, stride: usize, rows: usize, width: impl Fn(usize) -> usize) -> bool {
    let (i, c) = (k / stride, k % stride);
    i < rows && c < width(i)
}

/// Scores of every table against the scalar twin (`|Δ| ≤ 1e-5 · scale · Σ|q·k|`), with nothing
/// outside the rows written and nothing past the last position read.
#[test]
fn attention_scores_agree_with_scalar() {
    let scale = 0.125;
    for ops in tables() {
        let mut rng = Rng::new(0x5EED_0005);
        for hd in HEAD_DIMS {
            for first_len in FIRST_LENS {
                for queries in 1..=9 {
                    let t = gapped_tile(hd, queries, first_len);
                    let keys = f16_rows(&mut rng, t.positions(), hd);
                    let q = rng.floats(queries * t.q_stride, 3.0);
                    let len = (queries - 1) * t.score_stride + t.positions() + 2;
                    let (mut got, mut want) = (vec![UNTOUCHED; len], vec![UNTOUCHED; len]);
                    (ops.scores_f16)(&keys, &q, scale, &t, &mut got);
                    scalar::scores_f16(&keys, &q, scale, &t, &mut want);
                    let what = format!(
                        "{:?} scores hd {hd} first {first_len} q {queries}",
                        ops.path
                    );
                    for k in 0..len {
                        if !in_row(k, t.score_stride, queries, |i| t.len(i)) {
                            assert_eq!(got[k].to_bits(), UNTOUCHED.to_bits(), "{what} [{k}]");
                            continue;
                        }
                        let (i, p) = (k / t.score_stride, k % t.score_stride);
                        let qi = &q[i * t.q_stride..i * t.q_stride + hd];
                        let key = keys[p * hd..(p + 1) * hd].iter().map(|v| v.to_f32());
                        let terms = scale as f64 * abs_products(key, qi);
                        assert_close(got[k], want[k], terms, &format!("{what} [{i},{p}]"));
                    }
                }
            }
        }
    }
}

/// Weighted sums of every table against the scalar twin (`|Δ| ≤ 1e-5 · Σ|w·v|`), signed
/// weights, NaN weights past each query's positions (never read), nothing outside the rows
/// written.
#[test]
fn attention_weighted_sums_agree_with_scalar() {
    for ops in tables() {
        let mut rng = Rng::new(0x5EED_0006);
        for hd in HEAD_DIMS {
            for first_len in FIRST_LENS {
                for queries in 1..=9 {
                    let t = gapped_tile(hd, queries, first_len);
                    let values = f16_rows(&mut rng, t.positions(), hd);
                    let wlen = (queries - 1) * t.score_stride + t.positions();
                    let weights: Vec<f32> = (0..wlen)
                        .map(|k| {
                            let w = rng.uniform(1.0);
                            if in_row(k, t.score_stride, queries, |i| t.len(i)) {
                                w
                            } else {
                                f32::NAN
                            }
                        })
                        .collect();
                    let len = (queries - 1) * t.out_stride + hd + 2;
                    let (mut got, mut want) = (vec![UNTOUCHED; len], vec![UNTOUCHED; len]);
                    (ops.weighted_sum_f16)(&values, &weights, &t, &mut got);
                    scalar::weighted_sum_f16(&values, &weights, &t, &mut want);
                    let what = format!("{:?} sums hd {hd} first {first_len} q {queries}", ops.path);
                    for k in 0..len {
                        if !in_row(k, t.out_stride, queries, |_| hd) {
                            assert_eq!(got[k].to_bits(), UNTOUCHED.to_bits(), "{what} [{k}]");
                            continue;
                        }
                        let (i, c) = (k / t.out_stride, k % t.out_stride);
                        let w = &weights[i * t.score_stride..i * t.score_stride + t.len(i)];
                        let column = (0..t.len(i)).map(|p| values[p * hd + c].to_f32());
                        let terms = abs_products(column, w);
                        assert_close(got[k], want[k], terms, &format!("{what} [{i},{c}]"));
                    }
                }
            }
        }
    }
}

/// A NaN key or value at a position reaches exactly the queries that see it.
#[test]
fn attention_tiles_keep_each_query_to_its_own_positions() {
    for ops in tables() {
        for (hd, first_len, queries) in [(64, 5, 4), (7, 1, 9), (100, 33, 6), (48, 4, 8)] {
            let t = gapped_tile(hd, queries, first_len);
            let mut rng = Rng::new(7);
            // Position `first_len + 1`: seen by queries 2.. only.
            let poisoned = first_len + 1;
            let mut rows = f16_rows(&mut rng, t.positions(), hd);
            rows[poisoned * hd + hd / 2] = f16::NAN;
            let q = rng.floats(queries * t.q_stride, 1.0);
            let mut scores = vec![0f32; queries * t.score_stride];
            (ops.scores_f16)(&rows, &q, 1.0, &t, &mut scores);
            let weights: Vec<f32> = (0..queries * t.score_stride).map(|_| 0.25).collect();
            let mut out = vec![0f32; queries * t.out_stride];
            (ops.weighted_sum_f16)(&rows, &weights, &t, &mut out);
            for i in 0..queries {
                let sees = t.len(i) > poisoned;
                let s = &scores[i * t.score_stride..i * t.score_stride + t.len(i)];
                let o = &out[i * t.out_stride..i * t.out_stride + hd];
                let what = format!("{:?} hd {hd} first {first_len} query {i}", ops.path);
                assert_eq!(s.iter().any(|v| v.is_nan()), sees, "{what} scores");
                assert_eq!(o[hd / 2].is_nan(), sees, "{what} output");
                assert!(o
                    .iter()
                    .enumerate()
                    .all(|(c, v)| c == hd / 2 || v.is_finite()));
            }
        }
    }
}

/// Slices too short for the tile are refused before any kernel runs.
#[test]
fn attention_tiles_check_their_shapes() {
    let t = gapped_tile(64, 4, 9);
    let rows = vec![f16::ZERO; t.positions() * 64];
    let q = vec![0f32; 3 * t.q_stride + 64];
    let scores = vec![0f32; 3 * t.score_stride + t.positions()];
    let out = vec![0f32; 3 * t.out_stride + 64];
    for ops in tables() {
        let run = |rows: &[f16], q: &[f32], scores: &[f32], out: &[f32]| {
            let (mut s, mut o) = (scores.to_vec(), out.to_vec());
            std::panic::catch_unwind(move || {
                (ops.scores_f16)(rows, q, 1.0, &t, &mut s);
                (ops.weighted_sum_f16)(rows, &s, &t, &mut o);
            })
            .is_ok()
        };
        assert!(run(&rows, &q, &scores, &out), "{:?}", ops.path);
        assert!(!run(&rows[64..], &q, &scores, &out), "{:?} keys", ops.path);
        assert!(!run(&rows, &q[1..], &scores, &out), "{:?} q", ops.path);
        assert!(!run(&rows, &q, &scores[1..], &out), "{:?} scores", ops.path);
        assert!(!run(&rows, &q, &scores, &out[1..]), "{:?} out", ops.path);
    }
}
