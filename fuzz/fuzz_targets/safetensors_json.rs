//! The converter's readers on arbitrary bytes: the safetensors header parser, and the JSON after the
//! length prefix as a `config.json`. Both must return `Ok` or `Err`, never panic. The checks live
//! in `tests/common/fuzz_checks.rs`, shared with `tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod checks {
    include!("../../tests/common/fuzz_checks.rs");
}

fuzz_target!(|data: &[u8]| checks::safetensors_json(data));
