//! Who receives what: full-JID direct, bare-JID load balancing, broadcasts, isolation, ids.

use claws_core::topology::DIRECT_EXCHANGE;
use claws_core::{Claw, QueueKind, Via};

use crate::conformance::harness::{
    ensure, fence_all, jid, CaseResult, Context, Harness, Policy, WAIT,
};
use crate::conformance::Options;

/// Checks the exchange: the expected one, or `None` for a claw outside AMQP.
fn exchange_ok(via: &Via, expected: &str) -> bool {
    via.exchange.as_deref().is_none_or(|e| e == expected)
}

/// A stanza sent to a full JID reaches that instance only, with every `Via` field right.
pub(super) async fn direct_full_jid(h: &Harness) -> CaseResult {
    let (tx, mut inbox) = h.inbox();
    let a = h
        .start(&h.full("svc", "a"), &Options::default(), Policy::Ack, &tx)
        .await?;
    let b = h
        .start(&h.full("svc", "b"), &Options::default(), Policy::Ack, &tx)
        .await?;
    let sender = h.sender("client").await?;
    let to = jid(&a.jid())?;
    let payload = h.stanza("to-a");
    sender
        .send(&to, Some("corr-1"), payload.clone())
        .await
        .ctx(format_args!("sending to {to}"))?;
    let got = inbox
        .packets(1, WAIT, "the stanza sent to A's full JID")
        .await?;
    let g = &got[0];
    ensure!(
        g.index == a.index,
        "sent to {}, but instance #{} received it (A is #{})",
        a.jid(),
        g.index,
        a.index
    );
    ensure!(
        g.packet == payload,
        "payload changed: sent {payload:?}, got {:?}",
        g.packet
    );
    let via = &g.via;
    ensure!(
        via.queue == QueueKind::Direct,
        "via.queue is `{}`, expected `direct`",
        via.queue
    );
    ensure!(
        via.jid == a.jid(),
        "via.jid is `{}`, expected the destination `{}`",
        via.jid,
        a.jid()
    );
    ensure!(
        exchange_ok(via, DIRECT_EXCHANGE),
        "via.exchange is {:?}, expected `{DIRECT_EXCHANGE}` (or none outside AMQP)",
        via.exchange
    );
    ensure!(
        &*via.claw == a.claw.name(),
        "via.claw is `{}`, expected the receiving claw's name `{}`",
        via.claw,
        a.claw.name()
    );
    ensure!(
        via.id.as_deref() == Some("corr-1"),
        "via.id is {:?}, expected the correlation id \"corr-1\"",
        via.id
    );
    ensure!(
        via.from.as_ref() == Some(sender.jid()),
        "via.from is {:?}, expected the sender `{}` (the router routes replies by it)",
        via.from.as_ref().map(|j| j.to_string()),
        sender.jid()
    );
    ensure!(
        g.attempt == 1,
        "attempt is {} on a first delivery, expected 1",
        g.attempt
    );
    let extra = fence_all(h, &mut inbox, &*sender, &[&a, &b]).await?;
    ensure!(
        extra.is_empty(),
        "unexpected deliveries after the one sent to A: {extra:?}"
    );
    Ok(())
}
