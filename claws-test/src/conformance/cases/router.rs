//! The router over this claw: replies go back through the claw a stanza came from.

use claws_core::{handler_fn, Packet, Router};

use super::routing::direct_only;
use crate::conformance::harness::{ensure, jid, CaseResult, Context, Harness, Policy, WAIT};
use crate::conformance::Options;

/// A router holding two claws of this kind replies, and sends to a learned sender, through the
/// claw the stanza arrived on (not the default claw).
pub(super) async fn router_reply_through_origin(h: &Harness) -> CaseResult {
    let first_jid = h.full("front", "r");
    let second_jid = h.full("back", "r");
    let named = |name: &str| Options {
        name: Some(name.to_owned()),
        ..direct_only()
    };
    let first = h.make(&first_jid, &named("first")).await?;
    let second = h.make(&second_jid, &named("second")).await?;
    let router = Router::builder()
        .claw_arc(first)
        .claw_arc(second)
        .default_claw("first")
        .build()
        .ctx("building a router over two claws")?;
    let token = h.token().to_owned();
    let handler = handler_fn(move |packet: Packet, via, ctx| {
        let token = token.clone();
        async move {
            let asked = packet.as_str().unwrap_or_default().contains("/question\"");
            if asked {
                let reply = format!("<message id=\"{token}/reply-via-{}\"/>", via.claw);
                ctx.reply(&via, Packet::from(reply)).await?;
                if let Some(from) = via.from.clone() {
                    let follow = format!("<message id=\"{token}/followup-via-{}\"/>", via.claw);
                    ctx.send(&from, Packet::from(follow)).await?;
                }
            }
            Ok(())
        }
    });
    tokio::time::timeout(WAIT, router.start(handler))
        .await
        .map_err(|_| format!("router.start did not return within {WAIT:?}"))?
        .ctx("router.start")?;
    let (tx, mut inbox) = h.inbox();
    let client = h
        .start(&h.full("client", "c"), &direct_only(), Policy::Ack, &tx)
        .await?;
    let outcome = async {
        for (to, claw_name) in [(&second_jid, "second"), (&first_jid, "first")] {
            client
                .claw
                .send(&jid(to)?, Some("q-1"), h.stanza("question"))
                .await
                .ctx(format_args!("sending a question to {to}"))?;
            let got = inbox.packets(2, h.wait, &format!("the reply and the follow-up from {to}")).await?;
            for g in &got {
                let key = g.key.as_deref().unwrap_or("?");
                ensure!(
                    key.ends_with(&format!("-via-{claw_name}")),
                    "the question went to {to} (claw `{claw_name}`), but the answer `{key}` was handled elsewhere"
                );
                let from = g.via.from.as_ref().map(|j| j.to_string());
                ensure!(
                    from.as_deref() == Some(to.as_str()),
                    "`{key}` was sent from {from:?}, expected from {to}: the router must answer through the claw the question came from, not the default claw"
                );
            }
            let reply = got.iter().find(|g| g.key.as_deref().is_some_and(|k| k.starts_with("reply"))).ok_or("no reply among the answers")?;
            ensure!(reply.via.id.as_deref() == Some("q-1"), "the reply's id is {:?}, expected the question's \"q-1\"", reply.via.id);
        }
        Ok(())
    }
    .await;
    let closed = tokio::time::timeout(WAIT, router.close()).await;
    outcome?;
    closed
        .map_err(|_| format!("router.close did not return within {WAIT:?}"))?
        .ctx("router.close")?;
    Ok(())
}
