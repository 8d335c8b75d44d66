//! The GPT-2 tokenizer of the default model on arbitrary input. An input starting with an even
//! byte is text: encoding must not panic and decoding the ids must give the text back. An odd
//! first byte makes the rest a list of little-endian u16 token ids (mostly below n_vocab, some
//! not): decoding must succeed exactly when every id is in range, and streaming the same ids
//! through `Utf8Stream` must give the same text as decoding them at once.
#![no_main]

use std::sync::OnceLock;

use gpt2q::format::Layout;
use gpt2q::tokenizer::{Tokenizer, Utf8Stream};
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny-gpt2-q8.g2q");
        let bytes = std::fs::read(path).expect("the default model");
        let layout = Layout::parse(&bytes).expect("a valid model");
        Tokenizer::from_section(layout.tokenizer).expect("a valid tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let tok = tokenizer();
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
});
