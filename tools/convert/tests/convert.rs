//! End-to-end conversion tests on the real tiny GPT-2 fixture, rewritten into the layouts found
//! in the wild: keys without the `transformer.` prefix, sharded files, BF16 weights, and broken
//! checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gpt2q::mmap::ModelFile;
use gpt2q::{model::Model, session::Session};
use gpt2q_convert::convert::{convert, Options, Quant, Weighting};
use serde_json::{json, Map, Value};

const EPOCH: u64 = 1_795_824_000;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-gpt2")
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("convert-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn options(quant: Quant) -> Options {
    Options {
        quant,
        force: true,
        name: Some("tiny".into()),
        created_epoch: Some(EPOCH),
        weighting: Weighting::default(),
    }
}

fn convert_to(dir: &Path, out: &Path, quant: Quant) -> gpt2q::Result<Vec<u8>> {
    convert(dir, out, &options(quant), &mut |_, _, _| {})?;
    Ok(std::fs::read(out).unwrap())
}

/// The fixture's tensors: name → (dtype, shape, raw little-endian bytes).
type Tensors = BTreeMap<String, (String, Vec<u64>, Vec<u8>)>;

fn read_fixture_tensors() -> Tensors {
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let off: Vec<usize> = v["data_offsets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            (
                k,
                (
                    v["dtype"].as_str().unwrap().to_string(),
                    shape,
                    data[off[0]..off[1]].to_vec(),
                ),
            )
        })
        .collect()
}

fn write_safetensors(path: &Path, tensors: &Tensors) {
    let mut header = Map::new();
    let mut data = Vec::new();
    for (name, (dtype, shape, raw)) in tensors {
        header.insert(name.clone(), json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + raw.len()]}));
        data.extend_from_slice(raw);
    }
    let header = serde_json::to_vec(&Value::Object(header)).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

/// A checkpoint directory with the fixture's config and tokenizer and the given weight files.
fn checkpoint_with(tag: &str, files: &[(&str, &Tensors)]) -> PathBuf {
    let dir = scratch_dir(tag);
    for f in ["config.json", "vocab.json", "merges.txt"] {
        std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
    }
    for (name, tensors) in files {
        write_safetensors(&dir.join(name), tensors);
    }
    dir
}

fn reference_bytes(quant: Quant) -> Vec<u8> {
    let out = scratch_dir(&format!("ref-{}", quant.name())).join("ref.g2q");
    convert_to(&fixture(), &out, quant).unwrap()
}

#[test]
fn conversion_is_deterministic() {
    let dir = scratch_dir("determinism");
    let a = convert_to(&fixture(), &dir.join("a.g2q"), Quant::Q4).unwrap();
    let b = convert_to(&fixture(), &dir.join("b.g2q"), Quant::Q4).unwrap();
    assert!(a == b, "two conversions differ");
}

#[test]
fn committed_default_model_is_the_converters_output() {
    let committed =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-gpt2-q8.g2q"))
            .unwrap();
    let out = scratch_dir("default").join("tiny-gpt2-q8.g2q");
    let opts = Options {
        quant: Quant::Q8,
        force: true,
        name: None,
        created_epoch: Some(EPOCH),
        weighting: Weighting::default(),
    };
    convert(&fixture(), &out, &opts, &mut |_, _, _| {}).unwrap();
    assert!(
        std::fs::read(&out).unwrap() == committed,
        "models/tiny-gpt2-q8.g2q is stale: re-convert it (README)"
    );
}

#[test]
fn unprefixed_keys_convert_to_the_same_bytes() {
    let tensors: Tensors = read_fixture_tensors()
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("transformer.").unwrap_or(&k).to_string(), v))
        .collect();
    assert!(tensors.contains_key("h.0.attn.c_attn.weight"));
    let dir = checkpoint_with("unprefixed", &[("model.safetensors", &tensors)]);
    let bytes = convert_to(&dir, &dir.join("out.g2q"), Quant::Q8).unwrap();
    assert!(bytes == reference_bytes(Quant::Q8));
}

#[test]
fn sharded_checkpoint_converts_to_the_same_bytes() {
    let all = read_fixture_tensors();
    let (first, second): (Tensors, Tensors) = all
        .into_iter()
        .partition(|(k, _)| k.contains(".h.0.") || k.contains("wte"));
    let mut weight_map = Map::new();
    for (tensors, file) in [
        (&first, "model-00001-of-00002.safetensors"),
        (&second, "model-00002-of-00002.safetensors"),
    ] {
        for k in tensors.keys() {
            weight_map.insert(k.clone(), json!(file));
        }
    }
    let dir = checkpoint_with(
        "sharded",
        &[
            ("model-00001-of-00002.safetensors", &first),
            ("model-00002-of-00002.safetensors", &second),
        ],
    );
    let index = json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let bytes = convert_to(&dir, &dir.join("out.g2q"), Quant::F16).unwrap();
    assert!(bytes == reference_bytes(Quant::F16));
}

fn f16_bytes_to_bf16(raw: &[u8]) -> Vec<u8> {
    raw.chunks_exact(2)
        .flat_map(|c| {
            let v = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            half::bf16::from_f32(v).to_le_bytes()
        })
        .collect()
}

#[test]
fn bf16_and_f32_checkpoints_convert_and_agree() {
    let fixture = read_fixture_tensors();
    let to = |dtype: &str, f: &dyn Fn(&[u8]) -> Vec<u8>| -> Tensors {
        fixture
            .iter()
            .map(|(k, (_, s, raw))| (k.clone(), (dtype.to_string(), s.clone(), f(raw))))
            .collect()
    };
    let f32s = to("F32", &|raw| {
        raw.chunks_exact(2)
            .flat_map(|c| {
                half::f16::from_le_bytes([c[0], c[1]])
                    .to_f32()
                    .to_le_bytes()
            })
            .collect()
    });
    let dir = checkpoint_with("f32-input", &[("model.safetensors", &f32s)]);
    // F16 values widened to F32 are the same numbers: the same file.
    assert!(
        convert_to(&dir, &dir.join("out.g2q"), Quant::F32).unwrap() == reference_bytes(Quant::F32)
    );

    let bf16 = to("BF16", &f16_bytes_to_bf16);
    let dir = checkpoint_with("bf16-input", &[("model.safetensors", &bf16)]);
    let out = dir.join("out.g2q");
    convert_to(&dir, &out, Quant::F32).unwrap();
    let ours = last_logits(&out, &[464, 2068, 7586, 21831]);
    let reference = last_logits(&fixture_f32(), &[464, 2068, 7586, 21831]);
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0
    };
    assert_eq!(
        argmax(&ours),
        argmax(&reference),
        "BF16 rounding changed the top token"
    );
}

fn fixture_f32() -> PathBuf {
    let out = scratch_dir("fixture-f32").join("f32.g2q");
    convert_to(&fixture(), &out, Quant::F32).unwrap();
    out
}

fn last_logits(path: &Path, tokens: &[u32]) -> Vec<f32> {
    let file = ModelFile::open(path).unwrap();
    let model = Model::load(&file, true).unwrap();
    let mut session = Session::new(&model, 16).unwrap();
    session.prefill(tokens).unwrap().to_vec()
}

#[test]
fn missing_tensor_is_named_and_no_output_is_left() {
    let mut tensors = read_fixture_tensors();
    tensors.remove("transformer.h.2.mlp.c_fc.bias").unwrap();
    let dir = checkpoint_with("missing", &[("model.safetensors", &tensors)]);
    let err = convert_to(&dir, &dir.join("out.g2q"), Quant::Q8)
        .unwrap_err()
        .to_string();
    assert!(err.contains("h.2.mlp.c_fc.bias"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !left.iter().any(|n| n.to_string_lossy().contains(".g2q")),
        "left behind: {left:?}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let mut tensors = read_fixture_tensors();
    let t = tensors
        .get_mut("transformer.h.1.attn.c_proj.weight")
        .unwrap();
    t.1 = vec![128, 512];
    let dir = checkpoint_with("wrong-shape", &[("model.safetensors", &tensors)]);
    let err = convert_to(&dir, &dir.join("out.g2q"), Quant::Q8)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("h.1.attn.c_proj.weight") && err.contains("256"),
        "{err}"
    );
}

#[test]
fn non_finite_weight_is_refused() {
    let mut tensors = read_fixture_tensors();
    let t = tensors.get_mut("transformer.h.0.ln_1.weight").unwrap();
    t.2[10..12].copy_from_slice(&half::f16::NAN.to_le_bytes());
    let dir = checkpoint_with("nan", &[("model.safetensors", &tensors)]);
    let err = convert_to(&dir, &dir.join("out.g2q"), Quant::Q8)
        .unwrap_err()
        .to_string();
    assert!(err.contains("h.0.ln_1.weight"), "{err}");
    assert!(!dir.join("out.g2q").exists());
}

#[test]
fn existing_output_needs_force() {
    let dir = scratch_dir("force");
    let out = dir.join("keep.g2q");
    std::fs::write(&out, b"precious").unwrap();
    let opts = Options {
        force: false,
        ..options(Quant::Q8)
    };
    let err = convert(&fixture(), &out, &opts, &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
}

#[test]
fn q4_keeps_the_embedding_in_q8_and_q4_pure_only_its_frequent_rows() {
    use gpt2q::format::DType;
    let dir = scratch_dir("q4-policy");
    for quant in [Quant::Q4, Quant::Q4Pure] {
        let file_bytes = convert_to(
            &fixture(),
            &dir.join(format!("{}.g2q", quant.name())),
            quant,
        )
        .unwrap();
        let layout = gpt2q::format::Layout::parse(&file_bytes).unwrap();
        let tensor = |name: &str| layout.tensors.iter().find(|t| t.name == name);
        let dtype = |name: &str| tensor(name).unwrap().dtype;
        assert_eq!(dtype("h.0.mlp.c_fc.weight"), DType::Q4);
        assert_eq!(dtype("wpe.weight"), DType::F16);
        let (weights, bytes) = layout
            .tensors
            .iter()
            .filter(|t| t.shape.len() == 2 && t.name != "wpe.weight")
            .fold((0u64, 0u64), |(w, b), t| {
                (w + t.shape.iter().product::<u64>(), b + t.len)
            });
        let bits_per_weight = bytes as f64 * 8.0 / weights as f64;
        if quant == Quant::Q4 {
            assert_eq!(dtype("wte.weight"), DType::Q8);
            assert!(tensor("wte.frequent.weight").is_none());
            continue;
        }
        // q4-pure: the lowest token ids' rows in q8, the rest in q4, within the bit budget.
        let (head, tail) = (
            tensor("wte.frequent.weight").unwrap(),
            tensor("wte.weight").unwrap(),
        );
        assert_eq!((head.dtype, tail.dtype), (DType::Q8, DType::Q4));
        assert_eq!(head.shape[0] + tail.shape[0], 50257);
        assert!(head.shape[0] > 1000, "{:?}", head.shape);
        assert!(
            (4.5..=gpt2q_convert::convert::Q4_PURE_BITS_PER_WEIGHT).contains(&bits_per_weight),
            "{bits_per_weight}"
        );
        // The runtime reads it back as one embedding of the whole vocabulary.
        let file = ModelFile::from_bytes(&file_bytes);
        let model = Model::load(&file, false).unwrap();
        assert_eq!(model.wte.head_rows() as u64, head.shape[0]);
        assert_eq!(model.wte.rows(), 50257);
    }
}

#[test]
fn the_sensitivity_report_ranks_every_matrix() {
    use gpt2q_convert::sensitivity::{tensor_sensitivity, SensitivityOptions};
    let text = std::fs::read_to_string(fixture().join("../heldout.txt")).unwrap();
    let opts = SensitivityOptions {
        tokens: 128,
        window: 64,
    };
    let rows = tensor_sensitivity(&fixture(), &text, opts, &mut |_, _, _| {}).unwrap();
    // wte + 4 layers × 4 matrices, most sensitive first, every KL finite and non-negative.
    assert_eq!(rows.len(), 17);
    assert!(rows.windows(2).all(|w| w[0].kl_mean >= w[1].kl_mean));
    assert!(rows
        .iter()
        .all(|r| r.kl_mean.is_finite() && r.kl_mean >= 0.0));
    assert_eq!(rows[0].tensor, "wte.weight");
}

#[test]
fn calibration_measures_every_matrix_input() {
    use gpt2q_convert::checkpoint::Checkpoint;
    let text = std::fs::read_to_string(fixture().join("../heldout.txt")).unwrap();
    let ckpt = Checkpoint::open(&fixture()).unwrap();
    let calib = |text: &str| {
        Weighting::Activations {
            text: text.to_string(),
            tokens: 300,
        }
        .importance(&ckpt)
    };
    let imp = calib(&text).unwrap();
    let (e, i) = (256, 1024);
    let mut names = vec![("wte.weight".to_string(), e)];
    for l in 0..4 {
        names.push((format!("h.{l}.attn.c_attn.weight"), e));
        names.push((format!("h.{l}.attn.c_proj.weight"), e));
        names.push((format!("h.{l}.mlp.c_fc.weight"), e));
        names.push((format!("h.{l}.mlp.c_proj.weight"), i));
    }
    for (name, cols) in names {
        let w = imp
            .get(&name)
            .unwrap_or_else(|| panic!("{name} has no weights"));
        assert_eq!(w.len(), cols, "{name}");
        assert!(w.iter().all(|v| v.is_finite() && *v > 0.0), "{name}");
        // Not flat: the activations' mean squares differ between channels.
        let (lo, hi) = w
            .iter()
            .fold((f32::MAX, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(hi > 1.5 * lo, "{name}: {lo}..{hi}");
    }
    let err = calib("").unwrap_err();
    assert!(err.to_string().contains("at least 2"), "{err}");
}
