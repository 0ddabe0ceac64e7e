//! Running a scenario: the handler behind a router whose claw records what it sends, testers
//! that deliver the steps' packets, and the matching of expected packets.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;

use async_trait::async_trait;
use claws_core::jid::{self, Jid};
use claws_core::stanza::Element;
use claws_core::topology::Subscriptions;
use claws_core::{
    Capabilities, Claw, Context, Error, Events, Handler, HandlerResult, Packet, Result, Router, Via,
};
use futures_util::FutureExt;
use tokio::sync::mpsc;

use super::pattern::{self, Vars};
use super::report::ScenarioReport;
use super::{Expected, Kind, Outgoing, Scenario, Step, StepOutput, StepReport};
use crate::conformance::{ClawFactory, Options};
use crate::mem::MemFactory;

impl Scenario {
    /// Runs every step against `handler` over a fresh in-memory broker.
    pub async fn run(&self, handler: impl Handler) -> ScenarioReport {
        self.run_on(handler, &MemFactory::new()).await
    }

    /// Runs every step against `handler` over claws made by `factory` (any claw: the handler's
    /// instance and the testers are made with it).
    pub async fn run_on(&self, handler: impl Handler, factory: &dyn ClawFactory) -> ScenarioReport {
        let started = Instant::now();
        let mut report = ScenarioReport {
            name: self.name.clone(),
            steps: Vec::new(),
            elapsed: Duration::ZERO,
        };
        let mut run = match Run::start(self, handler, factory).await {
            Ok(run) => run,
            Err(e) => {
                report.steps.push(StepReport {
                    name: "setup".into(),
                    failure: Some(format!("could not start the handler's claw: {e}")),
                    logs: Vec::new(),
                    elapsed: started.elapsed(),
                });
                report.elapsed = started.elapsed();
                return report;
            }
        };
        for step in &self.steps {
            let t = Instant::now();
            let (failure, logs) = run.step(self, step, factory).await;
            if let Some(f) = &failure {
                tracing::warn!(step = %step.name, failure = %f, "scenario step failed");
            }
            report.steps.push(StepReport {
                name: step.name.clone(),
                failure,
                logs,
                elapsed: t.elapsed(),
            });
        }
        run.stop(factory).await;
        report.elapsed = started.elapsed();
        report
    }
}

/// A running scenario.
struct Run {
    router: Router,
    sent: mpsc::UnboundedReceiver<Outgoing>,
    done: mpsc::UnboundedReceiver<std::result::Result<(), String>>,
    testers: HashMap<String, Arc<dyn Claw>>,
    vars: Vars,
    service: String,
    jids: Vec<String>,
}

impl Run {
    async fn start(
        scenario: &Scenario,
        handler: impl Handler,
        factory: &dyn ClawFactory,
    ) -> Result<Run> {
        let mut vars = Vars::new();
        vars.insert("service".into(), scenario.service.clone());
        vars.insert("tester".into(), scenario.tester.clone());
        for (k, v) in &scenario.vars {
            let v = pattern::substitute(v, &vars);
            vars.insert(k.clone(), v);
        }
        let service = pattern::substitute(&scenario.service, &vars);
        let opts = Options {
            max_deliveries: 1,
            ..Options::default()
        };
        let inner = factory.make(&service, &opts).await?;
        let (sent_tx, sent) = mpsc::unbounded_channel();
        let (done_tx, done) = mpsc::unbounded_channel();
        let router = Router::builder()
            .claw(Recording {
                inner,
                sent: sent_tx,
            })
            .concurrency(1)
            .build()?;
        router
            .start(Observed {
                inner: handler,
                done: done_tx,
            })
            .await?;
        Ok(Run {
            router,
            sent,
            done,
            testers: HashMap::new(),
            vars,
            jids: vec![service.clone()],
            service,
        })
    }

    /// The tester claw sending as `jid`, made and started on first use.
    async fn tester(&mut self, jid: &str, factory: &dyn ClawFactory) -> Result<Arc<dyn Claw>> {
        if let Some(t) = self.testers.get(jid) {
            return Ok(t.clone());
        }
        let opts = Options {
            subscriptions: Subscriptions::none(),
            ..Options::default()
        };
        let claw = factory.make(jid, &opts).await?;
        let (events, mut rx) = Events::channel(16);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        claw.start(events).await?;
        self.testers.insert(jid.to_owned(), claw.clone());
        Ok(claw)
    }

    async fn step(
        &mut self,
        scenario: &Scenario,
        step: &Step,
        factory: &dyn ClawFactory,
    ) -> (Option<String>, Vec<String>) {
        let mut problems = Vec::new();
        for (k, v) in &step.vars {
            let v = pattern::substitute(v, &self.vars);
            self.vars.insert(k.clone(), v);
        }
        // Whatever arrived late from an earlier step is not this step's output.
        while self.sent.try_recv().is_ok() {}
        while self.done.try_recv().is_ok() {}
        let mut count = 0usize;
        for send in &step.sends {
            match self.send(send, factory).await {
                Ok(n) => count += n,
                Err(e) => problems.push(e),
            }
        }
        let deadline = Instant::now() + step.timeout;
        let mut handled = 0;
        while handled < count && problems.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.done.recv()).await {
                Ok(Some(Ok(()))) => handled += 1,
                Ok(Some(Err(e))) => {
                    handled += 1;
                    problems.push(format!("the handler failed: {e}"));
                }
                Ok(None) | Err(_) => {
                    problems.push(format!(
                        "the handler returned from {handled} of {count} packet(s) within the step's timeout of {:?}",
                        step.timeout
                    ));
                    break;
                }
            }
        }
        let mut out = Vec::new();
        while let Ok(o) = self.sent.try_recv() {
            out.push(o);
        }
        if let Some(diff) = self.expect(&step.expected, &out) {
            problems.push(diff);
        }
        for name in &step.checks {
            match scenario.checks.get(name) {
                None => problems.push(format!(
                    "no check named `{name}` is registered; register it with Scenario::check(\"{name}\", ..)"
                )),
                Some(f) => {
                    let input = StepOutput {
                        step: &step.name,
                        sent: &out,
                        vars: &self.vars,
                    };
                    if let Err(e) = f(&input) {
                        problems.push(format!("check `{name}` failed: {e}"));
                    }
                }
            }
        }
        let logs: Vec<String> = step
            .logs
            .iter()
            .map(|l| pattern::substitute(l, &self.vars))
            .collect();
        for l in &logs {
            tracing::info!(step = %step.name, "{l}");
        }
        let failure = (!problems.is_empty()).then(|| problems.join("\n"));
        (failure, logs)
    }

    /// Delivers a `<send>`'s packets; returns how many.
    async fn send(
        &mut self,
        send: &super::SendSpec,
        factory: &dyn ClawFactory,
    ) -> std::result::Result<usize, String> {
        let vars = &self.vars;
        let fill = |what: &str, text: &str| -> std::result::Result<String, String> {
            let missing = pattern::unbound(text, vars);
            if missing.is_empty() {
                Ok(pattern::substitute(text, vars))
            } else {
                Err(format!("{what} uses unbound variable(s) {missing:?}"))
            }
        };
        let via = fill("<send via>", send.via.as_deref().unwrap_or("{{tester}}"))?;
        let to = fill("<send to>", send.to.as_deref().unwrap_or(&self.service))?;
        let id = send
            .id
            .as_deref()
            .map(|i| fill("<send id>", i))
            .transpose()?;
        let packets = send
            .packets
            .iter()
            .map(|p| fill("a <send> packet", p))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let to = jid::parse(&to).map_err(|e| format!("<send to>: {e}"))?;
        let tester = self
            .tester(&via, factory)
            .await
            .map_err(|e| format!("starting a tester claw for {via}: {e}"))?;
        for p in &packets {
            tester
                .send(&to, id.as_deref(), Packet::from(p.clone()))
                .await
                .map_err(|e| format!("sending to {to} from {via}: {e}"))?;
        }
        Ok(packets.len())
    }

    /// Matches the expected packets against what was sent; `Some(diff)` on a mismatch.
    fn expect(&mut self, expected: &[Expected], out: &[Outgoing]) -> Option<String> {
        let mut used = vec![false; out.len()];
        let mut missing = Vec::new();
        for e in expected {
            let mut found = None;
            let mut closest: Option<(usize, String)> = None;
            for (i, o) in out.iter().enumerate().filter(|(i, _)| !used[*i]) {
                let mut trial = self.vars.clone();
                match match_one(e, o, &mut trial) {
                    Ok(()) => {
                        found = Some((i, trial));
                        break;
                    }
                    Err(why) => {
                        if closest.is_none() {
                            closest = Some((i, why));
                        }
                    }
                }
            }
            match found {
                Some((i, vars)) => {
                    used[i] = true;
                    self.vars = vars;
                }
                None => missing.push((e, closest)),
            }
        }
        let unexpected: Vec<&Outgoing> = out
            .iter()
            .zip(&used)
            .filter(|(_, u)| !**u)
            .map(|(o, _)| o)
            .collect();
        if missing.is_empty() && unexpected.is_empty() {
            return None;
        }
        let mut diff = String::new();
        if !missing.is_empty() {
            diff.push_str(&format!("{} expected packet(s) not sent:\n", missing.len()));
            for (e, closest) in &missing {
                diff.push_str(&format!("- {}\n", shown_template(e, &self.vars)));
                if let Some((i, why)) = closest {
                    diff.push_str(&format!(
                        "    closest sent: {}\n    difference:   {why}\n",
                        show(&out[*i])
                    ));
                }
            }
        }
        if !unexpected.is_empty() {
            diff.push_str(&format!(
                "{} unexpected packet(s) sent:\n",
                unexpected.len()
            ));
            for o in unexpected {
                diff.push_str(&format!("+ {}\n", show(o)));
            }
        }
        Some(diff.trim_end().to_owned())
    }

    async fn stop(mut self, factory: &dyn ClawFactory) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.router.close()).await;
        for t in self.testers.values() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t.close()).await;
        }
        self.jids.extend(self.testers.keys().cloned());
        factory.cleanup(&self.jids).await;
    }
}

/// An expected packet as the diff shows it: variables replaced, XML on one line.
fn shown_template(e: &Expected, vars: &Vars) -> String {
    let text = pattern::substitute(&e.template, vars);
    match e.kind {
        Kind::Xml => Element::parse(text.as_bytes()).map_or(text, |mut el| {
            el.trim_whitespace();
            el.to_string()
        }),
        Kind::Json | Kind::Raw => text,
    }
}

fn show(o: &Outgoing) -> String {
    let payload = o.packet.as_str().map_or_else(
        || format!("<{} bytes, not UTF-8>", o.packet.len()),
        str::to_owned,
    );
    match &o.to {
        Some(to) => format!("{payload}  (to {to})"),
        None => format!("{payload}  (broadcast)"),
    }
}

fn match_one(e: &Expected, o: &Outgoing, vars: &mut Vars) -> std::result::Result<(), String> {
    if let Some(to) = &e.to {
        let actual = o.to.as_deref().unwrap_or("(broadcast)");
        if !pattern::match_text(to, actual, vars) {
            return Err(format!(
                "sent to {actual}, expected to {}",
                pattern::substitute(to, vars)
            ));
        }
    }
    match e.kind {
        Kind::Xml => {
            let expected = pattern::substitute(&e.template, vars);
            let exp = Element::parse(expected.as_bytes())
                .map_err(|err| format!("the expected packet is not XML: {err}"))?;
            let act = o.packet.parse().map_err(|err| format!("not XML: {err}"))?;
            pattern::match_element(&exp, &act, vars)
        }
        Kind::Json => {
            let exp: serde_json::Value =
                serde_json::from_str(&pattern::substitute(&e.template, vars))
                    .map_err(|err| format!("the expected packet is not JSON: {err}"))?;
            let act: serde_json::Value = serde_json::from_slice(o.packet.as_bytes())
                .map_err(|err| format!("not JSON: {err}"))?;
            pattern::match_json(&exp, &act, vars)
        }
        Kind::Raw => {
            let act = o.packet.as_str().ok_or("not UTF-8")?;
            if pattern::match_text(&e.template, act.trim(), vars) {
                Ok(())
            } else {
                Err(format!(
                    "expected `{}`, got `{}`",
                    pattern::substitute(&e.template, vars),
                    act.trim()
                ))
            }
        }
    }
}

/// The handler's claw: records every send and broadcast, then passes it on. A send nobody
/// consumes still counts as sent (the scenario is what receives it).
struct Recording {
    inner: Arc<dyn Claw>,
    sent: mpsc::UnboundedSender<Outgoing>,
}

impl fmt::Debug for Recording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recording")
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl Claw for Recording {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn jid(&self) -> &Jid {
        self.inner.jid()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn start(&self, events: Events) -> Result<()> {
        self.inner.start(events).await
    }
    async fn send(&self, to: &Jid, id: Option<&str>, packet: Packet) -> Result<()> {
        let _ = self.sent.send(Outgoing {
            to: Some(to.to_string()),
            id: id.map(str::to_owned),
            packet: packet.clone(),
        });
        match self.inner.send(to, id, packet).await {
            Err(Error::NoRoute { .. }) => Ok(()),
            other => other,
        }
    }
    async fn publish(&self, packet: Packet) -> Result<()> {
        let _ = self.sent.send(Outgoing {
            to: None,
            id: None,
            packet: packet.clone(),
        });
        self.inner.publish(packet).await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// The handler under test, reporting each return.
struct Observed<H> {
    inner: H,
    done: mpsc::UnboundedSender<std::result::Result<(), String>>,
}

#[async_trait]
impl<H: Handler> Handler for Observed<H> {
    async fn connected(&self, claw: &str, ctx: &Context) {
        self.inner.connected(claw, ctx).await
    }
    async fn disconnected(&self, claw: &str, reason: &str, ctx: &Context) {
        self.inner.disconnected(claw, reason, ctx).await
    }
    async fn received(&self, packet: Packet, via: Via, ctx: &Context) -> HandlerResult {
        let r = match AssertUnwindSafe(self.inner.received(packet, via, ctx))
            .catch_unwind()
            .await
        {
            Ok(r) => r,
            Err(_) => Err("the handler panicked".into()),
        };
        let _ = self
            .done
            .send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        r
    }
}
