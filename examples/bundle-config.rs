//! Writes BUNDLE/config.json for an unpacked rootfs and an image config blob,
//! the way `ocix unpack --image` finishes a bundle. Used by the end-to-end
//! test `integration/t-bundle-runc.sh`.
//!
//! Usage: bundle-config IMAGE_CONFIG_JSON ROOTFS BUNDLE [--rootless]
//!
//! `root.path` is the rootfs's name when ROOTFS is directly inside BUNDLE,
//! its absolute path otherwise.

use ocix::bundle::{BundleOptions, read_image_config, runtime_config, write_bundle_config};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rootless = args.iter().any(|a| a == "--rootless");
    let pos: Vec<&String> = args.iter().filter(|a| *a != "--rootless").collect();
    let [config, rootfs, bundle] = pos.as_slice() else {
        eprintln!("usage: bundle-config IMAGE_CONFIG_JSON ROOTFS BUNDLE [--rootless]");
        return ExitCode::from(2);
    };
    let (rootfs, bundle) = (PathBuf::from(rootfs), PathBuf::from(bundle));
    let run = || -> Result<(), Box<dyn std::error::Error>> {
        let image = read_image_config(&PathBuf::from(config))?;
        let abs = std::fs::canonicalize(&rootfs)?;
        let inside = abs.parent() == Some(std::fs::canonicalize(&bundle)?.as_path());
        let opts = BundleOptions { rootless, root_path: (!inside).then_some(abs), ..Default::default() };
        let spec = runtime_config(&image, &rootfs, &opts)?;
        write_bundle_config(&bundle, &spec)?;
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bundle-config: {e}");
            ExitCode::from(2)
        }
    }
}
