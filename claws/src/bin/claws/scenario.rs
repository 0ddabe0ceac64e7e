//! `claws test`: scripted scenario files (claws-test).

use std::path::PathBuf;

use crate::exit::Failure;
use crate::options::Global;

/// Run scripted scenario files (claws-test) against the handler a file names, or the echo
/// service's handler when it names none; prints `N passed, M failed` (steps) and exits 1 when
/// any step fails.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Scenario files.
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
}

pub(crate) async fn run(_global: &Global, args: Args) -> Result<(), Failure> {
    let _ = args.files;
    Err(Failure::other(
        "`claws test` is not available yet in this build",
    ))
}
