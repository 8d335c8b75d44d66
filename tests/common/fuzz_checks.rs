// The properties the fuzz targets check, shared with `tests/fuzz_regressions.rs` (which replays
// saved inputs through them) and `tests/corruption.rs`. The fuzz crate `include!`s this file, so
// it may only use `std`, `gpt2q`, `gpt2q_convert` and `crc32fast`.

use std::path::Path;

use gpt2q::format::{Layout, MAGIC, PREAMBLE_LEN};
use gpt2q::mmap::ModelFile;
use gpt2q::model::Model;
use gpt2q::session::Session;
use gpt2q::tokenizer::{Tokenizer, Utf8Stream};
use gpt2q_convert::checkpoint::HfConfig;
use gpt2q_convert::safetensors::SafetensorsFile;

/// The `.g2q` loader: `data` as given and with its checksums patched to match must parse, verify
/// and load to `Ok` or `Err`, and a small model that loads must run a step without panicking.
pub fn g2q_loader(data: &[u8]) {
    check_g2q(data);
    if data.len() >= PREAMBLE_LEN && data[..8] == MAGIC {
        check_g2q(&fix_checksums(data.to_vec()));
    }
}

fn check_g2q(bytes: &[u8]) {
    if let Ok(layout) = Layout::parse(bytes) {
        let _ = layout.verify_tensors();
    }
    let file = ModelFile::from_bytes(bytes);
    for verify in [false, true] {
        let Ok(model) = Model::load(&file, verify) else {
            continue;
        };
        let hp = model.hparams;
        if hp.n_embd <= 256 && hp.n_inner <= 1024 && hp.n_vocab <= 4096 && hp.n_layer <= 4 {
            if let Ok(mut session) = Session::new(&model, 2.min(hp.n_ctx as usize)) {
                let _ = session.prefill(&[hp.eos_id]);
            }
        }
    }
}

/// `b` (at least a preamble long) with the file length and the header, tokenizer and preamble
/// CRC-32s recomputed, so parsing gets past the checksums to the fields behind them.
pub fn fix_checksums(mut b: Vec<u8>) -> Vec<u8> {
    let len = b.len() as u64;
    b[48..56].copy_from_slice(&len.to_le_bytes());
    let header_end = PREAMBLE_LEN + u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
    if header_end <= b.len() {
        let crc = crc32fast::hash(&b[PREAMBLE_LEN..header_end]);
        b[16..20].copy_from_slice(&crc.to_le_bytes());
    }
    let off = u64::from_le_bytes(b[24..32].try_into().unwrap());
    let n = u64::from_le_bytes(b[32..40].try_into().unwrap());
    if off.checked_add(n).is_some_and(|end| end <= len) {
        let crc = crc32fast::hash(&b[off as usize..(off + n) as usize]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32fast::hash(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The converter's readers: the safetensors header parser on `data`, and the JSON after the
/// 8-byte length prefix as a `config.json` and re-framed as a safetensors header.
pub fn safetensors_json(data: &[u8]) {
    let path = Path::new("fuzz.safetensors");
    if let Ok(tensors) = SafetensorsFile::parse(data, path) {
        for info in tensors.values() {
            assert!(info.range.end <= data.len(), "range past the end: {info:?}");
        }
    }
    let json = data.get(8..).unwrap_or(data);
    if let Ok(text) = std::str::from_utf8(json) {
        let _ = HfConfig::from_json(text, Path::new("config.json"));
        let mut framed = (json.len() as u64).to_le_bytes().to_vec();
        framed.extend_from_slice(json);
        let _ = SafetensorsFile::parse(&framed, path);
    }
}

/// The tokenizer of the default model.
pub fn default_tokenizer() -> Tokenizer {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tiny-gpt2-q8.g2q");
    let path = if Path::new(path).exists() {
        path.to_string()
    } else {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny-gpt2-q8.g2q").to_string()
    };
    let bytes = std::fs::read(path).expect("the default model");
    let layout = Layout::parse(&bytes).expect("a valid model");
    Tokenizer::from_section(layout.tokenizer).expect("a valid tokenizer")
}

/// The tokenizer: an even first byte makes the rest text (lossily decoded), which must encode
/// and decode back to itself. An odd one makes it little-endian u16 ids (reduced below n_vocab
/// unless the byte is 1): decoding succeeds exactly when all are in range, and streaming them
/// through `Utf8Stream` gives the same text as decoding at once.
pub fn tokenizer(tok: &Tokenizer, data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let text = String::from_utf8_lossy(rest);
        let ids = tok.encode(&text);
        assert_eq!(tok.decode(&ids).expect("ids from encode are valid"), text);
        return;
    }
    let n = tok.n_tokens() as u32;
    let ids: Vec<u32> = rest
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
        .map(|v| if mode == 1 { v } else { v % n })
        .collect();
    match tok.decode(&ids) {
        Ok(text) => {
            assert!(ids.iter().all(|&i| i < n));
            let mut stream = Utf8Stream::new();
            let mut streamed = String::new();
            for &id in &ids {
                streamed.push_str(stream.push(tok.token_bytes(id).unwrap_or(&[])));
            }
            streamed.push_str(stream.finish());
            assert_eq!(streamed, text);
        }
        Err(_) => assert!(ids.iter().any(|&i| i >= n)),
    }
}
