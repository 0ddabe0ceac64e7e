//! The gateway's routing rules, with the bus on the mem claw and a fake XEP-0114 server: quick,
//! and every rule of the crate docs' table that a real server cannot easily provoke.

mod fake;

use std::sync::Arc;

use claws_component::{gateway, ComponentClaw};
use claws_core::mem::MemBroker;
use claws_core::{Claw, Echo, Events, Packet, Router};
use fake::{listener, Session, DOMAIN, SECRET};

struct Setup {
    server: Session,
    gateway: Router,
    worker: Router,
    broker: MemBroker,
}

async fn setup() -> Setup {
    let (l, addr) = listener().await;
    let broker = MemBroker::new();
    let worker = Router::builder()
        .claw(broker.claw(&format!("echo@{DOMAIN}/w1")).unwrap())
        .build()
        .unwrap();
    worker.start(Echo).await.unwrap();
    let component = ComponentClaw::builder(&addr, DOMAIN, SECRET)
        .build()
        .unwrap();
    let bus: Arc<dyn Claw> = Arc::new(broker.claw(&format!("gateway@{DOMAIN}/gw1")).unwrap());
    let server = async {
        let mut s = Session::accept(&l).await;
        assert!(s.handshake("gw", true).await);
        s
    };
    let (gateway, server) = tokio::join!(gateway::start(component, bus), server);
    Setup {
        server,
        gateway: gateway.unwrap(),
        worker,
        broker,
    }
}

fn assert_has(stanza: &str, parts: &[&str]) {
    for part in parts {
        assert!(stanza.contains(part), "{part} missing in {stanza}");
    }
}

impl Setup {
    async fn next(&mut self) -> String {
        String::from_utf8(self.server.stanza().await.bytes.to_vec()).unwrap()
    }

    async fn finish(self) {
        let Setup {
            server,
            gateway,
            worker,
            ..
        } = self;
        let close = tokio::spawn(async move { gateway.close().await });
        drop(server);
        close.await.unwrap().unwrap();
        worker.close().await.unwrap();
    }
}

#[tokio::test]
async fn server_stanzas_reach_workers_and_replies_come_back() {
    let mut s = setup().await;
    s.server
        .write(&format!("<message from='alice@xmpp.example/phone' to='echo@{DOMAIN}' id='m1' type='chat'><body>hi</body></message>"))
        .await;
    let reply = s.next().await;
    assert_has(
        &reply,
        &[
            "<message ",
            r#"to="alice@xmpp.example/phone""#,
            r#"id="m1""#,
            r#"type="chat""#,
            &format!(r#"from="echo@{DOMAIN}""#),
            "><body>hi</body><echoed xmlns=\"urn:xmpp:claws:echo:0\"/></message>",
        ],
    );
    s.server
        .write(&format!("<iq from='alice@xmpp.example/phone' to='echo@{DOMAIN}/w1' id='p1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>"))
        .await;
    let pong = s.next().await;
    assert_has(
        &pong,
        &[
            "<iq ",
            r#"type="result""#,
            r#"id="p1""#,
            &format!(r#"from="echo@{DOMAIN}/w1""#),
            r#"to="alice@xmpp.example/phone""#,
        ],
    );
    s.finish().await;
}

#[tokio::test]
async fn undeliverable_stanzas_are_answered_with_errors_but_errors_never_are() {
    let mut s = setup().await;
    // Nobody consumes nobody@: the sender gets service-unavailable.
    s.server
        .write(&format!("<message from='alice@xmpp.example/phone' to='nobody@{DOMAIN}' id='n1'><body>?</body></message>"))
        .await;
    let err = s.next().await;
    assert_has(
        &err,
        &[
            "<message ",
            r#"type="error""#,
            r#"to="alice@xmpp.example/phone""#,
            &format!(r#"from="nobody@{DOMAIN}""#),
            r#"id="n1""#,
            "<service-unavailable",
            &format!("no service answers at nobody@{DOMAIN}"),
        ],
    );
    // The gateway's own JID offers nothing.
    s.server
        .write(&format!("<iq from='alice@xmpp.example/phone' to='gateway@{DOMAIN}' id='g1' type='get'><query xmlns='jabber:iq:version'/></iq>"))
        .await;
    let err = s.next().await;
    assert!(
        err.contains(r#"type="error""#)
            && err.contains("service-unavailable")
            && err.contains(r#"id="g1""#),
        "{err}"
    );
    // An error to nobody is dropped silently; the next answer is the probe's.
    s.server
        .write(&format!("<message from='alice@xmpp.example/phone' to='nobody@{DOMAIN}' type='error' id='e1'/><iq from='alice@xmpp.example/phone' to='echo@{DOMAIN}' id='probe' type='get'><ping xmlns='urn:xmpp:ping'/></iq>"))
        .await;
    let next = s.next().await;
    assert!(
        next.contains(r#"id="probe""#) && next.contains(r#"type="result""#),
        "{next}"
    );
    assert!(s.broker.dead_letters().is_empty());
    s.finish().await;
}

#[tokio::test]
async fn bus_stanzas_for_users_go_to_the_server() {
    let mut s = setup().await;
    let service = s.broker.claw(&format!("news@{DOMAIN}/n1")).unwrap();
    let (events, _rx) = Events::channel(8);
    service.start(events).await.unwrap();
    let gateway_jid = claws_core::jid::parse(&format!("gateway@{DOMAIN}/gw1")).unwrap();
    service
        .send(
            &gateway_jid,
            Some("x1"),
            Packet::from(format!(
                "<message xmlns='jabber:client' from='news@{DOMAIN}' to='bob@xmpp.example'><body>news</body></message>"
            )),
        )
        .await
        .unwrap();
    assert_eq!(
        s.next().await,
        format!(
            r#"<message from="news@{DOMAIN}" to="bob@xmpp.example"><body>news</body></message>"#
        )
    );
    service.close().await.unwrap();
    s.finish().await;
}
