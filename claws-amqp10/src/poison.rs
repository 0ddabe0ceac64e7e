//! Messages the broker cannot convert for an AMQP 1.0 consumer: found and dead-lettered before
//! consuming again (RabbitMQ scheme).
//!
//! A 0-9-1 publisher can claim that its message carries AMQP 1.0 sections: `type = "amqp-1.0"`
//! (the body is encoded sections) or the headers `x-amqp-1.0-properties`,
//! `x-amqp-1.0-app-properties`, `x-amqp-1.0-message-annotations`, `x-amqp-1.0-footer` (each an
//! encoded section). RabbitMQ 3.x hands such bytes to a 1.0 consumer as they are, where the
//! consumer's decoding catches them ([`consumer`](crate::consumer) dead-letters them). RabbitMQ
//! 4.0 parses them itself when it converts the message for the 1.0 session, and when they do not
//! parse it closes the whole connection (`amqp:internal-error`, "Session error:
//! bad_return_value"): the delivery never reaches the claw, the message goes back to the head of
//! its queue, and every new connection dies the same way — the queue would be blocked for good
//! (a classic queue has no delivery limit).
//!
//! So a connection the broker closed with `amqp:internal-error` makes the next connection
//! [`sweep`] its queues first, over the same short 0-9-1 connection kind the declarer uses:
//! `basic.get` of up to a credit window per queue, and a reject (`requeue = false`, to
//! `xmpp_dead_letter` through the queue's dead-letter exchange) of each message whose claimed
//! sections do not decode; the others go back to their queue, in their order, when the sweep's
//! channel closes. Measured on RabbitMQ 4.0.5 (tests/hostile.rs on `TEST_RABBITMQ=4`).

use std::time::Duration;

use fe2o3_amqp::types::messaging::message::DecodeIntoMessage;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use lapin::options::{BasicGetOptions, BasicRejectOptions};
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use serde_amqp::read::SliceReader;

use crate::connection::Endpoint;
use crate::declare;
use crate::shared::Shared;

/// The 0-9-1 headers RabbitMQ reads as encoded AMQP 1.0 sections.
const SECTION_HEADERS: [&str; 4] = [
    "x-amqp-1.0-properties",
    "x-amqp-1.0-app-properties",
    "x-amqp-1.0-message-annotations",
    "x-amqp-1.0-footer",
];

/// Whether a generation that ended for `reason` may have met such a message: the broker
/// closed the connection (or a session) with `amqp:internal-error`.
pub(crate) fn suspect(reason: &str) -> bool {
    reason.contains("InternalError")
}

/// Why a message's claimed AMQP 1.0 sections do not decode, or `None` when it claims none or
/// they decode.
pub(crate) fn undecodable(properties: &BasicProperties, body: &[u8]) -> Option<String> {
    if let Some(headers) = properties.headers() {
        for name in SECTION_HEADERS {
            let Some(value) = headers.inner().get(name) else {
                continue;
            };
            let bytes = match value {
                AMQPValue::LongString(s) => s.as_bytes(),
                AMQPValue::ByteArray(b) => b.as_slice(),
                other => return Some(format!("its header `{name}` is a {other:?}, not bytes")),
            };
            if let Err(e) = serde_amqp::from_slice::<Value>(bytes) {
                return Some(format!(
                    "its header `{name}` is not an AMQP 1.0 section: {e}"
                ));
            }
        }
    }
    if properties.kind().as_ref().map(|k| k.as_str()) == Some("amqp-1.0") {
        let decoded =
            <Body<Value> as DecodeIntoMessage>::decode_message_from_reader(SliceReader::new(body));
        if let Err(e) = decoded {
            return Some(format!(
                "its type is `amqp-1.0` but its body is not AMQP 1.0 sections: {e}"
            ));
        }
    }
    None
}

/// Dead-letters, among the first `window` messages of each queue the claw consumes, those whose
/// claimed AMQP 1.0 sections do not decode (see the module docs); logs each one, and an error
/// when a queue cannot be swept.
pub(crate) async fn sweep(shared: &Shared, endpoint: &Endpoint) {
    let window = shared.settings.credit.saturating_add(1);
    let bound = shared.settings.timing.connect_timeout * 3;
    for source in &shared.sources {
        let queue = &source.spec.name;
        match tokio::time::timeout(bound, sweep_queue(shared, endpoint, queue, window)).await {
            Ok(Ok(swept)) => {
                for reason in swept {
                    tracing::error!(claw = &*shared.name, %queue, %reason,
                        "dead-lettered a message the broker cannot convert for AMQP 1.0 (it closed \
                         the connection each time it was delivered); fix its publisher");
                    claws_core::metrics::dead_lettered(&shared.name, source.kind());
                }
            }
            Ok(Err(why)) => sweep_failed(shared, queue, endpoint, &why),
            Err(_) => sweep_failed(
                shared,
                queue,
                endpoint,
                &format!("no answer within {bound:?}"),
            ),
        }
    }
}

fn sweep_failed(shared: &Shared, queue: &str, endpoint: &Endpoint, why: &str) {
    tracing::error!(claw = &*shared.name, %queue, %endpoint,
        "a message the broker cannot convert may block this queue; sweeping it failed: {why}");
}

/// Sweeps one queue; the reasons of the messages it dead-lettered.
async fn sweep_queue(
    shared: &Shared,
    endpoint: &Endpoint,
    queue: &str,
    window: u32,
) -> Result<Vec<String>, String> {
    let conn = declare::open(endpoint, &shared.name)
        .await
        .map_err(|e| e.to_string())?;
    let result = async {
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        let mut swept = Vec::new();
        for _ in 0..window {
            let got = ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await;
            let Some(message) = got.map_err(|e| e.to_string())? else {
                break;
            };
            let d = message.delivery;
            if let Some(reason) = undecodable(&d.properties, &d.data) {
                d.acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                    .map_err(|e| e.to_string())?;
                swept.push(reason);
            }
        }
        // The others go back to the queue, in their order.
        let _ = ch.close(200, "swept".into()).await;
        Ok(swept)
    }
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "swept".into())).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldTable, LongString, ShortString};

    fn with_header(name: &str, bytes: &[u8]) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(name.to_owned()),
            AMQPValue::LongString(LongString::from(bytes.to_vec())),
        );
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn claimed_sections_that_do_not_decode_are_named() {
        let truncated = with_header("x-amqp-1.0-properties", b"\x00\x53\x73\xc0\xff\xff\xff\xfe");
        let why = undecodable(&truncated, b"<message/>").expect("undecodable");
        assert!(why.contains("x-amqp-1.0-properties"), "{why}");

        let typed = BasicProperties::default().with_type(ShortString::from("amqp-1.0".to_owned()));
        let why = undecodable(&typed, b"<message/>").expect("undecodable");
        assert!(why.contains("amqp-1.0"), "{why}");
    }

    #[test]
    fn plain_messages_and_sections_that_decode_pass() {
        assert_eq!(
            undecodable(&BasicProperties::default(), b"<message/>"),
            None
        );
        // An empty properties list: 0x00 0x53 0x73 (described, properties) 0x45 (list0).
        let valid = with_header("x-amqp-1.0-properties", b"\x00\x53\x73\x45");
        assert_eq!(undecodable(&valid, b"<message/>"), None);
        // A data section holding the stanza, typed as 1.0 sections.
        let typed = BasicProperties::default().with_type(ShortString::from("amqp-1.0".to_owned()));
        let body = [b"\x00\x53\x75\xa0\x0a".as_slice(), b"<message/>"].concat();
        assert_eq!(undecodable(&typed, &body), None);
    }
}
