//! Who receives what: full-JID direct, bare-JID load balancing, broadcasts, isolation, ids.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use claws_core::topology::{Subscriptions, DIRECT_EXCHANGE, FANOUT_EXCHANGE};
use claws_core::{Claw, QueueKind, Via};

use crate::conformance::harness::{
    ensure, fence_all, jid, require, CaseResult, Context, Harness, Instance, Policy,
};
use crate::conformance::Options;

/// Checks the exchange: the expected one, or `None` for a claw outside AMQP.
fn exchange_ok(via: &Via, expected: &str) -> bool {
    via.exchange.as_deref().is_none_or(|e| e == expected)
}

/// Consumes the instance's own and group direct queues, no broadcasts.
pub(super) fn direct_only() -> Options {
    Options {
        subscriptions: Subscriptions {
            direct: true,
            group_direct: true,
            ..Subscriptions::none()
        },
        ..Options::default()
    }
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
        .packets(1, h.wait, "the stanza sent to A's full JID")
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

/// Sends `keys` to `to` from `sender` in `tasks` concurrent loops.
pub(super) async fn send_all(
    h: &Harness,
    sender: &Arc<dyn Claw>,
    to: &str,
    keys: Vec<String>,
    tasks: usize,
) -> CaseResult {
    let to = jid(to)?;
    let chunk = keys.len().div_ceil(tasks.max(1)).max(1);
    let sends = keys.chunks(chunk).map(|keys| {
        let payloads: Vec<_> = keys.iter().map(|k| h.stanza(k)).collect();
        let sender = sender.clone();
        let to = to.clone();
        async move {
            for p in payloads {
                sender.send(&to, None, p).await?;
            }
            Ok::<(), claws_core::Error>(())
        }
    });
    for r in futures_util::future::join_all(sends).await {
        r.ctx(format_args!("sending to {to}"))?;
    }
    Ok(())
}

/// A bare JID shared by three instances: each of 3000 stanzas is handled exactly once, and
/// every instance takes a share.
pub(super) async fn bare_jid_load_balancing(h: &Harness) -> CaseResult {
    require(h.caps()?.load_balancing, "load_balancing")?;
    const N: usize = 3000;
    let (tx, mut inbox) = h.inbox();
    let mut group = Vec::new();
    for r in ["1", "2", "3"] {
        group.push(
            h.start(&h.full("worker", r), &Options::default(), Policy::Ack, &tx)
                .await?,
        );
    }
    let sender = h.sender("client").await?;
    let bare = h.bare("worker");
    let keys: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    send_all(h, &sender, &bare, keys, 8).await?;
    let mut distinct = HashSet::new();
    let got = inbox
        .until(h.bulk, "3000 stanzas sent to the bare JID", |g| {
            if let Some(k) = g.last().and_then(|l| l.key.clone()) {
                distinct.insert(k);
            }
            distinct.len() >= N
        })
        .await?;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut shares: HashMap<usize, usize> = HashMap::new();
    for g in &got {
        ensure!(
            g.via.queue == QueueKind::GroupDirect,
            "a stanza to the bare JID arrived via `{}`, expected `group_direct`",
            g.via.queue
        );
        ensure!(
            g.via.jid == bare,
            "via.jid is `{}`, expected the bare JID `{bare}`",
            g.via.jid
        );
        *seen.entry(g.key.as_deref().unwrap_or("?")).or_default() += 1;
        *shares.entry(g.index).or_default() += 1;
    }
    let twice: Vec<_> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| *k)
        .collect();
    ensure!(
        twice.is_empty(),
        "{} stanza(s) handled more than once in the group (no failure happened), e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    let shares: Vec<usize> = group
        .iter()
        .map(|i| shares.get(&i.index).copied().unwrap_or(0))
        .collect();
    ensure!(
        shares.iter().all(|n| *n > 0),
        "not every instance took a share: {shares:?}"
    );
    Ok(())
}

/// A broadcast reaches every instance once on its own subscription, and each group once on the
/// group's.
pub(super) async fn broadcast_per_instance_and_group(h: &Harness) -> CaseResult {
    require(h.caps()?.fanout, "fanout")?;
    const N: usize = 5;
    let (tx, mut inbox) = h.inbox();
    let opts = Options {
        subscriptions: Subscriptions {
            fanout: true,
            group_fanout: true,
            ..Subscriptions::none()
        },
        ..Options::default()
    };
    let g1 = h.start(&h.full("g", "1"), &opts, Policy::Ack, &tx).await?;
    let g2 = h.start(&h.full("g", "2"), &opts, Policy::Ack, &tx).await?;
    let k1 = h.start(&h.full("k", "1"), &opts, Policy::Ack, &tx).await?;
    let groups = [("g", vec![g1.index, g2.index]), ("k", vec![k1.index])];
    let sender = h.sender("announcer").await?;
    let keys: Vec<String> = (0..N)
        .map(|i| format!("b{i}"))
        .chain(["last".into()])
        .collect();
    for k in &keys {
        sender.publish(h.stanza(k)).await.ctx("publish")?;
    }
    // per instance: N+1 on fanout; per group: N+1 on group_fanout
    let expected = (keys.len()) * (3 + 2);
    let got = inbox
        .packets(expected, h.wait, "every copy of the broadcasts")
        .await?;
    let mut own: HashMap<(usize, &str), usize> = HashMap::new();
    let mut shared: HashMap<(&str, &str), usize> = HashMap::new();
    for g in &got {
        let key = g.key.as_deref().unwrap_or("?");
        ensure!(
            g.via.jid == sender.jid().as_str(),
            "a broadcast's via.jid is `{}`, expected the sender's JID `{}`",
            g.via.jid,
            sender.jid()
        );
        ensure!(
            exchange_ok(&g.via, FANOUT_EXCHANGE),
            "a broadcast's via.exchange is {:?}, expected `{FANOUT_EXCHANGE}`",
            g.via.exchange
        );
        match g.via.queue {
            QueueKind::Fanout => *own.entry((g.index, key)).or_default() += 1,
            QueueKind::GroupFanout => {
                let group = groups
                    .iter()
                    .find(|(_, m)| m.contains(&g.index))
                    .map_or("?", |(n, _)| n);
                *shared.entry((group, key)).or_default() += 1;
            }
            ref other => ensure!(false, "a broadcast arrived via `{other}`"),
        }
    }
    for k in &keys {
        for i in [&g1, &g2, &k1] {
            let n = own.get(&(i.index, k.as_str())).copied().unwrap_or(0);
            ensure!(
                n == 1,
                "instance {} got broadcast {k} {n} time(s) on its own subscription, expected once",
                i.jid()
            );
        }
        for (group, _) in &groups {
            let n = shared.get(&(*group, k.as_str())).copied().unwrap_or(0);
            ensure!(n == 1, "group {group} got broadcast {k} {n} time(s) on the group subscription, expected once");
        }
    }
    Ok(())
}

/// Instances never see stanzas meant for other JIDs (including a resource that is a prefix of
/// another, and a neighbouring group).
pub(super) async fn isolation(h: &Harness) -> CaseResult {
    let lb = h.caps()?.load_balancing;
    let (tx, mut inbox) = h.inbox();
    let opts = direct_only();
    let x1 = h.start(&h.full("x", "1"), &opts, Policy::Ack, &tx).await?;
    let x10 = h.start(&h.full("x", "10"), &opts, Policy::Ack, &tx).await?;
    let y1 = h.start(&h.full("y", "1"), &opts, Policy::Ack, &tx).await?;
    let z1 = h.start(&h.full("z", "1"), &opts, Policy::Ack, &tx).await?;
    let sender = h.sender("client").await?;
    let mut sends = vec![(x1.jid(), "x1"), (x10.jid(), "x10"), (y1.jid(), "y1")];
    if lb {
        sends.push((h.bare("x"), "x"));
        sends.push((h.bare("y"), "y"));
    }
    for (to, key) in &sends {
        sender
            .send(&jid(to)?, None, h.stanza(key))
            .await
            .ctx(format_args!("sending to {to}"))?;
    }
    let got = inbox
        .packets(sends.len(), h.wait, "one delivery per stanza sent")
        .await?;
    let allowed = |i: &Instance| -> Vec<&str> {
        match i.index {
            n if n == x1.index => vec!["x1", "x"],
            n if n == x10.index => vec!["x10", "x"],
            n if n == y1.index => vec!["y1", "y"],
            _ => vec![],
        }
    };
    let extra = fence_all(h, &mut inbox, &*sender, &[&x1, &x10, &y1, &z1]).await?;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for g in got.iter().chain(&extra) {
        let key = g.key.as_deref().unwrap_or("?");
        let at = [&x1, &x10, &y1, &z1]
            .into_iter()
            .find(|i| i.index == g.index);
        let ok = at.is_some_and(|i| allowed(i).contains(&key));
        ensure!(
            ok,
            "instance {} received `{key}`, which was not meant for it",
            at.map(|i| i.jid()).unwrap_or_default()
        );
        *counts
            .entry(
                sends
                    .iter()
                    .find(|(_, k)| *k == key)
                    .map_or("?", |(_, k)| *k),
            )
            .or_default() += 1;
    }
    for (to, key) in &sends {
        let n = counts.get(key).copied().unwrap_or(0);
        ensure!(
            n == 1,
            "the stanza sent to {to} was delivered {n} time(s), expected once"
        );
    }
    Ok(())
}

/// The correlation id given to `send` comes back in `Via::id`, and a reply with it returns.
pub(super) async fn correlation_id_round_trip(h: &Harness) -> CaseResult {
    let (tx, mut inbox) = h.inbox();
    let opts = direct_only();
    let a = h
        .start(&h.full("asker", "a"), &opts, Policy::Ack, &tx)
        .await?;
    let b = h
        .start(&h.full("answerer", "b"), &opts, Policy::Ack, &tx)
        .await?;
    let id = format!("q-{}-\u{2603}-1", h.token());
    a.claw
        .send(&jid(&b.jid())?, Some(&id), h.stanza("question"))
        .await
        .ctx("sending the question")?;
    let q = inbox.packets(1, h.wait, "the question").await?.remove(0);
    ensure!(
        q.index == b.index,
        "the question reached the wrong instance"
    );
    ensure!(
        q.via.id.as_deref() == Some(id.as_str()),
        "via.id is {:?}, expected {id:?}",
        q.via.id
    );
    let back = q
        .via
        .reply_to()
        .ok_or("via.reply_to() is None for a direct delivery")?;
    ensure!(
        back.as_str() == a.jid(),
        "via.reply_to() is `{back}`, expected the asker `{}`",
        a.jid()
    );
    b.claw
        .send(&back, q.via.id.as_deref(), h.stanza("answer"))
        .await
        .ctx("sending the answer")?;
    let r = inbox.packets(1, h.wait, "the answer").await?.remove(0);
    ensure!(
        r.index == a.index && r.key.as_deref() == Some("answer"),
        "the answer went astray: {r:?}"
    );
    ensure!(
        r.via.id.as_deref() == Some(id.as_str()),
        "the answer's via.id is {:?}, expected {id:?}",
        r.via.id
    );
    a.claw
        .send(&jid(&b.jid())?, None, h.stanza("no-id"))
        .await
        .ctx("sending without an id")?;
    let n = inbox
        .packets(1, h.wait, "the stanza sent without an id")
        .await?
        .remove(0);
    ensure!(
        n.via.id.is_none(),
        "a stanza sent without an id arrived with via.id {:?}",
        n.via.id
    );
    Ok(())
}
