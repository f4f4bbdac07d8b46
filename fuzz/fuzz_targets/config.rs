//! `lockbox::fuzzing::config` on whatever libFuzzer makes: see `src/fuzzing.rs` for what it
//! checks beyond "no panic". A broken invariant is a crash, kept in `fuzz/artifacts/config/`;
//! once fixed, the input goes to `fuzz/regressions/config/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = lockbox::fuzzing::config(data) {
        panic!("{broken}");
    }
});
