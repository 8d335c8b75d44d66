//! Criterion benchmarks of the matrix kernels at GPT-2 124M and 1.5B shapes: the dispatched
//! tables this CPU runs (SIMD and the scalar twins), for decode (one token) and prefill (a batch of 32).
//! Throughput is reported as bytes of weights streamed per second; GFLOP/s = 2·rows·cols·tokens
//! per iteration divided by the time. The `tile` group times the tile kernels alone.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gpt2q::kernels::{self, prepared_len, MatmulScratch, PrepLane};
use gpt2q::mmap::{self, ModelFile};
use gpt2q::quant::{encode_tensor, DType};
use gpt2q::rng::Rng;
use gpt2q::tensor::{Matrix, Weights};

/// Values uniform in ±0.05, the same for the same seed.
fn random(n: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed).floats(n, 0.05)
}

/// A weight matrix in `dtype`, backed by an aligned buffer like a mapped file.
fn weights(dtype: DType, rows: usize, cols: usize) -> ModelFile {
    ModelFile::from_bytes(&encode_tensor(dtype, &random(rows * cols, 7), cols))
}

fn matrix(file: &ModelFile, dtype: DType, rows: usize, cols: usize) -> Matrix<'_> {
    let b = file.bytes();
    let w = match dtype {
        DType::F32 => Weights::F32(mmap::as_f32(b).unwrap()),
        DType::F16 => Weights::F16(mmap::as_f16(b).unwrap()),
        DType::Q8 => Weights::Q8(mmap::as_q8(b).unwrap()),
        DType::Q4 => Weights::Q4(mmap::as_q4(b).unwrap()),
    };
    Matrix::new(rows, cols, w).unwrap()
}

/// (name, rows, cols): the largest matrices of gpt2 and gpt2-xl.
const SHAPES: [(&str, usize, usize); 4] = [
    ("124M c_attn 2304x768", 2304, 768),
    ("124M mlp_proj 768x3072", 768, 3072),
    ("1.5B c_fc 6400x1600", 6400, 1600),
    ("1.5B mlp_proj 1600x6400", 1600, 6400),
];

fn bench_matmul(c: &mut Criterion, tokens: usize) {
    let tables = kernels::tables();
    for dtype in [DType::Q4, DType::Q8, DType::F16] {
        let mut group = c.benchmark_group(format!("matmul {} x{tokens}", dtype.name()));
        group.sample_size(10);
        for (name, rows, cols) in SHAPES {
            let file = weights(dtype, rows, cols);
            let w = matrix(&file, dtype, rows, cols);
            let x = random(tokens * cols, 3);
            let mut y = vec![0f32; tokens * rows];
            let mut scratch = MatmulScratch::new(cols, rows, tokens);
            group.throughput(Throughput::Bytes(w.byte_len() as u64));
            for ops in &tables {
                group.bench_function(BenchmarkId::new(ops.path.name(), name), |b| {
                    b.iter(|| kernels::matmul_with(ops, &w, &x, tokens, &mut y, &mut scratch))
                });
            }
        }
        group.finish();
    }
}

fn decode(c: &mut Criterion) {
    bench_matmul(c, 1);
}

fn prefill(c: &mut Criterion) {
    bench_matmul(c, 32);
}

/// The tile kernels alone (`Ops::matmul_q8` / `matmul_q4`, no activation quantisation, one
/// thread) on a 124M-shaped matrix with 64 tokens, SIMD against scalar.
fn tiles(c: &mut Criterion) {
    let (rows, cols, tokens) = (768, 768, 64);
    let nb = cols / 32;
    let x = random(tokens * cols, 5);
    let mut act = vec![gpt2q::quant::BlockQ8Act::default(); tokens * nb];
    kernels::scalar::quantize_act(&x, &mut act);
    let mut y = vec![0f32; rows * tokens];
    let mut prep = vec![PrepLane::default(); prepared_len(tokens, nb)];
    let mut group = c.benchmark_group("tile 768x768 x64");
    group.sample_size(10);
    let f8 = weights(DType::Q8, rows, cols);
    let f4 = weights(DType::Q4, rows, cols);
    let (w8, w4) = (
        mmap::as_q8(f8.bytes()).unwrap(),
        mmap::as_q4(f4.bytes()).unwrap(),
    );
    group.throughput(Throughput::Elements((rows * cols * tokens) as u64));
    for ops in kernels::tables() {
        let path = ops.path.name();
        (ops.prepare_q8)(&act, nb, &mut prep);
        group.bench_function(BenchmarkId::new(path, "q8"), |b| {
            b.iter(|| (ops.matmul_q8)(w8, &act, &prep, nb, &mut y))
        });
        (ops.prepare_q4)(&act, nb, &mut prep);
        group.bench_function(BenchmarkId::new(path, "q4"), |b| {
            b.iter(|| (ops.matmul_q4)(w4, &act, &prep, nb, &mut y))
        });
    }
    group.finish();
}

criterion_group!(benches, decode, prefill, tiles);
criterion_main!(benches);
