//! Any bytes -> the user.rootlesscontainers payload decoder: never a panic;
//! what it decodes re-encodes to a payload that decodes the same.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((u, g)) = ocix::rootless::decode(data) {
        // decode never gives 4294967295 ("no change" reads as 0), so
        // encode never refuses what it gives
        match ocix::rootless::encode(u, g) {
            Ok(Some(p)) => assert_eq!(ocix::rootless::decode(&p), Ok((u, g))),
            Ok(None) => assert_eq!((u, g), (0, 0)),
            Err(e) => panic!("decoded ids {u}:{g} that encode refuses: {e}"),
        }
    }
});
