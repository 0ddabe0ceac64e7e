//! Running the repository's `scripts/` from tests, off the async runtime.

use std::path::PathBuf;

use claws_core::{Error, Result};

/// Runs `scripts/NAME ARGS...`; its stdout, or an error with its stderr.
pub(crate) async fn run(name: &'static str, args: &[&str]) -> Result<String> {
    run_with(name, args, &[]).await
}

/// [`run`] with environment variables `envs` set for the script.
pub(crate) async fn run_with(
    name: &'static str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Result<String> {
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(&path)
            .args(&args)
            .envs(envs)
            .output()
            .map_err(|e| {
                Error::backend(format!(
                    "cannot run scripts/{name} (run scripts/provision first): {e}"
                ))
            })?;
        if !out.status.success() {
            return Err(Error::backend(format!(
                "scripts/{name} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await
    .map_err(|e| Error::backend(format!("the scripts/{name} task failed: {e}")))?
}
