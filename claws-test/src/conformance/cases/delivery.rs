//! Delivery guarantees: order, concurrency, redelivery, dead-lettering, persistence, close.

use std::collections::{HashMap, HashSet};

use claws_core::topology::Subscriptions;
use claws_core::Error;
use tokio::sync::{oneshot, watch};

use super::routing::send_all;
use crate::conformance::harness::{
    ensure, fence_all, jid, require, summary, CaseResult, Context, Got, Harness, Policy, Seen, WAIT,
};
use crate::conformance::Options;

/// Only the instance's own direct queue.
fn own_queue() -> Options {
    Options {
        subscriptions: Subscriptions {
            direct: true,
            ..Subscriptions::none()
        },
        ..Options::default()
    }
}

/// Checks at-least-once: every key in `keys` arrived, and a key arrived again only as a
/// redelivery (attempt > 1).
fn all_once_or_redelivered(got: &[Got], keys: &[String]) -> CaseResult {
    let mut first: HashSet<&str> = HashSet::new();
    let mut dup_first_attempt = Vec::new();
    for g in got {
        let Some(k) = g.key.as_deref() else { continue };
        if !first.insert(k) && g.attempt <= 1 {
            dup_first_attempt.push(k);
        }
    }
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !first.contains(k.as_str()))
        .collect();
    ensure!(
        missing.is_empty(),
        "{} stanza(s) never arrived (waited up to the bulk timeout), e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    ensure!(
        dup_first_attempt.is_empty(),
        "{} stanza(s) arrived twice without being redeliveries (attempt 1 both times), e.g. {:?}",
        dup_first_attempt.len(),
        &dup_first_attempt[..dup_first_attempt.len().min(5)]
    );
    Ok(())
}

/// Stanzas from one sender reach a single-consumer instance in the order sent.
pub(super) async fn order_single_consumer(h: &Harness) -> CaseResult {
    require(h.caps()?.ordering, "ordering")?;
    const N: usize = 500;
    let (tx, mut inbox) = h.inbox();
    let r = h
        .start(&h.full("ordered", "r"), &own_queue(), Policy::Ack, &tx)
        .await?;
    let sender = h.sender("client").await?;
    let keys: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    send_all(h, &sender, &r.jid(), keys, 1).await?;
    let got = inbox
        .packets(N, h.bulk, "500 stanzas from one sender")
        .await?;
    let order: Vec<usize> = got
        .iter()
        .filter_map(|g| g.key.as_deref()?.parse().ok())
        .collect();
    if let Some(i) = order.windows(2).position(|w| w[1] != w[0] + 1) {
        ensure!(
            false,
            "out of order: stanza {} arrived right after {} (position {})",
            order[i + 1],
            order[i],
            i + 1
        );
    }
    ensure!(
        order.len() == N && order[0] == 0,
        "expected 0..{N} in order, got {} stanzas starting with {:?}",
        order.len(),
        order.first()
    );
    Ok(())
}

/// 50 concurrent senders (tasks over 10 claws) x 100 stanzas: all arrive, none twice beyond
/// what at-least-once allows.
pub(super) async fn concurrent_senders(h: &Harness) -> CaseResult {
    const SENDERS: usize = 50;
    const EACH: usize = 100;
    let (tx, mut inbox) = h.inbox();
    let r = h
        .start(&h.full("busy", "r"), &own_queue(), Policy::Ack, &tx)
        .await?;
    let to = jid(&r.jid())?;
    let mut claws = Vec::new();
    for i in 0..10 {
        claws.push(h.sender(&format!("sender{i}")).await?);
    }
    let tasks = (0..SENDERS).map(|t| {
        let claw = claws[t % claws.len()].clone();
        let payloads: Vec<_> = (0..EACH).map(|i| h.stanza(&format!("{t}-{i}"))).collect();
        let to = to.clone();
        tokio::spawn(async move {
            for p in payloads {
                claw.send(&to, None, p).await?;
            }
            Ok::<(), Error>(())
        })
    });
    let keys: Vec<String> = (0..SENDERS)
        .flat_map(|t| (0..EACH).map(move |i| format!("{t}-{i}")))
        .collect();
    let sent = futures_util::future::join_all(tasks);
    let mut distinct = HashSet::new();
    let receiving = inbox.collect(h.bulk, |g| {
        if let Some(k) = g.last().and_then(|l| l.key.clone()) {
            distinct.insert(k);
        }
        distinct.len() >= SENDERS * EACH
    });
    let (sent, got) = tokio::join!(sent, receiving);
    for s in sent {
        s.map_err(|e| format!("a sender task panicked: {e}"))?
            .ctx("a concurrent send")?;
    }
    all_once_or_redelivered(&got.0, &keys)
}

/// A handler error leads to redelivery, with a higher attempt number; once acked, no more.
pub(super) async fn handler_error_redelivery(h: &Harness) -> CaseResult {
    require(h.caps()?.redelivery, "redelivery")?;
    const N: usize = 10;
    let (tx, mut inbox) = h.inbox();
    let r = h
        .start(
            &h.full("flaky", "r"),
            &own_queue(),
            Policy::RejectFirst,
            &tx,
        )
        .await?;
    let sender = h.sender("client").await?;
    let keys: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    send_all(h, &sender, &r.jid(), keys.clone(), 1).await?;
    let mut acked = HashSet::new();
    let got = inbox
        .until(
            h.wait,
            "each stanza redelivered after its first attempt failed",
            |g| {
                if let Some(l) = g.last().filter(|l| l.attempt > 1) {
                    acked.insert(l.key.clone());
                }
                acked.len() >= N
            },
        )
        .await?;
    let mut attempts: HashMap<&str, Vec<u32>> = HashMap::new();
    for g in &got {
        attempts
            .entry(g.key.as_deref().unwrap_or("?"))
            .or_default()
            .push(g.attempt);
    }
    for k in &keys {
        let a = attempts.get(k.as_str()).cloned().unwrap_or_default();
        ensure!(
            a.first() == Some(&1),
            "stanza {k}: attempts {a:?}, the first should be 1"
        );
        ensure!(
            a.len() == 2 && a[1] == 2,
            "stanza {k}: attempts {a:?}, expected [1, 2] (rejected once, then acked)"
        );
    }
    let extra = fence_all(h, &mut inbox, &*sender, &[&r]).await?;
    ensure!(
        extra.is_empty(),
        "acked stanzas came back: {}",
        summary(&extra)
    );
    Ok(())
}

/// A stanza that always fails is delivered `max_deliveries` times, then dead-lettered.
pub(super) async fn dead_letter_after_bound(h: &Harness) -> CaseResult {
    require(h.caps()?.dead_letter, "dead_letter")?;
    let opts = Options {
        max_deliveries: 3,
        ..own_queue()
    };
    let (tx, mut inbox) = h.inbox();
    let r = h
        .start(&h.full("poisoned", "r"), &opts, Policy::Reject, &tx)
        .await?;
    let sender = h.sender("client").await?;
    let to = jid(&r.jid())?;
    let poison = h.stanza("poison");
    sender
        .send(&to, None, poison.clone())
        .await
        .ctx("sending the poison stanza")?;
    let got = inbox
        .until(h.wait, "3 deliveries of a stanza that always fails", |g| {
            g.len() >= 3
        })
        .await?;
    let attempts: Vec<u32> = got.iter().map(|g| g.attempt).collect();
    ensure!(
        attempts == [1, 2, 3],
        "attempts of the failing stanza: {attempts:?}, expected [1, 2, 3]"
    );
    // A second failing stanza, sent after the first was rejected for the last time: once it has
    // been through its own three attempts, the first would have come back if it were requeued.
    sender
        .send(&to, None, h.stanza("fence"))
        .await
        .ctx("sending the fence")?;
    let got = inbox
        .until(h.wait, "the fence's three attempts", |g| {
            g.last()
                .is_some_and(|l| l.key.as_deref() == Some("fence") && l.attempt >= 3)
        })
        .await?;
    let again: Vec<&Got> = got
        .iter()
        .filter(|g| g.key.as_deref() == Some("poison"))
        .collect();
    ensure!(again.is_empty(), "the failing stanza was delivered again after its 3rd attempt (attempts {:?}); it should be dead-lettered", again.iter().map(|g| g.attempt).collect::<Vec<_>>());
    if let Some(dead) = h.factory.dead_lettered().await {
        ensure!(
            dead.contains(&poison),
            "the failing stanza is not among the {} dead-lettered payloads",
            dead.len()
        );
    }
    Ok(())
}

/// An instance closed mid-stream (twice) and restarted with the same JID gets the rest.
pub(super) async fn persistence_across_restart(h: &Harness) -> CaseResult {
    require(h.caps()?.persistence, "persistence")?;
    const N: usize = 300;
    let (tx, mut inbox) = h.inbox();
    let jid_r = h.full("durable", "r");
    let first = h.start(&jid_r, &own_queue(), Policy::Ack, &tx).await?;
    let sender = h.sender("client").await?;
    let keys: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    let sending = {
        let to = jid(&jid_r)?;
        let payloads: Vec<_> = keys.iter().map(|k| h.stanza(k)).collect();
        let sender = sender.clone();
        tokio::spawn(async move {
            for p in payloads {
                sender.send(&to, None, p).await?;
            }
            Ok::<(), Error>(())
        })
    };
    let mut all = Vec::new();
    let mut life = first;
    for round in 1..=2 {
        let got = inbox
            .packets(
                N / 3,
                h.wait,
                &format!("the first {} stanzas of life {round}", N / 3),
            )
            .await?;
        all.extend(got);
        life.close().await?;
        life = h.start(&jid_r, &own_queue(), Policy::Ack, &tx).await?;
    }
    sending
        .await
        .map_err(|e| format!("the sender panicked: {e}"))?
        .ctx("sending")?;
    let mut distinct: HashSet<String> = all.iter().filter_map(|g| g.key.clone()).collect();
    let rest = inbox
        .collect(h.bulk, |g| {
            if let Some(k) = g.last().and_then(|l| l.key.clone()) {
                distinct.insert(k);
            }
            distinct.len() >= N
        })
        .await
        .0;
    all.extend(rest);
    all_once_or_redelivered(&all, &keys)
}

/// Closing while handlers are busy lets them finish and ack; nothing is lost or redelivered.
pub(super) async fn graceful_close_busy(h: &Harness) -> CaseResult {
    const N: usize = 20;
    let persistent = h.caps()?.persistence;
    let (tx, mut inbox) = h.inbox();
    let (open, gate) = watch::channel(false);
    let jid_r = h.full("worker", "r");
    let r = h
        .start(&jid_r, &own_queue(), Policy::Hold(gate), &tx)
        .await?;
    let sender = h.sender("client").await?;
    let keys: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    send_all(h, &sender, &jid_r, keys.clone(), 1).await?;
    let held = inbox
        .packets(N, h.wait, "20 deliveries, all held by busy handlers")
        .await?;
    let (started_tx, started) = oneshot::channel();
    let closing = {
        let r = r.clone();
        tokio::spawn(async move {
            let close = r.close();
            let _ = started_tx.send(());
            close.await
        })
    };
    let _ = started.await;
    tokio::task::yield_now().await;
    let _ = open.send(true);
    closing
        .await
        .map_err(|e| format!("close panicked: {e}"))??;
    let mut settled = Vec::new();
    while settled.len() < held.len() {
        match inbox.next(h.wait).await {
            Some(Seen::Settled(key, result)) => settled.push((key, result)),
            Some(_) => {}
            None => ensure!(
                false,
                "only {} of {} busy handlers settled after close returned",
                settled.len(),
                held.len()
            ),
        }
    }
    let failed: Vec<_> = settled
        .iter()
        .filter_map(|(k, r)| r.as_ref().err().map(|e| (k, e)))
        .collect();
    ensure!(
        failed.is_empty(),
        "acks of in-flight stanzas failed during close (close must wait for them): {failed:?}"
    );
    if persistent {
        let (tx2, mut inbox2) = h.inbox();
        let again = h.start(&jid_r, &own_queue(), Policy::Ack, &tx2).await?;
        let back = fence_all(h, &mut inbox2, &*sender, &[&again]).await?;
        ensure!(
            back.is_empty(),
            "stanzas acked during close came back after a restart: {}",
            summary(&back)
        );
    }
    Ok(())
}

/// After `close`, sending fails with `Error::Closed`.
pub(super) async fn use_after_close(h: &Harness) -> CaseResult {
    let (tx, _inbox) = h.inbox();
    let r = h
        .start(&h.full("gone", "r"), &own_queue(), Policy::Ack, &tx)
        .await?;
    r.close().await?;
    let to = jid(&r.jid())?;
    let sent = tokio::time::timeout(WAIT, r.claw.send(&to, None, h.stanza("late")))
        .await
        .map_err(|_| format!("send after close did not return within {WAIT:?}"))?;
    ensure!(
        matches!(sent, Err(Error::Closed { .. })),
        "send after close returned {sent:?}, expected Error::Closed"
    );
    Ok(())
}
