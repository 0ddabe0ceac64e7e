//! Faults: the connection cut by the fault proxy mid-stream, and a broker restart.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claws_core::topology::Subscriptions;
use claws_core::{Claw, Error, Jid, Packet};

use crate::conformance::harness::{
    ensure, jid, require, CaseError, CaseResult, Context, Got, Harness, Policy, Seen,
};
use crate::conformance::Options;
use crate::fault::FaultProxy;

fn own_queue() -> Options {
    Options {
        subscriptions: Subscriptions {
            direct: true,
            ..Subscriptions::none()
        },
        ..Options::default()
    }
}

/// Sends every payload, retrying a failed send (as an application would) until `deadline`.
/// Returns how many retries it took.
async fn send_retrying(
    claw: Arc<dyn Claw>,
    to: Jid,
    payloads: Vec<Packet>,
    deadline: Instant,
    retries: Arc<AtomicUsize>,
) -> Result<(), Error> {
    for p in payloads {
        loop {
            match claw.send(&to, None, p.clone()).await {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    retries.fetch_add(1, Ordering::Relaxed);
                    // a retry back-off, not a synchronisation
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    Ok(())
}

/// Checks that every key arrived.
fn none_missing(got: &[Got], keys: &[String]) -> CaseResult {
    let seen = distinct_keys(got);
    let missing: Vec<&String> = keys.iter().filter(|k| !seen.contains(k.as_str())).collect();
    ensure!(
        missing.is_empty(),
        "{} of {} stanza(s) lost (not received within the bulk timeout), e.g. {:?}",
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(5)]
    );
    Ok(())
}

/// How long the proxy refuses connections after the cut.
const OUTAGE: Duration = Duration::from_millis(500);

/// The fault proxy cuts the connections while 10 000 stanzas flow and refuses new ones for
/// half a second: the claws report Disconnected, then Connected, and every stanza arrives.
/// Without `lossless_cut`, the stanzas lost must fit in the receiver's prefetch window.
pub(super) async fn reconnect_after_cut(h: &Harness) -> CaseResult {
    let caps = h.caps()?;
    require(caps.reconnect, "reconnect")?;
    let Some(addr) = h.factory.broker_addr() else {
        return Err(CaseError::Skip(
            "not network based: the factory has no broker_addr()".into(),
        ));
    };
    const N: usize = 10_000;
    let proxy = Arc::new(
        FaultProxy::start(addr)
            .await
            .ctx("starting the fault proxy")?,
    );
    // Dropped only after the claws are closed, so that they do not see a second outage.
    h.hold(proxy.clone());
    let (tx, mut inbox) = h.inbox();
    let make_at = |jid: String, opts: Options| {
        let proxy = proxy.addr();
        async move {
            h.note_jid(&jid);
            let claw = h
                .factory
                .make_at(&jid, &opts, proxy)
                .await
                .ctx(format_args!("factory.make_at({jid}, {proxy})"))?;
            h.note_claw(&claw);
            Ok::<_, CaseError>(claw)
        }
    };
    let r_jid = h.full("survivor", "r");
    let r = h
        .start_claw(make_at(r_jid.clone(), own_queue()).await?, Policy::Ack, &tx)
        .await?;
    let s_opts = Options {
        subscriptions: Subscriptions::none(),
        ..Options::default()
    };
    let s = h
        .start_claw(
            make_at(h.full("client", "s"), s_opts).await?,
            Policy::Ack,
            &tx,
        )
        .await?;
    let keys: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    let retries = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + h.bulk;
    let to = jid(&r_jid)?;
    let senders: Vec<_> = keys
        .chunks(N / 8)
        .map(|chunk| {
            let payloads = chunk.iter().map(|k| h.stanza(k)).collect();
            tokio::spawn(send_retrying(
                s.claw.clone(),
                to.clone(),
                payloads,
                deadline,
                retries.clone(),
            ))
        })
        .collect();
    let mut all = inbox
        .packets(N / 5, h.bulk, "the first 2000 stanzas, before the cut")
        .await?;
    let live = proxy.connection_count();
    // The outage: connections cut, and new ones refused for a while, so that the claws'
    // first reconnection attempts fail too.
    proxy.refuse(true);
    proxy.cut();
    let idx = r.index;
    inbox
        .event(
            h.wait,
            "Disconnected from the receiver after the cut",
            &mut all,
            |s| matches!(s, Seen::Disconnected(i, _) if *i == idx),
        )
        .await?;
    // How long the outage lasts (a fault's duration, not a synchronisation).
    tokio::time::sleep(OUTAGE).await;
    proxy.heal();
    inbox
        .event(
            h.bulk,
            "Connected again from the receiver",
            &mut all,
            |s| matches!(s, Seen::Connected(i) if *i == idx),
        )
        .await?;
    let mut distinct: HashSet<String> = all.iter().filter_map(|g| g.key.clone()).collect();
    let mut senders = Some(senders);
    // Without lossless_cut some stanzas never come: once every send is done, a marker sent
    // last (the queue keeps order) says when everything else has arrived.
    const MARKER: &str = "marker";
    if !caps.lossless_cut {
        finish_senders(senders.take().unwrap_or_default()).await?;
        s.claw
            .send(&to, None, h.stanza(MARKER))
            .await
            .ctx("sending the marker after the senders")?;
    }
    let mut marker = false;
    let rest = inbox
        .collect(h.bulk, |g| {
            if let Some(k) = g.last().and_then(|l| l.key.clone()) {
                marker |= k == MARKER;
                distinct.insert(k);
            }
            if caps.lossless_cut {
                distinct.len() >= N
            } else {
                marker
            }
        })
        .await
        .0;
    if let Some(senders) = senders.take() {
        finish_senders(senders).await?;
    }
    all.extend(rest);
    tracing::info!(
        connections_cut = live,
        retries = retries.load(Ordering::Relaxed),
        received = all.len(),
        "reconnect_after_cut"
    );
    ensure!(
        live > 0,
        "no connection went through the fault proxy: make_at must connect to the address given"
    );
    if caps.lossless_cut {
        return none_missing(&all, &keys);
    }
    let window = usize::from(own_queue().prefetch);
    let seen = distinct_keys(&all);
    ensure!(
        seen.contains(MARKER),
        "the marker sent after every other stanza never arrived"
    );
    let lost = keys.iter().filter(|k| !seen.contains(k.as_str())).count();
    tracing::info!(lost, window, "reconnect_after_cut without lossless_cut");
    ensure!(
        lost <= window,
        "{lost} of {N} stanza(s) lost at the cut, more than the receiver's prefetch window \
         ({window}) that a broker settling on send may lose"
    );
    Ok(())
}

/// Waits for the sending tasks; each must have sent everything.
async fn finish_senders(senders: Vec<tokio::task::JoinHandle<Result<(), Error>>>) -> CaseResult {
    for s in futures_util::future::join_all(senders).await {
        s.map_err(|e| format!("a sender panicked: {e}"))?
            .ctx("a send kept failing after the cut (retried until the deadline)")?;
    }
    Ok(())
}

fn distinct_keys(got: &[Got]) -> HashSet<&str> {
    got.iter().filter_map(|g| g.key.as_deref()).collect()
}

/// Stanzas persisted while the receiver is away survive a broker restart (opt-in: the factory's
/// `restart_broker`); a running sender keeps working after it when the claw reconnects.
pub(super) async fn broker_restart(h: &Harness) -> CaseResult {
    let caps = h.caps()?;
    require(caps.survives_broker_restart, "survives_broker_restart")?;
    const N: usize = 100;
    let (tx, mut inbox) = h.inbox();
    let r_jid = h.full("durable", "r");
    h.start(&r_jid, &own_queue(), Policy::Ack, &tx)
        .await?
        .close()
        .await?;
    let sender = h.sender("client").await?;
    let to = jid(&r_jid)?;
    let before: Vec<String> = (0..N).map(|i| format!("before-{i}")).collect();
    for k in &before {
        sender
            .send(&to, None, h.stanza(k))
            .await
            .ctx("sending before the restart")?;
    }
    match h.factory.restart_broker().await {
        None => {
            return Err(CaseError::Skip(
                "opt-in: the factory has no restart_broker() hook".into(),
            ))
        }
        Some(r) => r.ctx("factory.restart_broker()")?,
    }
    h.start(&r_jid, &own_queue(), Policy::Ack, &tx).await?;
    let mut keys = before;
    if caps.reconnect {
        let after: Vec<String> = (0..N).map(|i| format!("after-{i}")).collect();
        let payloads = after.iter().map(|k| h.stanza(k)).collect();
        let retries = Arc::new(AtomicUsize::new(0));
        send_retrying(
            sender.clone(),
            to,
            payloads,
            Instant::now() + h.bulk,
            retries,
        )
        .await
        .ctx("the sender, started before the restart, could not send after it")?;
        keys.extend(after);
    }
    let want = keys.len();
    let mut distinct = HashSet::new();
    let got = inbox
        .collect(h.bulk, |g| {
            if let Some(k) = g.last().and_then(|l| l.key.clone()) {
                distinct.insert(k);
            }
            distinct.len() >= want
        })
        .await
        .0;
    none_missing(&got, &keys)
}
