//! The fuzz targets' checks. They live in `checks.rs` so that `rust/tests/fuzz_corpus.rs` can
//! include the same file and run the committed corpus under the stable toolchain.

pub mod checks;
