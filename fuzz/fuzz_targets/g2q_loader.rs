//! The `.g2q` loader on arbitrary bytes: `Layout::parse`, `verify_tensors`, `Model::load` and, for
//! small models that load, one forward step. Each input is tried as given and again with its
//! checksums and file length patched to match, so the fuzzer reaches the header, tensor-table and
//! tokenizer parsers instead of stopping at a CRC mismatch. The checks live in
//! `tests/common/fuzz_checks.rs`, shared with `tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod checks {
    include!("../../tests/common/fuzz_checks.rs");
}

fuzz_target!(|data: &[u8]| checks::g2q_loader(data));
