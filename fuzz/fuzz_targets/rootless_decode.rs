//! Any bytes -> the user.rootlesscontainers payload decoder: never a panic;
//! what it decodes re-encodes to a payload that decodes the same.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((u, g)) = ocix::rootless::decode(data) {
        match ocix::rootless::encode(u, g) {
            Some(p) => assert_eq!(ocix::rootless::decode(&p), Ok((u, g))),
            None => assert_eq!((u, g), (0, 0)),
        }
    }
});
