//! The `ocix` binary: all logic lives in the library's `cli` module.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    ocix::cli::main()
}
