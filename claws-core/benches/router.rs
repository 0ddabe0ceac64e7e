//! Packets per second through the mem claw, with and without the router, on one core.
//!
//! Run with: `cargo bench -p claws-core --bench router`

#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use claws_core::mem::MemBroker;
use claws_core::topology::Subscriptions;
use claws_core::{handler_fn, jid, Claw, Event, Events, Packet, Router};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::sync::Notify;

const BATCH: usize = 1_000;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let payload =
        Packet::from("<message to='svc@d' type='chat'><body>hello, router</body></message>");
    let mut group = c.benchmark_group("mem");
    group.throughput(Throughput::Elements(BATCH as u64));

    // Router + handler: what an application sees.
    let (router, sender, count, notify) = rt.block_on(async {
        let broker = MemBroker::new();
        let claw = broker
            .claw_builder("svc@d/w")
            .unwrap()
            .prefetch(256)
            .build()
            .unwrap();
        let router = Router::builder().claw(claw).concurrency(8).build().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let notify = Arc::new(Notify::new());
        let (c2, n2) = (count.clone(), notify.clone());
        router
            .start(handler_fn(move |_, _, _| {
                let (c, n) = (c2.clone(), n2.clone());
                async move {
                    if c.fetch_add(1, Ordering::Relaxed) + 1 == BATCH {
                        n.notify_one();
                    }
                    Ok(())
                }
            }))
            .await
            .unwrap();
        let sender = broker
            .claw_builder("client@d/c")
            .unwrap()
            .subscriptions(Subscriptions::none())
            .build()
            .unwrap();
        (router, sender, count, notify)
    });
    let to = jid::parse("svc@d/w").unwrap();
    group.bench_function("router_send_handle_ack", |b| {
        b.to_async(&rt).iter(|| async {
            count.store(0, Ordering::Relaxed);
            let done = notify.notified();
            for _ in 0..BATCH {
                sender.send(&to, None, payload.clone()).await.unwrap();
            }
            done.await;
        })
    });
    rt.block_on(router.close()).unwrap();

    // The claw alone: events read and acked directly, no router (the floor).
    let (claw, sender, rx) = rt.block_on(async {
        let broker = MemBroker::new();
        let claw = broker
            .claw_builder("svc@d/w")
            .unwrap()
            .prefetch(256)
            .build()
            .unwrap();
        let (events, rx) = Events::channel(64);
        claw.start(events).await.unwrap();
        let sender = broker
            .claw_builder("client@d/c")
            .unwrap()
            .subscriptions(Subscriptions::none())
            .build()
            .unwrap();
        (claw, sender, Arc::new(tokio::sync::Mutex::new(rx)))
    });
    group.bench_function("claw_only_send_ack", |b| {
        b.to_async(&rt).iter(|| async {
            let mut rx = rx.lock().await;
            let mut got = 0;
            let mut sent = 0;
            while got < BATCH {
                if sent < BATCH {
                    sender.send(&to, None, payload.clone()).await.unwrap();
                    sent += 1;
                }
                while let Ok(event) = rx.try_recv() {
                    if let Event::Received(d) = event {
                        d.acker.ack().await.unwrap();
                        got += 1;
                    }
                }
                if sent == BATCH && got < BATCH {
                    if let Some(Event::Received(d)) = rx.recv().await {
                        d.acker.ack().await.unwrap();
                        got += 1;
                    }
                }
            }
        })
    });
    drop(rx);
    rt.block_on(claw.close()).ok();
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
