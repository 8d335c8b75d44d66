//! gpt2q-convert as a library: the pieces of the Hugging Face → `.g2q` converter, exposed so that
//! integration tests (and fuzzers) can reach them.

pub mod checkpoint;
pub mod convert;
pub mod encode;
pub mod importance;
pub mod output;
pub mod q4_search;
pub mod safetensors;
pub mod sensitivity;
pub mod synthetic;
