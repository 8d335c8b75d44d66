//! Writes seed inputs for the fuzz targets into `fuzz/corpus/<target>/`:
//! `cargo +nightly run --release --example seeds` (run from `fuzz/`).

use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

fn safetensors(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + data_len, 0x3c);
    out
}

fn main() {
    write(
        "g2q_loader",
        "tiny.g2q",
        &gpt2q::synthetic::tiny_bytes().expect("tiny model"),
    );
    let st = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[3],"data_offsets":[16,22]},"c":{"dtype":"BF16","shape":[],"data_offsets":[22,24]}}"#;
    write(
        "safetensors_json",
        "small.safetensors",
        &safetensors(st, 24),
    );
    let config = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/tiny-gpt2/config.json"
    ))
    .expect("fixture config");
    let mut framed = (config.len() as u64).to_le_bytes().to_vec();
    framed.extend_from_slice(&config);
    write("safetensors_json", "config.json", &framed);
    write(
        "tokenizer",
        "text",
        b"\x00Hello, world! It's  <|endoftext|> caf\xc3\xa9 123\n\n\t ok",
    );
    write(
        "tokenizer",
        "ids",
        b"\x03\x10\x00\xff\xc4\x01\x02\x50\x00\x00\x01",
    );
}
