//! `sluice-cni`: CNI_* from the environment, the network configuration on stdin, the result or
//! error JSON on stdout.

use std::io::{Read, Write};
use std::process::ExitCode;

use sluice_cni::error::{codes, CniError};
use sluice_cni::version::CURRENT_VERSION;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => sluice_cni::run(|name| std::env::var_os(name), &stdin),
        Err(e) => sluice_cni::Outcome {
            stdout: CniError::new(
                codes::IO_FAILURE,
                "cannot read the network configuration from stdin",
            )
            .with_details(e.to_string())
            .to_json(CURRENT_VERSION)
            .to_string(),
            exit_code: 1,
        },
    };
    let mut out = std::io::stdout().lock();
    // If stdout is gone there is no one left to tell; the exit status still says it.
    let _ = out
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| out.flush());
    if outcome.exit_code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
