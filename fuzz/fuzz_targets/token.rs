//! `lockbox::fuzzing::token` on whatever libFuzzer makes: see `src/fuzzing.rs` for what it
//! checks beyond "no panic". A broken invariant is a crash, kept in `fuzz/artifacts/token/`;
//! once fixed, the input goes to `fuzz/regressions/token/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = lockbox::fuzzing::token(data) {
        panic!("{broken}");
    }
});
