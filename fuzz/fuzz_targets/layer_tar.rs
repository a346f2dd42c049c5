//! Any bytes as an uncompressed layer -> the tar reader and the in-memory
//! tree: never a panic, and a layer that applies gives a manifest that
//! encodes (and so passes every rule the decoder checks).
#![no_main]
use libfuzzer_sys::fuzz_target;
use ocix::manifest::Digest;
use ocix::oci::{apply_tar, tree::Tree};

fuzz_target!(|data: &[u8]| {
    let mut tree = Tree::default();
    // both ways of meeting a symlink to a directory (--keep-dirlinks)
    tree.keep_dirlinks(data.len() % 2 == 1);
    tree.begin_layer();
    if apply_tar(&mut tree, data, None, Digest::of(b"layer")).is_ok() {
        if let Ok(m) = tree.to_manifest() {
            m.to_bytes().expect("an applied layer encodes");
        }
    }
});
