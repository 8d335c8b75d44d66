//! The converter's readers on arbitrary bytes: the safetensors header parser, and the same bytes as
//! the text of a `config.json`. Both must return `Ok` or `Err`, never panic.
#![no_main]

use std::path::Path;

use gpt2q_convert::checkpoint::HfConfig;
use gpt2q_convert::safetensors::SafetensorsFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.safetensors");
    if let Ok(tensors) = SafetensorsFile::parse(data, path) {
        for info in tensors.values() {
            assert!(info.range.end <= data.len(), "range past the end: {info:?}");
        }
    }
    // The JSON alone (a config.json, or a safetensors header without its length prefix).
    let json = data.get(8..).unwrap_or(data);
    if let Ok(text) = std::str::from_utf8(json) {
        let _ = HfConfig::from_json(text, Path::new("config.json"));
        let mut framed = (json.len() as u64).to_le_bytes().to_vec();
        framed.extend_from_slice(json);
        let _ = SafetensorsFile::parse(&framed, path);
    }
});
