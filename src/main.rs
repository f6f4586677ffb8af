//! The `meshchat` binary: parse arguments, start tracing, hand over to the CLI.

use std::process::ExitCode;

fn main() -> ExitCode {
    meshchat::cli::main()
}
