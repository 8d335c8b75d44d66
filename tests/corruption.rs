//! Damaged model files, byte by byte: a tiny valid `.g2q` (every dtype, ~20 KB) truncated at every
//! offset, with single bits flipped at every position, and with header fields overwritten and the
//! checksums patched to match (so the validation behind the checksums is exercised too). Every case
//! must end in a clean error or, for a flipped weight byte loaded without verification, a normal
//! load whose run either works or reports a numeric fault. Nothing here catches panics: a panic
//! fails the test. A few cases also go through the `gpt2q` binary to check exit codes.

mod common;

use std::ops::Range;
use std::path::{Path, PathBuf};

use gpt2q::format::{Layout, PREAMBLE_LEN};
use gpt2q::mmap::ModelFile;
use gpt2q::model::Model;
use gpt2q::sampler::{Sampler, SamplerConfig};
use gpt2q::session::Session;
use gpt2q::synthetic::tiny_bytes;
use gpt2q::Error;

use common::fuzz_checks::fix_checksums;

/// Which part of the file a byte belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    Preamble,
    Header,
    Tokenizer,
    Tensor(usize),
    Padding,
}

struct Map {
    header: Range<usize>,
    tokenizer: Range<usize>,
    tensors: Vec<(String, Range<usize>)>,
}

impl Map {
    fn new(bytes: &[u8]) -> Self {
        let layout = Layout::parse(bytes).expect("the tiny model parses");
        let header_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let tok_start = layout.tokenizer.as_ptr() as usize - bytes.as_ptr() as usize;
        Map {
            header: PREAMBLE_LEN..PREAMBLE_LEN + header_len,
            tokenizer: tok_start..tok_start + layout.tokenizer.len(),
            tensors: layout
                .tensors
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        t.offset as usize..(t.offset + t.len) as usize,
                    )
                })
                .collect(),
        }
    }

    fn region(&self, pos: usize) -> Region {
        if pos < PREAMBLE_LEN {
            Region::Preamble
        } else if self.header.contains(&pos) {
            Region::Header
        } else if self.tokenizer.contains(&pos) {
            Region::Tokenizer
        } else if let Some(i) = self.tensors.iter().position(|(_, r)| r.contains(&pos)) {
            Region::Tensor(i)
        } else {
            Region::Padding
        }
    }
}

/// Loads `bytes`; the error, if any, must be a format error (the only kind a file can cause).
fn load(bytes: &[u8], verify: bool) -> Result<(), String> {
    let file = ModelFile::from_bytes(bytes);
    match Model::load(&file, verify) {
        Ok(_) => Ok(()),
        Err(Error::Format(msg)) => Err(msg),
        Err(e) => panic!("a damaged file gave a non-format error: {e:?}"),
    }
}

/// One greedy step: logits come out finite and a token is chosen, or the sampler refuses them.
fn run_one_token(bytes: &[u8]) {
    let file = ModelFile::from_bytes(bytes);
    let model = Model::load(&file, false).expect("loads without verification");
    let mut session = Session::new(&model, 4).unwrap();
    let mut sampler = Sampler::new(SamplerConfig::greedy(), 257).unwrap();
    let logits = session.prefill(&[256, 65]).unwrap().to_vec();
    let finite = logits.iter().all(|v| v.is_finite());
    match sampler.sample(&mut logits.clone(), &[]) {
        Ok(id) => assert!(finite && id < 257),
        Err(Error::Numeric(msg)) => assert!(!finite && msg.contains("non-finite"), "{msg}"),
        Err(e) => panic!("unexpected {e:?}"),
    }
}

/// Cases are thinned out under emulation, where every load is ~50 times slower.
fn step() -> usize {
    if common::emulated() {
        37
    } else {
        1
    }
}

#[test]
fn every_truncation_is_a_clean_error() {
    let bytes = tiny_bytes().unwrap();
    let mut cases = 0;
    for cut in (0..bytes.len()).step_by(step()) {
        let err = load(&bytes[..cut], false).expect_err("a truncated file loaded");
        assert!(
            err.contains("bytes") || err.contains("short"),
            "cut {cut}: {err}"
        );
        cases += 1;
    }
    assert!(cases > 500 || common::emulated(), "{cases} cases");
}

#[test]
fn every_flipped_bit_is_caught_or_harmless() {
    let bytes = tiny_bytes().unwrap();
    let map = Map::new(&bytes);
    let mut counts = [0usize; 5];
    for pos in (0..bytes.len()).step_by(step()) {
        let mut d = bytes.clone();
        d[pos] ^= 1 << (pos % 8);
        let region = map.region(pos);
        match region {
            Region::Preamble | Region::Header | Region::Tokenizer => {
                let err = load(&d, false).expect_err("flipped byte loaded");
                assert!(
                    err.contains("damaged") || err.contains("version") || err.contains("magic"),
                    "flip at {pos} ({region:?}): {err}"
                );
            }
            Region::Tensor(i) => {
                load(&d, false).expect("a flipped weight byte still loads without verify");
                let err = load(&d, true).expect_err("verify missed a flipped weight byte");
                assert!(err.contains(&map.tensors[i].0), "flip at {pos}: {err}");
                if pos % 16 == 0 {
                    run_one_token(&d);
                }
            }
            Region::Padding => load(&d, true).expect("padding is not checked"),
        }
        counts[match region {
            Region::Preamble => 0,
            Region::Header => 1,
            Region::Tokenizer => 2,
            Region::Tensor(_) => 3,
            Region::Padding => 4,
        }] += 1;
    }
    assert!(counts[..4].iter().all(|&c| c > 0), "{counts:?}");
}

/// Values that break lengths, counts, offsets and shapes: zero, one, off-by-one, huge.
const HOSTILE: [u64; 6] = [0, 1, 0x40, 0x7fff_ffff, 0xffff_ffff, u64::MAX];

#[test]
fn hostile_fields_behind_valid_checksums_are_clean_errors() {
    let bytes = tiny_bytes().unwrap();
    assert_eq!(fix_checksums(bytes.clone()), bytes);
    let map = Map::new(&bytes);
    let mut cases = 0;
    let mut loaded = 0;
    // Preamble lengths and offsets, and every position of the header as a u32 and a u64.
    let positions = (12..56)
        .step_by(4)
        .chain(map.header.clone().step_by(step()));
    for pos in positions {
        for width in [4, 8] {
            for v in HOSTILE {
                let Some(field) = bytes.get(pos..pos + width) else {
                    continue;
                };
                let mut d = bytes.clone();
                d[pos..pos + width].copy_from_slice(&v.to_le_bytes()[..width]);
                if d[pos..pos + width] == *field {
                    continue;
                }
                let d = fix_checksums(d);
                cases += 1;
                if load(&d, true).is_ok() {
                    // Only metadata text or a float (epsilon) can change and still be a valid model.
                    loaded += 1;
                    run_one_token(&d);
                }
            }
        }
    }
    assert!(cases > 1000 || common::emulated(), "{cases} cases");
    // Emulated runs sample every few positions, so metadata text (which may change and still
    // load) weighs more in the sample than in the full sweep.
    let limit = if common::emulated() {
        cases / 4
    } else {
        cases / 20
    };
    assert!(loaded < limit, "{loaded} of {cases} changed files loaded");
}

#[test]
fn non_finite_weights_are_reported_not_sampled() {
    let bytes = tiny_bytes().unwrap();
    let layout = Layout::parse(&bytes).unwrap();
    let t = layout.entry("ln_f.bias").unwrap().clone();
    for poison in [f32::NAN, f32::INFINITY] {
        let mut d = bytes.clone();
        d[t.offset as usize..t.offset as usize + 4].copy_from_slice(&poison.to_le_bytes());
        let file = ModelFile::from_bytes(&d);
        let model = Model::load(&file, false).unwrap();
        let mut session = Session::new(&model, 4).unwrap();
        let mut logits = session.prefill(&[256]).unwrap().to_vec();
        let mut sampler = Sampler::new(SamplerConfig::default(), 257).unwrap();
        match sampler.sample(&mut logits, &[]) {
            Err(Error::Numeric(msg)) => assert!(msg.contains("non-finite"), "{msg}"),
            other => panic!("sampled from poisoned logits: {other:?}"),
        }
    }
}

// ---- through the binary ----

fn write_tmp(name: &str, bytes: &[u8]) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("corruption-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn gpt2q(args: &[&str]) -> (Option<i32>, String) {
    let out = common::gpt2q_command().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    (out.status.code(), err)
}

#[test]
fn the_binary_gives_exit_codes_for_damaged_files() {
    let bytes = tiny_bytes().unwrap();
    let map = Map::new(&bytes);
    let truncated = write_tmp("truncated.g2q", &bytes[..bytes.len() - 100]);
    let mut header = bytes.clone();
    header[map.header.start + 2] ^= 0x04;
    let header = write_tmp("header.g2q", &header);
    let (name, range) = &map.tensors[3];
    let mut weight = bytes.clone();
    weight[range.start + 1] ^= 0x40;
    let weight = write_tmp("weight.g2q", &weight);
    for path in [&truncated, &header] {
        let p = path.to_str().unwrap();
        for args in [
            &["verify", p][..],
            &["info", p],
            &["run", "-m", p, "-p", "a"],
        ] {
            let (code, err) = gpt2q(args);
            assert_eq!(code, Some(3), "{args:?}: {err}");
        }
    }
    let w = weight.to_str().unwrap();
    let (code, err) = gpt2q(&["verify", w]);
    assert!(code == Some(3) && err.contains(name.as_str()), "{err}");
    let (code, err) = gpt2q(&["run", "-m", w, "--verify", "-p", "a"]);
    assert!(code == Some(3) && err.contains(name.as_str()), "{err}");
    let (code, err) = gpt2q(&["run", "-m", w, "-p", "a", "-n", "2", "--seed", "1"]);
    assert!(code == Some(0) || code == Some(5), "{err}");
}

#[test]
fn the_binary_exits_5_on_non_finite_logits() {
    let mut bytes = tiny_bytes().unwrap();
    let t = Layout::parse(&bytes)
        .unwrap()
        .entry("ln_f.bias")
        .unwrap()
        .clone();
    let at = t.offset as usize;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let path = write_tmp("nan.g2q", &bytes);
    let p = path.to_str().unwrap();
    let (code, err) = gpt2q(&["run", "-m", p, "-p", "ab", "-n", "3", "--seed", "1"]);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("non-finite"), "{err}");
    let text = write_tmp("nan.txt", b"abcdefgh");
    let args = [
        "perplexity",
        "-m",
        p,
        "-f",
        text.to_str().unwrap(),
        "--ctx",
        "4",
    ];
    let (code, err) = gpt2q(&args);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("non-finite"), "{err}");
}
