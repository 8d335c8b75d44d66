//! The default model's GPT-2 tokenizer on arbitrary input: text must encode and decode back to
//! itself; arbitrary ids must decode (or be refused when out of range) and stream to the same
//! text. The checks live in `tests/common/fuzz_checks.rs`, shared with
//! `tests/fuzz_regressions.rs`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod checks {
    include!("../../tests/common/fuzz_checks.rs");
}

fuzz_target!(|data: &[u8]| {
    static TOK: OnceLock<gpt2q::tokenizer::Tokenizer> = OnceLock::new();
    checks::tokenizer(TOK.get_or_init(checks::default_tokenizer), data);
});
