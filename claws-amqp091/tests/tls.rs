//! `amqps://` against RabbitMQ's TLS listener on 127.0.0.1:5671 (5691 on the RabbitMQ 4 node with
//! `TEST_RABBITMQ=4`), which `scripts/provision`
//! (provision.d/amqp091-tls.sh) sets up with a test CA: stanzas cross between a TLS claw and a
//! plain one, the broker sees TLS and the client certificate, the claw recovers a cut TLS
//! connection without losing stanzas, and the usual mistakes are clear errors.
#![cfg(feature = "tls")]

mod common;

use claws_core::TimingBuilder;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use claws_amqp091::{AmqpClaw, AmqpClawBuilder};
use claws_core::topology::Subscriptions;
use claws_core::{Claw, Error, Event, Events, Packet};
use common::*;

/// Where provisioning put the test CA and certificates (`CLAWS_TLS_DIR` overrides).
fn tls_dir() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var("CLAWS_TLS_DIR").unwrap_or_else(|_| "/etc/rabbitmq/claws-tls".into()),
    );
    assert!(
        dir.join("ca.pem").exists(),
        "no test CA in {} (run scripts/provision, which sets up RabbitMQ's TLS listener)",
        dir.display()
    );
    dir
}

/// RabbitMQ's TLS listener (`CLAWS_AMQPS_URL` overrides).
fn tls_url() -> String {
    std::env::var("CLAWS_AMQPS_URL")
        .unwrap_or_else(|_| format!("amqps://guest:guest@{}/%2f", tls_addr()))
}

/// The node under test's TLS listener: 127.0.0.1:5671, or :5691 on the RabbitMQ 4 node.
fn tls_addr() -> String {
    format!("127.0.0.1:{}", claws_test::rabbitmq::tls_port())
}

/// EXTERNAL login (the client certificate) on the TLS listener.
fn external_url() -> String {
    format!("amqps://{}/%2f?auth_mechanism=external", tls_addr())
}

fn tls_builder(url: &str, jid: &str) -> AmqpClawBuilder {
    AmqpClaw::builder(url, jid)
        .tls_ca_file(tls_dir().join("ca.pem"))
        .send_timeout(Duration::from_secs(20))
        .close_timeout(Duration::from_secs(20))
}

#[tokio::test]
async fn stanzas_cross_between_a_tls_claw_and_a_plain_one() {
    let u = uid();
    let mut svc = start(tls_builder(&tls_url(), &format!("tls-{u}@test/a"))).await;
    assert!(svc
        .claw
        .endpoint()
        .starts_with(&format!("amqps://guest@{}", tls_addr())));
    let mut plain = start(builder(&format!("plain-{u}@test/p"))).await;

    // plain → TLS, to the full JID
    let to = svc.claw.jid().clone();
    plain
        .claw
        .send(
            &to,
            Some("t-1"),
            Packet::from(format!("<message>{u} in</message>")),
        )
        .await
        .expect("confirmed send");
    let d = next(&mut svc.rx, &format!("{u} in")).await;
    assert_eq!(d.via.id.as_deref(), Some("t-1"));
    assert_eq!(d.via.from.as_ref(), Some(plain.claw.jid()));
    d.acker.ack().await.expect("ack over TLS");

    // TLS → plain, a confirmed send
    let back = plain.claw.jid().clone();
    svc.claw
        .send(
            &back,
            Some("t-2"),
            Packet::from(format!("<message>{u} out</message>")),
        )
        .await
        .expect("confirmed send over TLS");
    let d = next(&mut plain.rx, &format!("{u} out")).await;
    assert_eq!(d.via.from.as_ref(), Some(svc.claw.jid()));
    d.acker.ack().await.unwrap();

    // The broker's view: the TLS claw's connection is TLS, the plain one is not.
    let name = svc.claw.connection_name();
    let row = tokio::task::spawn_blocking(move || {
        connection_row(&name, &["ssl", "ssl_protocol", "peer_cert_subject"])
    })
    .await
    .unwrap();
    assert!(row.contains("true") && row.contains("tlsv1."), "{row}");
    let name = plain.claw.connection_name();
    let row = tokio::task::spawn_blocking(move || connection_row(&name, &["ssl"]))
        .await
        .unwrap();
    assert!(row.trim_end().ends_with("false"), "{row}");

    svc.claw.close().await.expect("close");
    plain.claw.close().await.expect("close");
    cleanup(&[&svc.claw, &plain.claw]).await;
}

#[tokio::test]
async fn the_client_certificate_reaches_the_broker() {
    let u = uid();
    let dir = tls_dir();
    let svc = start(
        tls_builder(&tls_url(), &format!("mtls-{u}@test/a"))
            .subscriptions(Subscriptions::none())
            .tls_client_cert(dir.join("client.pem"), dir.join("client-key.pem")),
    )
    .await;
    let name = svc.claw.connection_name();
    let row = tokio::task::spawn_blocking(move || connection_row(&name, &["peer_cert_subject"]))
        .await
        .unwrap();
    assert!(row.contains("CN=claws-test-client"), "{row}");
    svc.claw.close().await.expect("close");
}

/// Mutual TLS with RabbitMQ's EXTERNAL mechanism: no password in the URL, the client
/// certificate's CN (`claws-test-client`, a user provisioning created without a password) logs in.
#[tokio::test]
async fn the_client_certificate_logs_in_with_external() {
    let u = uid();
    let dir = tls_dir();
    let mut svc = start(
        tls_builder(&external_url(), &format!("ext-{u}@test/a"))
            .tls_client_cert(dir.join("client.pem"), dir.join("client-key.pem")),
    )
    .await;
    assert!(svc
        .claw
        .endpoint()
        .contains(&format!("(certificate)@{}", tls_addr())));
    let to = svc.claw.jid().clone();
    svc.claw
        .send(&to, None, Packet::from(format!("<message>{u}</message>")))
        .await
        .expect("confirmed send as the certificate's user");
    next(&mut svc.rx, &u).await.acker.ack().await.unwrap();
    let name = svc.claw.connection_name();
    let row =
        tokio::task::spawn_blocking(move || connection_row(&name, &["user", "auth_mechanism"]))
            .await
            .unwrap();
    assert!(
        row.contains("claws-test-client") && row.contains("EXTERNAL"),
        "{row}"
    );

    // Without a certificate, EXTERNAL has nothing to log in with: a clear error, no hang.
    let claw = tls_builder(&external_url(), &format!("ext-nocert-{u}@test/a"))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = start_error(claw).await;
    assert!(err.contains("cannot connect"), "{err}");

    svc.claw.close().await.expect("close");
    cleanup(&[&svc.claw]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_tls_connection_recovers_and_loses_nothing() {
    const N: usize = 400;
    let u = uid();
    let Started { claw, mut rx } = start(tls_builder(&tls_url(), &format!("cut-{u}@test/r"))).await;
    let sender =
        start(builder(&format!("snd-{u}@test/s")).subscriptions(Subscriptions::none())).await;
    let to = claw.jid().clone();
    let sending = {
        let sender = sender.claw.clone();
        let u = u.clone();
        tokio::spawn(async move {
            for i in 0..N {
                sender
                    .send(&to, None, Packet::from(format!("{u} #{i}")))
                    .await
                    .expect("confirmed send");
            }
        })
    };
    let mut seen = HashSet::new();
    let (mut cut, mut reconnected) = (false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while seen.len() < N {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} stanzas arrived over TLS", seen.len()))
            .expect("events open");
        match event {
            Event::Received(d) => {
                let body = d.packet.as_str().unwrap_or_default().to_owned();
                if d.acker.ack().await.is_ok() && body.contains(&u) {
                    seen.insert(body);
                }
            }
            Event::Connected { .. } => reconnected = cut,
            _ => {}
        }
        if !cut && seen.len() >= N / 4 {
            cut = true;
            let name = claw.connection_name();
            tokio::task::spawn_blocking(move || close_connection(&name))
                .await
                .unwrap();
        }
    }
    sending.await.expect("sender");
    assert!(
        reconnected,
        "the TLS claw never reported Connected again after the cut"
    );
    claw.close().await.expect("close");
    sender.claw.close().await.expect("close");
    cleanup(&[&claw]).await;
}

/// Starts a claw that must fail, and returns its error text.
async fn start_error(claw: AmqpClaw) -> String {
    let (events, _rx) = Events::channel(8);
    let started = tokio::time::Instant::now();
    let err = claw
        .start(events)
        .await
        .expect_err("start must fail")
        .to_string();
    eprintln!("start failed as expected: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    err
}

#[tokio::test]
async fn an_untrusted_broker_certificate_is_a_clear_error() {
    let u = uid();
    // Only the system's roots, which do not hold the test CA.
    let claw = AmqpClaw::builder(&tls_url(), format!("untrusted-{u}@test/a"))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = start_error(claw).await;
    assert!(
        err.contains("tls_ca_file") && err.contains("certificate"),
        "{err}"
    );
    assert!(!err.contains("guest:guest"), "password leaked: {err}");
}

#[tokio::test]
async fn amqps_to_the_plain_port_is_a_clear_error_not_a_hang() {
    let u = uid();
    let claw = tls_builder(
        &format!(
            "amqps://guest:guest@127.0.0.1:{}/%2f",
            claws_test::rabbitmq::port()
        ),
        &format!("wrongport-{u}@test/a"),
    )
    .connect_timeout(Duration::from_secs(5))
    .build()
    .unwrap();
    let err = start_error(claw).await;
    assert!(
        err.contains("TLS listener") && err.contains("5671"),
        "{err}"
    );
}

#[test]
fn tls_files_that_are_missing_or_not_pem_fail_the_build() {
    let err = AmqpClaw::builder(&tls_url(), "a@test/x")
        .tls_ca_file("/nonexistent/claws-ca.pem")
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/claws-ca.pem"),
        "{err}"
    );

    let err = AmqpClaw::builder(&url(), "a@test/x")
        .tls_ca_file(tls_dir().join("ca.pem"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("use amqps://"), "{err}");
}
