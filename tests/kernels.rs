//! The dispatcher picks the kernel path this CPU supports (and the one CI expects when it
//! emulates a given ARM core), and the chosen path agrees with the scalar twins on a whole matrix.

use gpt2q::kernels::{self, KernelPath, MatmulScratch};
use gpt2q::mmap::{self, ModelFile};
use gpt2q::quant::{encode_tensor, DType};
use gpt2q::rng::Rng;
use gpt2q::tensor::{Matrix, SplitMatrix, Weights};

#[test]
fn dispatch_picks_the_expected_path() {
    let path = kernels::path();
    println!("kernel path: {}", path.name());
    if let Ok(name) = std::env::var("GPT2Q_KERNELS") {
        assert_eq!(
            path.name(),
            name,
            "GPT2Q_KERNELS names a table this CPU runs"
        );
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        let vnni = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni");
        let want = if vnni {
            KernelPath::Avx512Vnni
        } else {
            KernelPath::Avx2
        };
        assert_eq!(path, want);
    }
    #[cfg(target_arch = "aarch64")]
    match std::env::var("GPT2Q_EXPECT_CPU").as_deref() {
        Ok("cortex-a72") => assert_eq!(path, KernelPath::Neon),
        Ok("cortex-a76") => assert_eq!(path, KernelPath::NeonDotprod),
        _ => assert!(matches!(path, KernelPath::Neon | KernelPath::NeonDotprod)),
    }
    #[cfg(target_arch = "arm")]
    match std::env::var("GPT2Q_EXPECT_CPU").as_deref() {
        // NEON with VFPv4 (Cortex-A7 of the Pi 2, A53 of the Pi 3 and Zero 2 W in 32-bit mode).
        Ok("cortex-a7" | "cortex-a15") => assert_eq!(path, KernelPath::Armv7Neon),
        // NEON without VFPv4's half-precision conversions: the scalar fallback.
        Ok("cortex-a8" | "cortex-a9") => assert_eq!(path, KernelPath::Scalar),
        _ => assert!(matches!(path, KernelPath::Armv7Neon | KernelPath::Scalar)),
    }
}

/// Values uniform in ±0.1, the same for the same seed.
fn random(n: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed).floats(n, 0.1)
}

/// Relative bound between the dispatched and scalar matmul on the same inputs: the integer
/// parts are exact, only the order of float additions differs.
const MATMUL_TOLERANCE: f32 = 1e-4;

#[test]
fn dispatched_matmul_agrees_with_scalar_at_gpt2_xl_shapes() {
    for dtype in [DType::Q4, DType::Q8, DType::F16, DType::F32] {
        for (rows, cols, tokens) in [(64, 1600, 1), (40, 6400, 3), (33, 96, 5), (3, 32, 1)] {
            let file = ModelFile::from_bytes(&encode_tensor(dtype, &random(rows * cols, 11), cols));
            let w = view(&file, dtype, rows, cols);
            let x = random(tokens * cols, 5);
            let mut scratch = MatmulScratch::new(cols, rows, tokens);
            let (mut fast, mut slow) = (vec![0f32; tokens * rows], vec![0f32; tokens * rows]);
            kernels::matmul(&w, &x, tokens, &mut fast, &mut scratch);
            kernels::matmul_with(
                &kernels::scalar::ops(),
                &w,
                &x,
                tokens,
                &mut slow,
                &mut scratch,
            );
            let scale = slow.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
                assert!(
                    (a - b).abs() <= MATMUL_TOLERANCE * scale,
                    "{} {rows}x{cols} t={tokens} [{i}]: {a} vs {b}",
                    dtype.name()
                );
            }
        }
    }
}

#[test]
fn a_nan_activation_reaches_every_output_of_its_token() {
    // Two tokens (decode kernels) and thirteen (batch kernels, the NaN in a leftover panel).
    let (rows, cols) = (8, 64);
    for (tokens, bad) in [(2, 1), (13, 12), (13, 5)] {
        for dtype in [DType::Q4, DType::Q8, DType::F16, DType::F32] {
            let file = ModelFile::from_bytes(&encode_tensor(dtype, &random(rows * cols, 3), cols));
            let w = view(&file, dtype, rows, cols);
            let mut x = random(tokens * cols, 9);
            x[bad * cols + 40] = f32::NAN;
            let mut scratch = MatmulScratch::new(cols, rows, tokens);
            let mut y = vec![0f32; tokens * rows];
            kernels::matmul(&w, &x, tokens, &mut y, &mut scratch);
            for (t, out) in y.chunks_exact(rows).enumerate() {
                let what = format!("{} {tokens} tokens, token {t}: {out:?}", dtype.name());
                if t == bad {
                    assert!(out.iter().all(|v| v.is_nan()), "{what}");
                } else {
                    assert!(out.iter().all(|v| v.is_finite()), "{what}");
                }
            }
        }
    }
}

/// The matrix view of a file holding one `(rows, cols)` tensor in `dtype`.
fn view(file: &ModelFile, dtype: DType, rows: usize, cols: usize) -> Matrix<'_> {
    let b = file.bytes();
    let weights = match dtype {
        DType::F32 => Weights::F32(mmap::as_f32(b).unwrap()),
        DType::F16 => Weights::F16(mmap::as_f16(b).unwrap()),
        DType::Q8 => Weights::Q8(mmap::as_q8(b).unwrap()),
        DType::Q4 => Weights::Q4(mmap::as_q4(b).unwrap()),
    };
    Matrix::new(rows, cols, weights).unwrap()
}

/// A matrix stored as q8 leading rows and q4 others (q4-pure's embedding) multiplies and looks
/// rows up exactly as its two parts do on their own, for one token and for a batch.
#[test]
fn split_matrix_products_and_rows_match_their_parts() {
    let (k, rows, cols) = (5, 23, 96);
    let values = random(rows * cols, 17);
    let head_file = ModelFile::from_bytes(&encode_tensor(DType::Q8, &values[..k * cols], cols));
    let tail_file = ModelFile::from_bytes(&encode_tensor(DType::Q4, &values[k * cols..], cols));
    let head = view(&head_file, DType::Q8, k, cols);
    let tail = view(&tail_file, DType::Q4, rows - k, cols);
    let split = SplitMatrix {
        head: Some(head),
        tail,
    };
    assert_eq!(
        (split.rows(), split.cols(), split.head_rows()),
        (rows, cols, k)
    );
    for tokens in [1, 4] {
        let x = random(tokens * cols, 23);
        let mut scratch = MatmulScratch::new(cols, rows, tokens);
        let mut y = vec![0f32; tokens * rows];
        kernels::matmul_split(&split, &x, tokens, &mut y, &mut scratch);
        let (mut yh, mut yt) = (vec![0f32; tokens * k], vec![0f32; tokens * (rows - k)]);
        kernels::matmul(&head, &x, tokens, &mut yh, &mut scratch);
        kernels::matmul(&tail, &x, tokens, &mut yt, &mut scratch);
        for t in 0..tokens {
            let row = &y[t * rows..(t + 1) * rows];
            assert_eq!(&row[..k], &yh[t * k..(t + 1) * k], "token {t} head");
            assert_eq!(
                &row[k..],
                &yt[t * (rows - k)..(t + 1) * (rows - k)],
                "token {t} tail"
            );
        }
    }
    let (mut got, mut want) = (vec![0f32; cols], vec![0f32; cols]);
    for r in [0, k - 1, k, rows - 1] {
        kernels::dequantize_split_row(&split, r, &mut got);
        let (part, i) = if r < k { (&head, r) } else { (&tail, r - k) };
        kernels::dequantize_row(part, i, &mut want);
        assert_eq!(got, want, "row {r}");
    }
}
