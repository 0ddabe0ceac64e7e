//! The example scenarios in `claws-test/scenarios/`, and what a failing step reports.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use claws_core::stanza::Element;
use claws_core::{async_trait, Context, Echo, Handler, HandlerResult, Packet, Via};
use claws_test::scenario::Scenario;

fn scenario(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name);
    Scenario::from_file(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn ping_scenario_passes_against_echo() {
    let report = scenario("ping.xml")
        .check("replied_once", |out| {
            if out.sent.len() == 1 {
                Ok(())
            } else {
                Err(format!("{} replies", out.sent.len()))
            }
        })
        .run(Echo)
        .await;
    println!("{report}");
    report.assert_passed();
    assert_eq!((report.passed(), report.failed()), (4, 0));
    assert_eq!(report.steps[0].logs, ["ping ping-1 answered"]);
    assert_eq!(report.steps[1].logs, ["the echo kept thread t-42"]);
}

/// A small service speaking `urn:example:session`, in XML, JSON and raw text.
struct Sessions {
    next: AtomicU64,
    open: std::sync::Mutex<Vec<(String, String)>>,
}

#[async_trait]
impl Handler for Sessions {
    async fn received(&self, packet: Packet, via: Via, ctx: &Context) -> HandlerResult {
        let user = via.from.as_ref().map(|j| j.to_string()).unwrap_or_default();
        let text = packet.as_str().unwrap_or_default().to_owned();
        if let Some(token) = text.strip_prefix("PING ") {
            return Ok(ctx.reply(&via, format!("PONG {token}")).await?);
        }
        if text.starts_with('{') {
            let req: serde_json::Value = serde_json::from_str(&text)?;
            let sum: i64 = req["args"]
                .as_array()
                .map_or(0, |a| a.iter().filter_map(|v| v.as_i64()).sum());
            let reply = serde_json::json!({"result": sum, "token": req["token"]});
            return Ok(ctx.reply(&via, reply.to_string()).await?);
        }
        let iq = packet.parse()?;
        let mut reply = iq.iq_result()?;
        if iq.get_child("open", "urn:example:session").is_some() {
            let token = format!(
                "{:08x}",
                0xc0ffee + self.next.fetch_add(1, Ordering::Relaxed)
            );
            self.open.lock().unwrap().push((token.clone(), user));
            reply = reply.with_child(
                Element::new("session", Some("urn:example:session")).with_attr("token", token),
            );
        } else if let Some(who) = iq.get_child("whoami", "urn:example:session") {
            let token = who.attr("token").unwrap_or_default();
            let owner = self
                .open
                .lock()
                .unwrap()
                .iter()
                .find(|(t, _)| t == token)
                .map(|(_, u)| u.clone());
            reply = reply.with_child(
                Element::new("whoami", Some("urn:example:session"))
                    .with_text(owner.ok_or("unknown token")?),
            );
        }
        ctx.reply(&via, Packet::from(&reply)).await?;
        Ok(())
    }
}

#[tokio::test]
async fn session_scenario_binds_a_token_and_uses_it() {
    let sessions = Sessions {
        next: AtomicU64::new(0),
        open: Default::default(),
    };
    let report = scenario("session.xml")
        .check("token_is_hex", |out| {
            let token = out.vars.get("token").ok_or("token not bound")?;
            if token.len() == 8 && token.chars().all(|c| c.is_ascii_hexdigit()) {
                Ok(())
            } else {
                Err(format!("token {token:?} is not 8 hex digits"))
            }
        })
        .run(sessions)
        .await;
    println!("{report}");
    report.assert_passed();
    assert_eq!(report.passed(), 4);
    assert_eq!(report.steps[0].logs, ["session token 00c0ffee"]);
}

#[tokio::test]
async fn a_failing_step_shows_a_readable_diff() {
    let report = Scenario::from_str(
        r#"<functional><steps>
             <step name="expects a version">
               <send><iq type="get" id="v1" from="{{tester}}" to="{{service}}"><query xmlns="jabber:iq:version"/></iq></send>
               <expected><iq type="result" id="v1" from="{{service}}" to="{{tester}}"/></expected>
             </step>
             <step name="unknown check">
               <send><presence/></send>
               <check name="nobody_registered_me"/>
             </step>
             <step name="still runs"><send><presence/></send></step>
           </steps></functional>"#,
    )
    .unwrap()
    .run(Echo)
    .await;
    println!("{report}");
    assert_eq!((report.passed(), report.failed()), (1, 2));
    let diff = report.steps[0].failure.as_deref().unwrap();
    assert!(diff.contains("1 expected packet(s) not sent:"), "{diff}");
    assert!(diff.contains(r#"- <iq type="result" id="v1""#), "{diff}");
    assert!(
        diff.contains("difference:   /iq: attribute `type`: expected `result`, got `error`"),
        "{diff}"
    );
    assert!(diff.contains("1 unexpected packet(s) sent:"), "{diff}");
    assert!(
        diff.contains(r#"+ <iq type="error""#) && diff.contains("service-unavailable"),
        "{diff}"
    );
    let unknown = report.steps[1].failure.as_deref().unwrap();
    assert!(
        unknown.contains("Scenario::check(\"nobody_registered_me\""),
        "{unknown}"
    );
    assert!(report.to_string().ends_with("1 passed, 2 failed"));
}

#[test]
fn bad_files_say_what_is_wrong() {
    let err = Scenario::from_str("<functional><steps><step><sned/></step></steps></functional>")
        .unwrap_err();
    assert!(err.to_string().contains("unknown element <sned>"), "{err}");
    let err = Scenario::from_str("<tests/>").unwrap_err();
    assert!(err.to_string().contains("expected <functional>"), "{err}");
    let err =
        Scenario::from_str(r#"<functional><steps><step timeout="soon"/></steps></functional>"#)
            .unwrap_err();
    assert!(err.to_string().contains("timeout=\"soon\""), "{err}");
    let err = Scenario::from_file("/nonexistent/x.xml").unwrap_err();
    assert!(err.to_string().contains("cannot read it"), "{err}");
}
