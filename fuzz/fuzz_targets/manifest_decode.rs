//! Any bytes -> the manifest decoder: never a panic, and whatever it accepts
//! is canonical (re-encodes to the same bytes).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ocix::manifest::Manifest::from_bytes(data) {
        assert_eq!(m.to_bytes().expect("accepted manifest re-encodes"), data);
    }
});
