//! The component claw against a fake XEP-0114 server written here (tokio TCP): handshake, stanzas
//! both ways, a refused handshake, backoff, stream errors and restarts, keepalives, limits.

use claws_core::TimingBuilder;
use std::time::{Duration, Instant};

use claws_component::stream::Frame;
use claws_component::{ComponentClaw, State};
use claws_core::{Claw, Delivery, Error, Event, Events, Packet, QueueKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

mod fake;

use fake::{listener, Session, DOMAIN, SECRET, WAIT};

fn builder(addr: &str) -> claws_component::ComponentClawBuilder {
    ComponentClaw::builder(addr, DOMAIN, SECRET)
        .reconnect_backoff(Duration::from_millis(40), Duration::from_millis(160))
        .connect_timeout(Duration::from_secs(5))
}

/// Starts `claw` while the fake server accepts its handshake; returns the session and events.
async fn start(claw: &ComponentClaw, listener: &TcpListener) -> (Session, mpsc::Receiver<Event>) {
    let (events, rx) = Events::channel(64);
    let server = async {
        let mut s = Session::accept(listener).await;
        assert!(s.handshake("id-1", true).await);
        s
    };
    let (started, session) = tokio::join!(claw.start(events), server);
    started.expect("the claw starts");
    (session, rx)
}

/// Closes the claw while the server answers the end of its stream by closing, as servers do.
async fn close(claw: &ComponentClaw, mut server: Session) {
    let server_side = async move {
        while let Some(frame) = server.frame().await {
            if frame == Frame::End {
                break;
            }
        }
    };
    let (closed, ()) = tokio::join!(claw.close(), server_side);
    closed.unwrap();
    assert_eq!(claw.state(), State::Closed);
}

async fn next_event(rx: &mut mpsc::Receiver<Event>) -> Event {
    timeout(WAIT, rx.recv())
        .await
        .expect("an event arrives")
        .expect("the channel is open")
}

async fn next_delivery(rx: &mut mpsc::Receiver<Event>) -> Delivery {
    match next_event(rx).await {
        Event::Received(d) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

async fn wait_state(states: &mut watch::Receiver<State>, want: impl Fn(&State) -> bool) -> State {
    timeout(WAIT, states.wait_for(|s| want(s)))
        .await
        .expect("the state is reached")
        .unwrap()
        .clone()
}

#[tokio::test]
async fn stanzas_flow_both_ways_with_the_right_via() {
    let (l, addr) = listener().await;
    let claw = builder(&addr).name("xmpp").build().unwrap();
    assert_eq!(claw.state(), State::Disconnected);
    let (mut server, mut rx) = start(&claw, &l).await;
    assert_eq!(claw.state(), State::Ready);
    assert!(matches!(next_event(&mut rx).await, Event::Connected { claw, .. } if &*claw == "xmpp"));

    // Several stanzas in one write, then one split across writes (mid-tag and mid-character).
    server
        .write("<message from='alice@xmpp.example/phone' to='bot@echo.test.example' id='m1'><body>one</body></message> <presence from='alice@xmpp.example/phone' to='bot@echo.test.example'/>")
        .await;
    let split = "<iq type='get' id='p1' from='bob@xmpp.example/pc' to='bot@echo.test.example'><ping xmlns='urn:xmpp:ping'/></iq><message from='bob@xmpp.example/pc' to='bot@echo.test.example'><body>caf\u{e9}</body></message>";
    let cut = split.find("\u{e9}").unwrap() + 1; // inside the two-byte é
    for part in [
        &split.as_bytes()[..20],
        &split.as_bytes()[20..cut],
        &split.as_bytes()[cut..],
    ] {
        server.sock.write_all(part).await.unwrap();
        server.sock.flush().await.unwrap();
    }
    let d = next_delivery(&mut rx).await;
    assert_eq!(d.packet.as_str().unwrap(), "<message from='alice@xmpp.example/phone' to='bot@echo.test.example' id='m1'><body>one</body></message>");
    assert_eq!(d.via.jid, "alice@xmpp.example/phone");
    assert_eq!(
        d.via.from.as_ref().map(|j| j.as_str()),
        Some("alice@xmpp.example/phone")
    );
    assert_eq!(d.via.id.as_deref(), Some("m1"));
    assert_eq!(d.via.queue, QueueKind::Other("component".into()));
    assert_eq!(d.via.exchange, None);
    assert_eq!(&*d.via.claw, "xmpp");
    d.acker.ack().await.unwrap();
    let d = next_delivery(&mut rx).await;
    assert!(d.packet.as_str().unwrap().starts_with("<presence"));
    assert_eq!(d.via.id, None);
    // A rejected stanza cannot be redelivered: reject is accepted and nothing comes back.
    d.acker
        .reject(&Error::Handler("test".into()))
        .await
        .unwrap();
    let d = next_delivery(&mut rx).await;
    assert_eq!(d.via.id.as_deref(), Some("p1"));
    assert_eq!(d.via.jid, "bob@xmpp.example/pc");
    let d = next_delivery(&mut rx).await;
    assert!(d.packet.as_str().unwrap().contains("caf\u{e9}"));

    // Sending: adjust_attrs sets to, id and a missing from; the client namespace is dropped.
    let to = claws_core::jid::parse("alice@xmpp.example/phone").unwrap();
    claw.send(
        &to,
        Some("r1"),
        Packet::from("<message xmlns='jabber:client'><body>hi</body></message>"),
    )
    .await
    .unwrap();
    let got = server.stanza().await;
    assert_eq!(
        String::from_utf8(got.bytes.to_vec()).unwrap(),
        r#"<message to="alice@xmpp.example/phone" id="r1" from="echo.test.example"><body>hi</body></message>"#
    );
    // A payload that is not one element, or a from outside the domain, never reaches the stream.
    let err = claw
        .send(&to, None, Packet::from("<a/><b/>"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MalformedXml { .. }), "{err}");
    let err = claw
        .send(&to, None, Packet::from("<message from='x@other.example'/>"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    claw.send(&to, None, Packet::from("<presence/>"))
        .await
        .unwrap();
    assert_eq!(server.stanza().await.head.name, "presence");

    let err = claw.publish(Packet::from("<message/>")).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                what: "publish",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no broadcast"), "{err}");
    let caps = claw.capabilities();
    assert!(
        !caps.redelivery
            && !caps.persistence
            && !caps.fanout
            && !caps.load_balancing
            && caps.ordering
    );

    // Close: the claw ends its stream.
    let closing = tokio::spawn(async move {
        claw.close().await.unwrap();
        claw
    });
    assert_eq!(server.frame().await, Some(Frame::End));
    drop(server);
    let claw = closing.await.unwrap();
    assert_eq!(claw.state(), State::Closed);
    assert!(matches!(
        claw.send(&to, None, Packet::from("<presence/>")).await,
        Err(Error::Closed { .. })
    ));
}

#[tokio::test]
async fn misuse_gets_typed_errors() {
    let (l, addr) = listener().await;
    let claw = builder(&addr).build().unwrap();
    let to = claws_core::jid::parse("u@xmpp.example/r").unwrap();
    let err = claw
        .send(&to, None, Packet::from("<presence/>"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotStarted { .. }), "{err}");
    let (server, _rx) = start(&claw, &l).await;
    let (events, _rx2) = Events::channel(8);
    let err = claw.start(events).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyStarted { .. }), "{err}");
    close(&claw, server).await;
    let (events, _rx3) = Events::channel(8);
    let err = claw.start(events).await.unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err}");
}

#[tokio::test]
async fn a_refused_handshake_is_a_clear_error_without_the_secret() {
    let (l, addr) = listener().await;
    let claw = builder(&addr).build().unwrap();
    let (events, _rx) = Events::channel(8);
    let server = async {
        let mut s = Session::accept(&l).await;
        assert!(
            s.handshake("id-x", false).await,
            "the claw hashed the right secret"
        );
    };
    let (started, ()) = tokio::join!(claw.start(events), server);
    let err = started.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Connect { .. }), "{msg}");
    assert!(
        msg.contains("refused the handshake") && msg.contains("not-authorized"),
        "{msg}"
    );
    assert!(msg.contains("check that the component secret"), "{msg}");
    assert!(!msg.contains(SECRET), "{msg}");
    assert!(!format!("{claw:?}").contains(SECRET));
    assert_eq!(claw.state(), State::Disconnected);

    // Nothing listens: a clear connect error, within the bound.
    drop(l);
    let (events, _rx) = Events::channel(8);
    let err = claw.start(events).await.unwrap_err().to_string();
    assert!(err.contains(&addr) && err.contains(DOMAIN), "{err}");
}

#[tokio::test]
async fn failed_reconnections_back_off_up_to_the_cap() {
    let (l, addr) = listener().await;
    let claw = builder(&addr).build().unwrap();
    let mut states = claw.watch_state();
    let (server, mut rx) = start(&claw, &l).await;
    assert!(matches!(next_event(&mut rx).await, Event::Connected { .. }));
    // Every wait the claw draws, as it reports it (each `Retrying` lasts at least 20 ms, its
    // shortest wait, so the recorder sees each one).
    let (waits_tx, mut waits) = mpsc::unbounded_channel();
    let recorder = tokio::spawn({
        let mut states = claw.watch_state();
        async move {
            while states.changed().await.is_ok() {
                let state = states.borrow_and_update().clone();
                if let State::Retrying { attempt, delay } = state {
                    let _ = waits_tx.send((attempt, delay));
                }
            }
        }
    });

    // The server goes away; then refuses the handshake five times (as after a secret change).
    drop(server);
    match next_event(&mut rx).await {
        Event::Disconnected { reason, .. } => {
            assert!(reason.contains("closed the connection"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let mut accepted_at = Vec::new();
    for i in 0..5 {
        let mut s = Session::accept(&l).await;
        accepted_at.push(Instant::now());
        assert!(s.handshake(&format!("bad-{i}"), false).await);
    }
    let retrying = wait_state(&mut states, |s| {
        matches!(s, State::Retrying { attempt: 6.., .. })
    })
    .await;
    assert!(
        matches!(retrying, State::Retrying { attempt: 6, .. }),
        "{retrying:?}"
    );
    // Attempts 1 to 6 in turn, each wait jittered within [d/2, d] where d doubles from 40 ms up
    // to the 160 ms cap.
    let mut drawn = Vec::new();
    while drawn.len() < 6 {
        drawn.push(timeout(WAIT, waits.recv()).await.unwrap().unwrap());
    }
    for (i, (attempt, delay)) in drawn.iter().enumerate() {
        let ceiling = Duration::from_millis((40u64 << i).min(160));
        assert_eq!(*attempt as usize, i + 1, "waits drawn: {drawn:?}");
        assert!(
            *delay >= ceiling / 2 && *delay <= ceiling,
            "attempt {attempt} waits {delay:?}, not within [{:?}, {ceiling:?}]; waits drawn: \
             {drawn:?}",
            ceiling / 2
        );
    }
    // And the claw really waits that long before each attempt: never a tight loop.
    let gaps: Vec<Duration> = accepted_at.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, gap) in gaps.iter().enumerate() {
        let (attempt, floor) = drawn[i + 1];
        assert!(
            *gap >= floor - Duration::from_millis(5),
            "the gap before attempt {attempt} was {gap:?}, wanted >= {floor:?}; gaps {gaps:?}, \
             waits drawn {drawn:?}"
        );
    }

    // Then it accepts: Connected again, and stanzas flow.
    let mut s = Session::accept(&l).await;
    assert!(s.handshake("good", true).await);
    assert!(matches!(next_event(&mut rx).await, Event::Connected { .. }));
    s.write("<message from='a@b.example/r' id='after'/>").await;
    assert_eq!(
        next_delivery(&mut rx).await.via.id.as_deref(),
        Some("after")
    );
    close(&claw, s).await;
    recorder.abort();
}

#[tokio::test]
async fn stream_errors_and_restarts_reconnect() {
    let (l, addr) = listener().await;
    let claw = builder(&addr).build().unwrap();
    let (mut server, mut rx) = start(&claw, &l).await;
    assert!(matches!(next_event(&mut rx).await, Event::Connected { .. }));

    // A stream error (another session took over the domain).
    server
        .write("<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>replaced</text></stream:error></stream:stream>")
        .await;
    match next_event(&mut rx).await {
        Event::Disconnected { reason, .. } => {
            assert!(reason.contains("conflict: replaced"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let mut server = Session::accept(&l).await;
    assert!(server.handshake("id-2", true).await);
    assert!(matches!(next_event(&mut rx).await, Event::Connected { .. }));

    // A plain stream restart (the server ends the stream) and a stanza over the size limit.
    server.write("</stream:stream>").await;
    assert!(matches!(
        next_event(&mut rx).await,
        Event::Disconnected { .. }
    ));
    let mut server = Session::accept(&l).await;
    assert!(server.handshake("id-3", true).await);
    assert!(matches!(next_event(&mut rx).await, Event::Connected { .. }));
    let to = claws_core::jid::parse("u@xmpp.example/r").unwrap();
    claw.send(
        &to,
        None,
        Packet::from("<message><body>after restart</body></message>"),
    )
    .await
    .unwrap();
    assert!(String::from_utf8(server.stanza().await.bytes.to_vec())
        .unwrap()
        .contains("after restart"));
    server
        .write(&format!(
            "<message from='u@xmpp.example/r'><body>{}</body></message>",
            "x".repeat(2 << 20)
        ))
        .await;
    match next_event(&mut rx).await {
        Event::Disconnected { reason, .. } => assert!(reason.contains("limit"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let mut server = Session::accept(&l).await;
    assert!(server.handshake("id-4", true).await);
    assert!(matches!(next_event(&mut rx).await, Event::Connected { .. }));
    server
        .write("<message from='u@xmpp.example/r' id='ok'/>")
        .await;
    assert_eq!(next_delivery(&mut rx).await.via.id.as_deref(), Some("ok"));
    close(&claw, server).await;
}

#[tokio::test]
async fn sends_wait_a_bounded_time_while_disconnected() {
    let (l, addr) = listener().await;
    let claw = builder(&addr)
        .send_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut states = claw.watch_state();
    let (server, mut rx) = start(&claw, &l).await;
    assert!(matches!(next_event(&mut rx).await, Event::Connected { .. }));
    drop(server);
    drop(l); // nothing listens any more: reconnection fails, with backoff
    assert!(matches!(
        next_event(&mut rx).await,
        Event::Disconnected { .. }
    ));
    wait_state(&mut states, |s| {
        matches!(s, State::Retrying { attempt: 2.., .. })
    })
    .await;
    let to = claws_core::jid::parse("u@xmpp.example/r").unwrap();
    let t0 = Instant::now();
    let err = claw
        .send(&to, None, Packet::from("<message/>"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Closing stops the retries.
    claw.close().await.unwrap();
    assert_eq!(claw.state(), State::Closed);
}

#[tokio::test]
async fn whitespace_keepalives_after_idle_time() {
    let (l, addr) = listener().await;
    let claw = builder(&addr)
        .ping(Some(Duration::from_millis(50)))
        .build()
        .unwrap();
    let (mut server, _rx) = start(&claw, &l).await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 64];
    while seen.len() < 3 {
        let n = timeout(WAIT, server.sock.read(&mut buf))
            .await
            .expect("keepalives come")
            .unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.iter().all(|b| *b == b' '), "{seen:?}");
    close(&claw, server).await;
}

#[tokio::test]
async fn trimmed_drops_whitespace_text() {
    let (l, addr) = listener().await;
    let claw = builder(&addr).trimmed(true).build().unwrap();
    let (mut server, mut rx) = start(&claw, &l).await;
    assert!(matches!(next_event(&mut rx).await, Event::Connected { .. }));
    server
        .write("<message from='a@b.example/r'>\n  <body> hi </body>\n</message>")
        .await;
    let d = next_delivery(&mut rx).await;
    assert_eq!(
        d.packet.as_str().unwrap(),
        r#"<message from="a@b.example/r"><body> hi </body></message>"#
    );
    close(&claw, server).await;
}

#[test]
fn builder_and_config_validation() {
    let err = ComponentClaw::builder("no-port", DOMAIN, SECRET)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("host:port"), "{err}");
    let err = ComponentClaw::builder("h:1", "user@echo.example", SECRET)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("bare domain"), "{err}");

    let figment = claws_core::Config::figment(None).merge(figment_toml(
        "reconnect_max = \"2500ms\"\n[component]\nserver = \"127.0.0.1:5347\"\ndomain = \"echo.example\"\nsecret = \"zz-secret\"\nping = \"0s\"\nname = \"xmpp\"",
    ));
    let config = claws_core::Config::from_figment(&figment).unwrap();
    let claw = ComponentClaw::from_config(&config).unwrap();
    assert_eq!(claw.name(), "xmpp");
    assert_eq!(claw.domain(), "echo.example");
    assert_eq!(claw.jid().as_str(), "echo.example");
    assert!(!format!("{claw:?}").contains("zz-secret"));

    let figment = claws_core::Config::figment(None).merge(figment_toml(
        "[component]\nserver = \"h:1\"\ndomain = \"d\"\nsecrett = \"x\"",
    ));
    let config = claws_core::Config::from_figment(&figment).unwrap();
    let err = ComponentClaw::from_config(&config).unwrap_err().to_string();
    assert!(err.contains("secrett"), "{err}");
}

fn figment_toml(s: &str) -> figment::providers::Data<figment::providers::Toml> {
    use figment::providers::Format;
    figment::providers::Toml::string(s)
}

#[tokio::test]
async fn thousands_of_stanzas_each_way_in_order() {
    const N: usize = 3000;
    let (l, addr) = listener().await;
    let claw = builder(&addr).build().unwrap();
    let (mut server, mut rx) = start(&claw, &l).await;
    assert!(matches!(next_event(&mut rx).await, Event::Connected { .. }));

    let t0 = Instant::now();
    let batch: String = (0..N)
        .map(|i| format!("<message from='u@xmpp.example/r' id='in-{i}'><body>{i}</body></message>"))
        .collect();
    let writer = async {
        server.sock.write_all(batch.as_bytes()).await.unwrap();
    };
    let reader = async {
        for i in 0..N {
            let d = next_delivery(&mut rx).await;
            assert_eq!(d.via.id.as_deref(), Some(format!("in-{i}").as_str()));
            d.acker.ack().await.unwrap();
        }
    };
    tokio::join!(writer, reader);
    let inbound = t0.elapsed();

    let t0 = Instant::now();
    let to = claws_core::jid::parse("u@xmpp.example/r").unwrap();
    let sender = async {
        for i in 0..N {
            claw.send(
                &to,
                Some(&format!("out-{i}")),
                Packet::from("<message><body>x</body></message>"),
            )
            .await
            .unwrap();
        }
    };
    let receiver = async {
        for i in 0..N {
            let s = server.stanza().await;
            assert_eq!(s.head.id.as_deref(), Some(format!("out-{i}").as_str()));
        }
    };
    tokio::join!(sender, receiver);
    let outbound = t0.elapsed();
    eprintln!("{N} stanzas in: {inbound:?}; {N} sends out: {outbound:?}");
    close(&claw, server).await;
}

/// `send_ordered` returns once a stanza is queued for the stream: a burst queued without
/// waiting reaches the server in order, and each confirmation resolves once written.
#[tokio::test]
async fn pipelined_sends_keep_their_order_and_confirm_once_written() {
    const N: usize = 500;
    let (l, addr) = listener().await;
    let claw = builder(&addr).build().unwrap();
    let (mut server, mut rx) = start(&claw, &l).await;
    assert!(matches!(next_event(&mut rx).await, Event::Connected { .. }));
    let to = claws_core::jid::parse("u@xmpp.example/r").unwrap();
    let mut confirmations = Vec::with_capacity(N);
    for i in 0..N {
        let sent = claw
            .send_ordered(
                &to,
                Some(&format!("p-{i}")),
                Packet::from("<message><body>x</body></message>"),
            )
            .await
            .expect("queued");
        confirmations.push(sent);
    }
    for i in 0..N {
        let s = server.stanza().await;
        assert_eq!(s.head.id.as_deref(), Some(format!("p-{i}").as_str()));
    }
    for (i, c) in confirmations.into_iter().enumerate() {
        timeout(WAIT, c)
            .await
            .unwrap_or_else(|_| panic!("confirmation {i} resolves"))
            .unwrap_or_else(|e| panic!("confirmation {i}: {e}"));
    }
    // A stanza that is not one element is refused before it is queued, as by `send`.
    let Err(err) = claw
        .send_ordered(&to, None, Packet::from("<message>"))
        .await
    else {
        panic!("a malformed stanza is refused");
    };
    assert!(matches!(err, Error::MalformedXml { .. }), "{err}");
    close(&claw, server).await;
}

/// A stream the server accepts and then drops at once, again and again: the waits keep
/// growing to the cap instead of starting over after each connect (issue 15: a connection
/// that did not hold does not reset the backoff).
#[tokio::test]
async fn streams_dropped_at_once_slow_down() {
    let (l, addr) = listener().await;
    let claw = builder(&addr).build().unwrap();
    let (waits_tx, mut waits) = mpsc::unbounded_channel();
    let recorder = tokio::spawn({
        let mut states = claw.watch_state();
        async move {
            while states.changed().await.is_ok() {
                let state = states.borrow_and_update().clone();
                if let State::Retrying { attempt, delay } = state {
                    let _ = waits_tx.send((attempt, delay));
                }
            }
        }
    });
    let (server, mut rx) = start(&claw, &l).await;
    assert!(matches!(next_event(&mut rx).await, Event::Connected { .. }));
    drop(server);
    for i in 0..4 {
        assert!(matches!(
            next_event(&mut rx).await,
            Event::Disconnected { .. }
        ));
        let mut s = Session::accept(&l).await;
        assert!(s.handshake(&format!("brief-{i}"), true).await);
        assert!(matches!(next_event(&mut rx).await, Event::Connected { .. }));
        drop(s);
    }
    assert!(matches!(
        next_event(&mut rx).await,
        Event::Disconnected { .. }
    ));
    // One wait per loss, each the first attempt after it, drawn from a growing ceiling:
    // 40, 80, 160 (the cap), 160, 160 ms.
    let mut drawn = Vec::new();
    while drawn.len() < 5 {
        drawn.push(timeout(WAIT, waits.recv()).await.unwrap().unwrap());
    }
    for (i, (attempt, delay)) in drawn.iter().enumerate() {
        let ceiling = Duration::from_millis((40u64 << i).min(160));
        assert_eq!(*attempt, 1, "waits drawn: {drawn:?}");
        assert!(
            *delay >= ceiling / 2 && *delay <= ceiling,
            "loss {i} waits {delay:?}, not within [{:?}, {ceiling:?}]: the backoff started \
             over; waits drawn: {drawn:?}",
            ceiling / 2
        );
    }
    let mut s = Session::accept(&l).await;
    assert!(s.handshake("held", true).await);
    assert!(matches!(next_event(&mut rx).await, Event::Connected { .. }));
    close(&claw, s).await;
    recorder.abort();
}
