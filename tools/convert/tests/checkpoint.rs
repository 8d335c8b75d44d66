//! Integration tests for the safetensors reader and the GPT-2 checkpoint loader, on synthetic
//! checkpoints written to temporary directories and on the real `tests/fixtures/tiny-gpt2`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use gpt2q::rng::Rng;
use gpt2q_convert::checkpoint::{Checkpoint, HfConfig};
use gpt2q_convert::safetensors::{SafetensorsFile, StDtype};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const N_LAYER: usize = 2;
const N_EMBD: usize = 64;
const N_POS: usize = 16;
const N_VOCAB: usize = 300;

/// A temporary directory, removed on drop.
struct TmpDir(PathBuf);

impl TmpDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "gpt2q-convert-test-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TmpDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) {
        std::fs::write(self.0.join(name), bytes).unwrap();
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tensor to write: stored name, dtype name, shape and raw little-endian data.
#[derive(Clone)]
struct Raw {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Deterministic test values, exactly representable in F16 and BF16 (multiples of 1/64 in [-0.5, 0.5)).
fn values(seed: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7 + seed * 13) % 64) as f32 / 64.0 - 0.5)
        .collect()
}

fn encode(dtype: &str, vals: &[f32]) -> Vec<u8> {
    match dtype {
        "F32" => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        "F16" => vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        "BF16" => vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        other => panic!("test helper cannot encode {other}"),
    }
}

fn tiny_config() -> Value {
    json!({
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": N_VOCAB,
        "n_positions": N_POS,
        "n_embd": N_EMBD,
        "n_head": 2,
        "n_layer": N_LAYER,
        "n_inner": null,
        "layer_norm_epsilon": 1e-5,
        "bos_token_id": 299,
        "eos_token_id": 299,
        "tie_word_embeddings": true,
        "_name_or_path": "synthetic/tiny"
    })
}

fn tiny_hf_config() -> HfConfig {
    HfConfig::from_json(&tiny_config().to_string(), Path::new("config.json")).unwrap()
}

/// All tensors of the tiny GPT-2, with `prefix` on the body names.
fn tiny_tensors(prefix: &str, dtype: &str) -> Vec<Raw> {
    Checkpoint::expected_tensors(&tiny_hf_config())
        .into_iter()
        .enumerate()
        .map(|(seed, (name, shape))| {
            let n = shape.iter().product();
            Raw {
                name: format!("{prefix}{name}"),
                dtype: dtype.to_string(),
                data: encode(dtype, &values(seed, n)),
                shape,
            }
        })
        .collect()
}

/// The bytes of a safetensors file holding `tensors` back to back.
fn safetensors_bytes(tensors: &[Raw]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0;
    for t in tensors {
        let end = offset + t.data.len();
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut json = Value::Object(header).to_string().into_bytes();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    out
}

/// A single-file checkpoint directory holding `tensors` and `config`.
fn write_checkpoint(tag: &str, config: &Value, tensors: &[Raw]) -> TmpDir {
    let dir = TmpDir::new(tag);
    dir.write("config.json", config.to_string());
    dir.write("model.safetensors", safetensors_bytes(tensors));
    dir
}

fn open_err(dir: &TmpDir) -> String {
    match Checkpoint::open(dir.path()) {
        Ok(_) => panic!("expected Checkpoint::open to fail"),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} should mention {p:?}");
    }
}

/// Every tensor of a checkpoint, read by canonical name.
fn read_all(ckpt: &Checkpoint) -> Vec<(String, Vec<f32>)> {
    Checkpoint::expected_tensors(&ckpt.config)
        .into_iter()
        .map(|(name, _)| {
            let v = ckpt.read(&name).unwrap();
            (name, v)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Checkpoint: happy paths
// ---------------------------------------------------------------------------------------------

#[test]
fn prefixed_and_unprefixed_keys_read_identically() {
    let plain = write_checkpoint("plain", &tiny_config(), &tiny_tensors("", "F32"));
    let prefixed = write_checkpoint(
        "prefixed",
        &tiny_config(),
        &tiny_tensors("transformer.", "F32"),
    );
    let a = Checkpoint::open(plain.path()).unwrap();
    let b = Checkpoint::open(prefixed.path()).unwrap();
    let (ra, rb) = (read_all(&a), read_all(&b));
    assert_eq!(ra.len(), 2 + 12 * N_LAYER + 2);
    assert_eq!(ra, rb);
    assert_eq!(a.shape("h.1.mlp.c_fc.weight"), Some(&[64, 256][..]));
    assert!(!a.has_lm_head());
    assert!(a.lm_head_is_tied().unwrap());
    assert_eq!(a.config.n_inner, 4 * N_EMBD);
    assert_eq!(a.config.n_ctx, N_POS);
    assert!(
        a.source_name().contains("synthetic/tiny"),
        "{}",
        a.source_name()
    );
}

#[test]
fn f32_f16_bf16_read_identically() {
    let mut reads = Vec::new();
    for dtype in ["F32", "F16", "BF16"] {
        let dir = write_checkpoint(dtype, &tiny_config(), &tiny_tensors("transformer.", dtype));
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        let want = match dtype {
            "F32" => StDtype::F32,
            "F16" => StDtype::F16,
            _ => StDtype::BF16,
        };
        assert_eq!(ckpt.dtype("wte.weight"), Some(&want));
        reads.push(read_all(&ckpt));
    }
    assert_eq!(reads[0], reads[1]);
    assert_eq!(reads[0], reads[2]);
    // And the values are the ones written.
    let (name, wte) = &reads[0][0];
    assert_eq!(name, "wte.weight");
    assert_eq!(wte, &values(0, N_VOCAB * N_EMBD));
}

#[test]
fn sharded_checkpoint_reads_like_single_file() {
    let tensors = tiny_tensors("transformer.", "F16");
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let dir = TmpDir::new("sharded");
    dir.write("config.json", tiny_config().to_string());
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    dir.write(names[0], safetensors_bytes(first));
    dir.write(names[1], safetensors_bytes(second));
    let mut map = serde_json::Map::new();
    for (part, file) in [(first, names[0]), (second, names[1])] {
        for t in part {
            map.insert(t.name.clone(), json!(file));
        }
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    dir.write("model.safetensors.index.json", index.to_string());

    let single = write_checkpoint("single", &tiny_config(), &tensors);
    let a = Checkpoint::open(dir.path()).unwrap();
    let b = Checkpoint::open(single.path()).unwrap();
    assert_eq!(read_all(&a), read_all(&b));
}

#[test]
fn shard_index_disagreeing_with_shard_is_refused() {
    let tensors = tiny_tensors("", "F32");
    let dir = TmpDir::new("badindex");
    dir.write("config.json", tiny_config().to_string());
    dir.write("a.safetensors", safetensors_bytes(&tensors));
    let mut map = serde_json::Map::new();
    for t in tensors.iter().skip(1) {
        map.insert(t.name.clone(), json!("a.safetensors"));
    }
    let index = json!({ "weight_map": map });
    dir.write("model.safetensors.index.json", index.to_string());
    let msg = open_err(&dir);
    assert_contains(&msg, &["wte.weight", "does not list it"]);

    map.insert("wte.weight".into(), json!("../a.safetensors"));
    let index = json!({ "weight_map": map });
    dir.write("model.safetensors.index.json", index.to_string());
    assert_contains(&open_err(&dir), &["same directory"]);
}

#[test]
fn attention_buffers_are_ignored() {
    let mut tensors = tiny_tensors("transformer.", "F32");
    for i in 0..N_LAYER {
        tensors.push(Raw {
            name: format!("transformer.h.{i}.attn.bias"),
            dtype: "BOOL".into(),
            shape: vec![1, 1, N_POS, N_POS],
            data: vec![1; N_POS * N_POS],
        });
        tensors.push(Raw {
            name: format!("transformer.h.{i}.attn.masked_bias"),
            dtype: "F32".into(),
            shape: vec![],
            data: (-1e4f32).to_le_bytes().to_vec(),
        });
    }
    let dir = write_checkpoint("buffers", &tiny_config(), &tensors);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert!(ckpt.read("h.0.attn.c_attn.bias").is_ok());
    assert!(ckpt.read("h.0.attn.bias").is_err());
}

#[test]
fn lm_head_tied_and_untied() {
    let mut tensors = tiny_tensors("transformer.", "F32");
    let wte = tensors[0].clone();
    tensors.push(Raw {
        name: "lm_head.weight".into(),
        ..wte.clone()
    });
    let dir = write_checkpoint("tied", &tiny_config(), &tensors);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert!(ckpt.has_lm_head());
    assert!(ckpt.lm_head_is_tied().unwrap());

    let head = tensors.last_mut().unwrap();
    head.data = encode("F32", &values(99, N_VOCAB * N_EMBD));
    let dir = write_checkpoint("untied", &tiny_config(), &tensors);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert!(!ckpt.lm_head_is_tied().unwrap());

    // lm_head.weight with the body prefix is not a GPT-2 name.
    tensors.last_mut().unwrap().name = "transformer.lm_head.weight".into();
    let dir = write_checkpoint("prefixedhead", &tiny_config(), &tensors);
    assert_contains(
        &open_err(&dir),
        &["unexpected", "transformer.lm_head.weight"],
    );

    // Untied embeddings require an lm_head.
    let mut config = tiny_config();
    config["tie_word_embeddings"] = json!(false);
    let dir = write_checkpoint("nohead", &config, &tiny_tensors("", "F32"));
    assert_contains(&open_err(&dir), &["tie_word_embeddings", "lm_head.weight"]);
}

// ---------------------------------------------------------------------------------------------
// Checkpoint: refusals
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_tensor_is_named() {
    let mut tensors = tiny_tensors("transformer.", "F32");
    tensors.retain(|t| t.name != "transformer.h.1.ln_2.bias");
    let dir = write_checkpoint("missing", &tiny_config(), &tensors);
    assert_contains(&open_err(&dir), &["missing", "h.1.ln_2.bias", "[64]"]);
}

#[test]
fn wrong_shape_names_tensor_and_both_shapes() {
    let mut tensors = tiny_tensors("", "F32");
    let t = tensors
        .iter_mut()
        .find(|t| t.name == "h.0.attn.c_attn.weight")
        .unwrap();
    t.shape = vec![192, 64];
    let dir = write_checkpoint("shape", &tiny_config(), &tensors);
    assert_contains(
        &open_err(&dir),
        &["h.0.attn.c_attn.weight", "[64, 192]", "[192, 64]"],
    );
}

#[test]
fn extra_layer_is_refused() {
    let mut tensors = tiny_tensors("transformer.", "F32");
    tensors.push(Raw {
        name: "transformer.h.5.ln_1.weight".into(),
        dtype: "F32".into(),
        shape: vec![N_EMBD],
        data: encode("F32", &values(0, N_EMBD)),
    });
    let dir = write_checkpoint("extra", &tiny_config(), &tensors);
    assert_contains(
        &open_err(&dir),
        &["unexpected", "transformer.h.5.ln_1.weight"],
    );
}

#[test]
fn both_prefixed_and_plain_key_is_refused() {
    let mut tensors = tiny_tensors("transformer.", "F32");
    let mut dup = tensors[1].clone();
    dup.name = "wpe.weight".into();
    tensors.push(dup);
    let dir = write_checkpoint("dup", &tiny_config(), &tensors);
    assert_contains(
        &open_err(&dir),
        &["twice", "wpe.weight", "transformer.wpe.weight"],
    );
}

#[test]
fn non_float_weight_is_refused_at_open() {
    let mut tensors = tiny_tensors("", "F32");
    let t = tensors.iter_mut().find(|t| t.name == "ln_f.bias").unwrap();
    t.dtype = "I32".into();
    let dir = write_checkpoint("intweight", &tiny_config(), &tensors);
    assert_contains(&open_err(&dir), &["ln_f.bias", "I32"]);
}

#[test]
fn nan_weight_is_refused_at_read() {
    let mut tensors = tiny_tensors("transformer.", "F16");
    let t = tensors
        .iter_mut()
        .find(|t| t.name == "transformer.h.1.mlp.c_proj.weight")
        .unwrap();
    let mut vals = values(3, 256 * 64);
    vals[64 * 5 + 7] = f32::NAN;
    t.data = encode("F16", &vals);
    let dir = write_checkpoint("nan", &tiny_config(), &tensors);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert!(ckpt.read("h.0.mlp.c_proj.weight").is_ok());
    let msg = ckpt.read("h.1.mlp.c_proj.weight").unwrap_err().to_string();
    assert_contains(&msg, &["h.1.mlp.c_proj.weight", "327", "[5, 7]", "NaN"]);
}

#[test]
fn unsupported_configs_are_refused() {
    let cases: [(&str, Value, &[&str]); 6] = [
        (
            "model_type",
            json!("llama"),
            &["model_type", "llama", "gpt2"],
        ),
        (
            "activation_function",
            json!("relu"),
            &["activation_function", "relu"],
        ),
        (
            "scale_attn_by_inverse_layer_idx",
            json!(true),
            &["scale_attn_by_inverse_layer_idx"],
        ),
        (
            "reorder_and_upcast_attn",
            json!(true),
            &["reorder_and_upcast_attn"],
        ),
        ("n_head", json!(3), &["n_embd", "n_head"]),
        ("n_layer", json!(0), &["n_layer"]),
    ];
    for (key, value, parts) in cases {
        let mut config = tiny_config();
        config[key] = value;
        let dir = write_checkpoint(key, &config, &tiny_tensors("", "F32"));
        assert_contains(&open_err(&dir), parts);
    }
}

#[test]
fn activation_variants_are_recorded() {
    for act in ["gelu_pytorch_tanh", "gelu"] {
        let mut config = tiny_config();
        config["activation_function"] = json!(act);
        let dir = write_checkpoint(act, &config, &tiny_tensors("", "F32"));
        assert_eq!(
            Checkpoint::open(dir.path())
                .unwrap()
                .config
                .activation_function,
            act
        );
    }
}

#[test]
fn directories_without_safetensors_are_refused() {
    let dir = TmpDir::new("empty");
    dir.write("config.json", tiny_config().to_string());
    assert_contains(&open_err(&dir), &["model.safetensors"]);
    dir.write("pytorch_model.bin", b"not really a pickle");
    assert_contains(
        &open_err(&dir),
        &["pytorch_model.bin", "safe_serialization=True"],
    );
}

#[test]
fn vocab_and_merges() {
    let dir = write_checkpoint("vocab", &tiny_config(), &tiny_tensors("", "F32"));
    let vocab: serde_json::Map<String, Value> = (0..N_VOCAB)
        .rev()
        .map(|i| (format!("tok{i}"), json!(i)))
        .collect();
    dir.write("vocab.json", Value::Object(vocab.clone()).to_string());
    dir.write("merges.txt", "#version: 0.2\nt o\nto k\n");
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let v = ckpt.read_vocab().unwrap();
    assert_eq!(v.len(), N_VOCAB);
    assert_eq!(v[7], ("tok7".to_string(), 7));
    assert_eq!(ckpt.read_merges().unwrap(), "#version: 0.2\nt o\nto k\n");

    let mut short = vocab.clone();
    short.remove("tok5");
    dir.write("vocab.json", Value::Object(short.clone()).to_string());
    assert_contains(
        &ckpt.read_vocab().unwrap_err().to_string(),
        &["vocab.json", "299", "300"],
    );
    short.insert("again".into(), json!(4));
    dir.write("vocab.json", Value::Object(short).to_string());
    assert_contains(
        &ckpt.read_vocab().unwrap_err().to_string(),
        &["vocab.json", "share id 4"],
    );

    dir.write("merges.txt", "#version: 0.2\nt o x\n");
    assert_contains(
        &ckpt.read_merges().unwrap_err().to_string(),
        &["merges.txt", "line 2"],
    );
}

// ---------------------------------------------------------------------------------------------
// Safetensors parser
// ---------------------------------------------------------------------------------------------

fn parse_err(bytes: &[u8]) -> String {
    match SafetensorsFile::parse(bytes, Path::new("x.safetensors")) {
        Ok(_) => panic!("expected parse to fail"),
        Err(e) => e.to_string(),
    }
}

/// A file with a raw header string and `data_len` zero bytes of data.
fn with_header(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

#[test]
fn malformed_headers_are_refused() {
    assert_contains(
        &parse_err(&with_header("{\"a\": ", 0)),
        &["x.safetensors", "JSON"],
    );
    assert_contains(&parse_err(&with_header("[1, 2]", 0)), &["object"]);
    assert_contains(&parse_err(&[1, 2, 3]), &["too short"]);
    // Header length past the end of the file.
    let mut bytes = with_header("{}", 4);
    bytes[..8].copy_from_slice(&1000u64.to_le_bytes());
    assert_contains(&parse_err(&bytes), &["1000", "past the end"]);
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_contains(&parse_err(&bytes), &["exceeds"]);
    let cases = [
        (
            r#"{"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "u": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#,
            16,
            "overlap",
        ),
        (
            r#"{"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#,
            8,
            "needs 12 bytes",
        ),
        (
            r#"{"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#,
            4,
            "data region",
        ),
        (
            r#"{"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}"#,
            8,
            "non-negative",
        ),
        (
            r#"{"t": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}"#,
            8,
            "unknown dtype",
        ),
        (
            r#"{"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}"#,
            8,
            "begin <= end",
        ),
        (
            r#"{"t": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}"#,
            8,
            "data_offsets",
        ),
        (
            r#"{"t": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 8]}}"#,
            8,
            "overflow",
        ),
        (r#"{"t": 3}"#, 8, "object"),
        (r#"{"__metadata__": []}"#, 0, "__metadata__"),
    ];
    for (header, data_len, part) in cases {
        assert_contains(&parse_err(&with_header(header, data_len)), &[part]);
    }
}

#[test]
fn non_float_dtype_parses_but_is_not_read_as_float() {
    let header = r#"{"ids": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}, "w": {"dtype": "BF16", "shape": [2], "data_offsets": [16, 20]}, "empty": {"dtype": "F32", "shape": [0, 3], "data_offsets": [20, 20]}}"#;
    let dir = TmpDir::new("i64");
    let mut bytes = with_header(header, 20);
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&[0x80, 0x3f, 0x00, 0xc0]); // bf16 1.0, -2.0
    dir.write("m.safetensors", &bytes);
    let file = SafetensorsFile::open(&dir.path().join("m.safetensors")).unwrap();
    assert_eq!(file.tensors()["ids"].dtype, StDtype::Other("I64".into()));
    assert_contains(
        &file.read_f32("ids").unwrap_err().to_string(),
        &["ids", "I64", "float"],
    );
    assert_eq!(file.read_f32("w").unwrap(), vec![1.0, -2.0]);
    assert_eq!(file.read_f32("empty").unwrap(), Vec::<f32>::new());
    assert!(file.read_f32("nope").is_err());
}

#[test]
fn open_refuses_short_and_missing_files() {
    let dir = TmpDir::new("short");
    dir.write("s.safetensors", [0u8; 3]);
    let err = SafetensorsFile::open(&dir.path().join("s.safetensors")).unwrap_err();
    assert_contains(&err.to_string(), &["s.safetensors", "too short"]);
    let err = SafetensorsFile::open(&dir.path().join("absent.safetensors")).unwrap_err();
    assert!(matches!(err, gpt2q::Error::Io { .. }));
}

/// A small valid file (so byte flips often land in the header).
fn small_valid_file() -> Vec<u8> {
    let t = |name: &str, dtype: &str, n: usize| Raw {
        name: name.into(),
        dtype: dtype.into(),
        shape: vec![2, n / 2],
        data: encode(dtype, &values(n, n)),
    };
    safetensors_bytes(&[
        t("a.weight", "F32", 4),
        t("b", "F16", 6),
        t("c.bias", "BF16", 2),
    ])
}

#[test]
fn parse_never_panics_on_truncations() {
    let bytes = small_valid_file();
    let path = Path::new("trunc.safetensors");
    assert!(SafetensorsFile::parse(&bytes, path).is_ok());
    for len in 0..bytes.len() {
        assert!(
            SafetensorsFile::parse(&bytes[..len], path).is_err(),
            "len {len}"
        );
    }
}

#[test]
fn parse_never_panics_on_byte_flips() {
    let bytes = small_valid_file();
    let path = Path::new("flip.safetensors");
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for _ in 0..500 {
        let mut mutated = bytes.clone();
        for _ in 0..1 + rng.below(3) {
            let pos = rng.below(mutated.len());
            mutated[pos] ^= 1 << rng.below(8);
        }
        if let Ok(tensors) = SafetensorsFile::parse(&mutated, path) {
            accepted += 1;
            for info in tensors.values() {
                assert!(info.range.end <= mutated.len());
            }
        }
    }
    // Flips in the data region keep the file valid; the header ones must not panic.
    assert!(accepted < 500);
}

// ---------------------------------------------------------------------------------------------
// The real fixture
// ---------------------------------------------------------------------------------------------

#[test]
fn real_tiny_gpt2_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-gpt2");
    let ckpt = Checkpoint::open(&dir).unwrap();
    assert_eq!(ckpt.config.n_layer, 4);
    assert_eq!(ckpt.config.n_vocab, 50257);
    assert_eq!(ckpt.dtype("wte.weight"), Some(&StDtype::F16));
    let w = ckpt.read("h.0.attn.c_attn.weight").unwrap();
    assert_eq!(ckpt.shape("h.0.attn.c_attn.weight"), Some(&[256, 768][..]));
    assert_eq!(w.len(), 256 * 768);
    assert!(!ckpt.has_lm_head());
    assert!(ckpt.lm_head_is_tied().unwrap());
    assert_eq!(ckpt.read_vocab().unwrap().len(), 50257);
    assert!(ckpt.read_merges().unwrap().starts_with("#version"));
    assert_eq!(ckpt.source_name(), "tiny-gpt2");
}
