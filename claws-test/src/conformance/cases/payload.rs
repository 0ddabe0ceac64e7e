//! Payloads travel byte for byte.

use claws_core::Packet;

use super::routing::direct_only;
use crate::conformance::harness::{ensure, jid, CaseResult, Context, Harness, Policy};

/// Where two payloads first differ, for the failure message.
fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// The payloads every claw must carry unchanged, each named.
fn payloads(token: &str) -> Vec<(&'static str, Packet)> {
    let big_body: String = (0..(1 << 20) / 16)
        .map(|i| format!("{:015x};", i))
        .collect();
    let mut raw = format!("{token}/raw:").into_bytes();
    raw.extend(0u8..=255);
    raw.extend([0xff, 0xfe, 0x00, 0x00, 0xc3, 0x28, b'<', b'&']);
    vec![
        (
            "UTF-8 beyond the BMP",
            Packet::from(format!(
                "<message id=\"{token}/utf8\"><body>\u{1D11E} \u{1F600} \u{20B9F} ünïcödé 中文 עברית</body></message>"
            )),
        ),
        (
            "CDATA",
            Packet::from(format!(
                "<message id=\"{token}/cdata\"><body><![CDATA[<not> & \"markup\" ]]]]><![CDATA[>]]></body></message>"
            )),
        ),
        (
            "1 MiB stanza",
            Packet::from(format!("<message id=\"{token}/big\"><body>{big_body}</body></message>")),
        ),
        ("non-XML bytes (all 256 values, invalid UTF-8)", Packet::from(raw)),
        (
            "JSON",
            Packet::from(format!("{{\"token\":\"{token}\",\"n\":[1,2.5,null],\"s\":\"\\u00e9\"}}")),
        ),
        (
            "whitespace, prefixes, quotes and entities as written",
            Packet::from(format!(
                "  <x:message xmlns:x='jabber:client' b='2' a=\"1\" id='{token}/ws'>&amp;&#x1F600;\r\n\t</x:message>\n"
            )),
        ),
    ]
}

/// Payloads arrive byte for byte: UTF-8 beyond the BMP, CDATA, 1 MiB, non-XML bytes, JSON.
pub(super) async fn payloads_byte_exact(h: &Harness) -> CaseResult {
    let (tx, mut inbox) = h.inbox();
    let r = h
        .start(&h.full("sink", "r"), &direct_only(), Policy::Ack, &tx)
        .await?;
    let sender = h.sender("source").await?;
    let to = jid(&r.jid())?;
    let sent = payloads(h.token());
    for (what, p) in &sent {
        sender
            .send(&to, None, p.clone())
            .await
            .ctx(format_args!("sending the {what} payload"))?;
    }
    let got = inbox.packets(sent.len(), h.wait, "every payload").await?;
    let mut missing = Vec::new();
    for (what, p) in &sent {
        if !got.iter().any(|g| g.packet == *p) {
            let near = got
                .iter()
                .map(|g| (first_difference(g.packet.as_bytes(), p.as_bytes()), g))
                .max_by_key(|(d, _)| *d);
            let detail = near.map_or(String::new(), |(d, g)| {
                format!(
                    " (closest received: {} bytes vs {} sent, first difference at byte {d})",
                    g.packet.len(),
                    p.len()
                )
            });
            missing.push(format!("{what}{detail}"));
        }
    }
    ensure!(
        missing.is_empty(),
        "payloads changed in transit: {}",
        missing.join("; ")
    );
    Ok(())
}
