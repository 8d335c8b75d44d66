//! The `.g2q` loader on arbitrary bytes: `Layout::parse`, `verify_tensors`, `Model::load` and, for
//! small models that load, one forward step. Each input is tried as given and again with its
//! checksums and file length patched to match, so the fuzzer reaches the header, tensor-table and
//! tokenizer parsers instead of stopping at a CRC mismatch.
#![no_main]

use gpt2q::format::{Layout, MAGIC, PREAMBLE_LEN};
use gpt2q::mmap::ModelFile;
use gpt2q::model::{Model, Session};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(fixed) = fix_checksums(data) {
        check(&fixed);
    }
});

fn check(bytes: &[u8]) {
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
            if let Ok(mut session) = Session::new(&model, 2) {
                let _ = session.prefill(&[hp.eos_id, 0]);
            }
        }
    }
}

/// `data` with the preamble's file length, header, tokenizer and preamble CRC-32s made consistent.
fn fix_checksums(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < PREAMBLE_LEN || data[..8] != MAGIC {
        return None;
    }
    let mut b = data.to_vec();
    let len = b.len() as u64;
    b[48..56].copy_from_slice(&len.to_le_bytes());
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as u64;
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let header_end = PREAMBLE_LEN as u64 + u32_at(&b, 12);
    if header_end <= len {
        let crc = crc32fast::hash(&b[PREAMBLE_LEN..header_end as usize]);
        b[16..20].copy_from_slice(&crc.to_le_bytes());
    }
    let (tok_off, tok_len) = (u64_at(&b, 24), u64_at(&b, 32));
    if tok_off.checked_add(tok_len).is_some_and(|end| end <= len) {
        let crc = crc32fast::hash(&b[tok_off as usize..(tok_off + tok_len) as usize]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32fast::hash(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    Some(b)
}
