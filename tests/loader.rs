//! Loading damaged and foreign files gives a clear error, never a panic: truncation, wrong magic,
//! wrong version, flipped bytes in the header, tokenizer and weights.

use std::path::{Path, PathBuf};

use gpt2q::format::{Layout, PREAMBLE_LEN};
use gpt2q::mmap::ModelFile;
use gpt2q::model::Model;
use gpt2q::Error;

fn default_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gpt2-q8.g2q")
}

fn bytes() -> Vec<u8> {
    std::fs::read(default_model()).unwrap()
}

fn load(bytes: &[u8], verify: bool) -> Result<(), Error> {
    let file = ModelFile::from_bytes(bytes);
    Model::load(&file, verify).map(|_| ())
}

fn load_err(bytes: &[u8], verify: bool) -> String {
    match load(bytes, verify) {
        Ok(()) => panic!("damaged file loaded"),
        Err(e @ Error::Format(_)) => e.to_string(),
        Err(e) => panic!("expected a format error, got {e:?}"),
    }
}

#[test]
fn default_model_loads_and_verifies() {
    let file = ModelFile::open(&default_model()).unwrap();
    let model = Model::load(&file, true).unwrap();
    assert_eq!(model.hparams.n_vocab, 50257);
    assert_eq!(model.meta("quant"), Some("q8"));
}

#[test]
fn truncated_file_is_an_error_naming_the_size() {
    let b = bytes();
    for cut in [0, 7, 63, 64, 1000, b.len() / 2, b.len() - 1] {
        let err = load_err(&b[..cut], false);
        assert!(
            err.contains("bytes") || err.contains("short"),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn wrong_magic_says_it_is_not_a_model() {
    let mut b = bytes();
    b[..4].copy_from_slice(b"GGUF");
    assert!(load_err(&b, false).contains("not a gpt2q model file"));
}

#[test]
fn other_version_is_named() {
    let mut b = bytes();
    b[8..12].copy_from_slice(&7u32.to_le_bytes());
    let err = load_err(&b, false);
    assert!(
        err.contains("version 7") && err.contains("version 1"),
        "{err}"
    );
}

#[test]
fn flipped_header_and_tokenizer_bytes_fail_their_checksums() {
    let b = bytes();
    let layout = Layout::parse(&b).unwrap();
    let tok_start = layout.tokenizer.as_ptr() as usize - b.as_ptr() as usize;
    for pos in [
        PREAMBLE_LEN + 3,
        PREAMBLE_LEN + 100,
        tok_start + 5,
        tok_start + layout.tokenizer.len() / 2,
    ] {
        let mut d = b.clone();
        d[pos] ^= 0x20;
        let err = load_err(&d, false);
        assert!(err.contains("damaged"), "flip at {pos}: {err}");
    }
}

#[test]
fn flipped_weight_byte_is_found_by_verify_and_named() {
    let b = bytes();
    let layout = Layout::parse(&b).unwrap();
    let t = layout.entry("h.1.mlp.c_fc.weight").unwrap();
    let mut d = b.clone();
    d[(t.offset + t.len / 2) as usize] ^= 0x01;
    load(&d, false).expect("without verification a flipped weight byte still loads");
    let err = load_err(&d, true);
    assert!(
        err.contains("h.1.mlp.c_fc.weight") && err.contains("damaged"),
        "{err}"
    );
}

#[test]
fn a_missing_file_is_an_io_error() {
    match ModelFile::open(Path::new("/nonexistent/model.g2q")) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("model.g2q")),
        Err(e) => panic!("unexpected {e:?}"),
        Ok(_) => panic!("opened a missing file"),
    }
}

/// The default model rewritten with its embedding's first `k` rows moved to
/// `wte.frequent.weight` (shape `head_shape`) and the rest left in `wte.weight` (`tail_shape`).
fn split_embedding(k: usize, head_shape: [u64; 2], tail_shape: [u64; 2]) -> Vec<u8> {
    use gpt2q::format::{ModelWriter, TensorSpec};
    use gpt2q::quant::DType;
    let original = bytes();
    let layout = Layout::parse(&original).unwrap();
    let wte = layout.entry("wte.weight").unwrap().clone();
    let row_bytes = DType::Q8.row_bytes(wte.shape[1]).unwrap() as usize;
    let wte_data = layout.data(&wte);
    let mut specs = Vec::new();
    let mut data: Vec<Vec<u8>> = Vec::new();
    for t in &layout.tensors {
        if t.name == "wte.weight" {
            specs.push(TensorSpec {
                name: "wte.frequent.weight".into(),
                dtype: t.dtype,
                shape: head_shape.to_vec(),
            });
            data.push(wte_data[..k * row_bytes].to_vec());
            specs.push(TensorSpec {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: tail_shape.to_vec(),
            });
            data.push(wte_data[k * row_bytes..].to_vec());
        } else {
            specs.push(TensorSpec {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
            });
            data.push(layout.data(t).to_vec());
        }
    }
    let writer = ModelWriter::new(
        layout.hparams,
        layout.metadata.clone(),
        layout.tokenizer.to_vec(),
        specs,
    )
    .unwrap();
    writer
        .write_to_vec(|i, e| {
            let mut d = data[i].clone();
            d.resize(e.len as usize, 0);
            Ok(d)
        })
        .unwrap()
}

/// An embedding stored as two row ranges (as `--quant q4-pure` writes it) gives the very logits
/// of the same rows stored whole; inconsistent shapes are format errors.
#[test]
fn a_split_embedding_computes_what_the_whole_one_does() {
    use gpt2q::session::Session;
    let (v, e, k) = (50257u64, 256u64, 700usize);
    let split = split_embedding(k, [k as u64, e], [v - k as u64, e]);
    let whole = bytes();
    let logits = |bytes: &[u8]| {
        let file = ModelFile::from_bytes(bytes);
        let model = Model::load(&file, true).unwrap();
        let mut session = Session::new(&model, 16).unwrap();
        // Ids on both sides of the split.
        session
            .prefill(&[464, 3290, 699, 700, 13, 50256])
            .unwrap()
            .to_vec()
    };
    assert_eq!(logits(&split), logits(&whole));

    let err = load_err(&split_embedding(k, [v, e], [v - k as u64, e]), false);
    assert!(err.contains("wte.frequent.weight"), "{err}");
    let err = load_err(&split_embedding(k, [k as u64, e], [v, e]), false);
    assert!(err.contains("wte.weight"), "{err}");
}
