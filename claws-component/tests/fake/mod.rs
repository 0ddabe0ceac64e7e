//! A fake XEP-0114 server (tokio TCP), scripted by each test.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use claws_component::stream::{Frame, Framer, Stanza};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

pub const DOMAIN: &str = "echo.test.example";
pub const SECRET: &str = "s3cr3t-never-logged";
pub const WAIT: Duration = Duration::from_secs(10);

/// One accepted connection of the fake server.
pub struct Session {
    pub sock: TcpStream,
    pub framer: Framer,
}

impl Session {
    pub async fn accept(listener: &TcpListener) -> Session {
        let (sock, _) = timeout(WAIT, listener.accept())
            .await
            .expect("the claw connects")
            .unwrap();
        Session {
            sock,
            framer: Framer::new(1 << 20),
        }
    }

    pub async fn frame(&mut self) -> Option<Frame> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(frame) = self
                .framer
                .next_frame()
                .expect("the claw writes a well-formed stream")
            {
                return Some(frame);
            }
            let n = timeout(WAIT, self.sock.read(&mut buf))
                .await
                .expect("the claw writes")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.framer.feed(&buf[..n]);
        }
    }

    pub async fn stanza(&mut self) -> Stanza {
        match self.frame().await {
            Some(Frame::Stanza(s)) => s,
            other => panic!("expected a stanza, got {other:?}"),
        }
    }

    pub async fn write(&mut self, data: &str) {
        self.sock.write_all(data.as_bytes()).await.unwrap();
    }

    /// Plays the server's side of the handshake; `accept` false refuses it like a server with a
    /// different secret. Returns whether the claw proved the right secret.
    pub async fn handshake(&mut self, id: &str, accept: bool) -> bool {
        let Some(Frame::Header(h)) = self.frame().await else {
            panic!("expected the claw's stream header")
        };
        assert_eq!(h.to.as_deref(), Some(DOMAIN));
        self.write(&format!(
            "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:component:accept' from='{DOMAIN}' id='{id}'>"
        ))
        .await;
        let proof = self.stanza().await;
        assert_eq!(proof.head.name, "handshake");
        let expected = hex::encode(Sha1::digest(format!("{id}{SECRET}").as_bytes()));
        let body = String::from_utf8(proof.bytes.to_vec()).unwrap();
        let right = body == format!("<handshake>{expected}</handshake>");
        if right && accept {
            self.write("<handshake/>").await;
        } else {
            self.write("<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>").await;
        }
        right
    }
}

pub async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}
