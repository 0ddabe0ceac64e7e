//! Bad input gets clear errors, within a bounded time.

use std::time::{Duration, Instant};

use claws_core::{Claw, Error};

use crate::conformance::harness::{
    ensure, jid, require, CaseError, CaseResult, Context, Harness, WAIT,
};
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

/// A JID whose queue names would pass 255 bytes is refused with `Error::NameTooLong`, at make,
/// start or send.
pub(super) async fn oversize_name(h: &Harness) -> CaseResult {
    let long = h.full("big", &"r".repeat(260));
    let refused = match tokio::time::timeout(WAIT, h.factory.make(&long, &Options::default())).await
    {
        Err(_) => {
            return Err(format!("make of a 300-byte JID did not return within {WAIT:?}").into())
        }
        Ok(Err(e)) => e,
        Ok(Ok(claw)) => {
            h.note_jid(&long);
            h.note_claw(&claw);
            let (events, _rx) = claws_core::Events::channel(16);
            match tokio::time::timeout(WAIT, claw.start(events)).await {
                Err(_) => return Err(format!("start of a 300-byte JID did not return within {WAIT:?}").into()),
                Ok(Err(e)) => e,
                Ok(Ok(())) => return Err("an instance with a 300-byte JID started; its queue names are over AMQP's 255-byte limit".into()),
            }
        }
    };
    ensure!(
        matches!(refused, Error::NameTooLong { .. }),
        "a 300-byte JID was refused with `{refused}`, expected Error::NameTooLong"
    );
    let sender = h.sender("client").await?;
    let sent = tokio::time::timeout(WAIT, sender.send(&jid(&long)?, None, h.stanza("x")))
        .await
        .map_err(|_| format!("a send to a 300-byte JID did not return within {WAIT:?}"))?;
    ensure!(matches!(sent, Err(Error::NameTooLong { .. })), "a send to a 300-byte JID returned {sent:?}, expected Error::NameTooLong (the routing key is over 255 bytes)");
    Ok(())
}

/// A direct send to a JID nobody consumes fails with `Error::NoRoute`.
pub(super) async fn unroutable_send(h: &Harness) -> CaseResult {
    require(h.caps()?.unroutable_errors, "unroutable_errors")?;
    let sender = h.sender("client").await?;
    let nobody = h.full("nobody", "x");
    let sent = tokio::time::timeout(WAIT, sender.send(&jid(&nobody)?, None, h.stanza("lost")))
        .await
        .map_err(|_| format!("an unroutable send did not return within {WAIT:?}"))?;
    ensure!(
        matches!(sent, Err(Error::NoRoute { .. })),
        "a send to {nobody} (nobody consumes it) returned {sent:?}, expected Error::NoRoute"
    );
    Ok(())
}

/// Starting a claw whose broker is unreachable fails within a bounded time, with an error.
pub(super) async fn unreachable_broker(h: &Harness) -> CaseResult {
    const BOUND: Duration = Duration::from_secs(30);
    let jid_u = h.full("lonely", "x");
    let claw = match h.factory.unreachable(&jid_u).await {
        Some(made) => made.ctx("factory.unreachable")?,
        None if h.factory.broker_addr().is_some() => {
            let closed = {
                let l =
                    std::net::TcpListener::bind("127.0.0.1:0").ctx("binding a port to close")?;
                l.local_addr().ctx("local_addr")?
            };
            h.factory
                .make_at(&jid_u, &Options::default(), closed)
                .await
                .ctx(format_args!("factory.make_at({closed})"))?
        }
        None => {
            return Err(CaseError::Skip(
                "not network based: the factory has no broker_addr() nor unreachable() hook".into(),
            ))
        }
    };
    h.note_jid(&jid_u);
    h.note_claw(&claw);
    let (events, _rx) = claws_core::Events::channel(16);
    let t = Instant::now();
    match tokio::time::timeout(BOUND, claw.start(events)).await {
        Err(_) => ensure!(
            false,
            "start against an unreachable broker hung for {BOUND:?}"
        ),
        Ok(Ok(())) => ensure!(false, "start against an unreachable broker succeeded"),
        Ok(Err(e)) => {
            tracing::info!(error = %e, elapsed = ?t.elapsed(), "unreachable broker refused as expected")
        }
    }
    Ok(())
}
