//! Bad input gets clear errors, within a bounded time.

use claws_core::Error;

use crate::conformance::harness::{ensure, CaseResult, Harness, WAIT};
use crate::conformance::Options;

/// Invalid JIDs are refused by `make` with `Error::InvalidJid`.
pub(super) async fn invalid_jid(h: &Harness) -> CaseResult {
    for bad in [
        "",
        "a@b@c",
        "@conformance.claws.test",
        "user@conformance.claws.test/",
    ] {
        let made = tokio::time::timeout(WAIT, h.factory.make(bad, &Options::default()))
            .await
            .map_err(|_| format!("make({bad:?}) did not return within {WAIT:?}"))?;
        match made {
            Err(Error::InvalidJid { .. }) => {}
            Err(other) => ensure!(
                false,
                "make({bad:?}) failed with `{other}`, expected Error::InvalidJid"
            ),
            Ok(claw) => {
                let _ = claw.close().await;
                ensure!(false, "make({bad:?}) accepted an invalid JID")
            }
        }
    }
    Ok(())
}
