//! `claws test`: scripted scenario files (claws-test).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use claws::{async_trait, Capabilities, Claw, Config, Echo, Events, Packet, Transport};
use claws_test::conformance::{ClawFactory, Options};
use claws_test::scenario::{Scenario, ScenarioReport, StepOutput};
use serde_json::json;

use crate::exit::{Failure, CONNECT};
use crate::options::Global;
use crate::output::Printer;
use crate::session;

/// Run scripted scenario files (claws-test) against the echo handler.
///
/// Runs claws-test's XML scenario files against the echo service's handler (the handler built
/// into this tool; a file whose <config> names another <handler> fails) on the transport given:
/// on mem (the default) each file gets a fresh in-process broker; with `--transport amqp091
/// --url amqp://...` (or amqp10) the echo service and the testers are claws on that broker,
/// under the JIDs the file names (runs sharing a broker must not use the same JIDs at once),
/// and their queues are deleted afterwards. Prints each step and `N passed, M failed`
/// (steps); exits 1 when any step fails, 2 when a file cannot be read or parsed, 3 when the
/// broker cannot be reached.
///
/// Built-in <check name=".."/> functions: replied_once (the handler sent exactly one packet),
/// no_replies (it sent none), no_errors (it sent no type="error" stanza).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Scenario files.
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<(), Failure> {
    let printer = Printer::new(global.format);
    let mut scenarios = Vec::with_capacity(args.files.len());
    for file in &args.files {
        let scenario = Scenario::from_file(file).map_err(|e| Failure::usage(e.to_string()))?;
        if let Some(handler) = named_handler(file).filter(|h| h != "echo") {
            return Err(Failure::usage(format!(
                "scenario {} names the handler `{handler}`, which is not built into the claws \
                 tool (only `echo` is); run it from Rust with claws_test::scenario::Scenario::run",
                file.display()
            )));
        }
        scenarios.push(with_checks(scenario));
    }
    let config = global.config()?;
    let transport = config.transport;
    let factory = (transport != Transport::Mem).then(|| ConfigFactory::new(config));
    let (mut passed, mut failed) = (0, 0);
    for scenario in &scenarios {
        let report = match &factory {
            None => scenario.run(Echo).await,
            Some(factory) => {
                let report = scenario.run_on(Echo, factory).await;
                if let Some(failure) = factory.connect_failure() {
                    return Err(failure);
                }
                report
            }
        };
        passed += report.passed();
        failed += report.failed();
        print(&printer, &report, transport);
    }
    if scenarios.len() > 1 {
        printer.line(
            || format!("total: {passed} passed, {failed} failed"),
            || json!({"event": "total", "passed": passed, "failed": failed}),
        );
    }
    if failed > 0 {
        return Err(Failure::other(format!(
            "{failed} scenario step{} failed",
            if failed == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

/// The `<handler>` a file's `<config>` names, if any.
fn named_handler(file: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let start = text.find("<handler>")? + "<handler>".len();
    let end = start + text[start..].find("</handler>")?;
    Some(text[start..end].trim().to_owned())
}

fn with_checks(scenario: Scenario) -> Scenario {
    scenario
        .check("replied_once", |out: &StepOutput<'_>| {
            match out.sent.len() {
                1 => Ok(()),
                n => Err(format!("the handler sent {n} packets, not one")),
            }
        })
        .check("no_replies", |out: &StepOutput<'_>| match out.sent.len() {
            0 => Ok(()),
            n => Err(format!("the handler sent {n} packets, expected none")),
        })
        .check("no_errors", |out: &StepOutput<'_>| {
            let errors = out
                .sent
                .iter()
                .filter(|o| {
                    o.packet
                        .parse()
                        .is_ok_and(|e| e.attr("type") == Some("error"))
                })
                .count();
            match errors {
                0 => Ok(()),
                n => Err(format!("the handler sent {n} error stanzas")),
            }
        })
}

fn print(printer: &Printer, report: &ScenarioReport, transport: Transport) {
    printer.line(
        || report.to_string().trim_end().to_owned(),
        || {
            let steps: Vec<_> = report
                .steps
                .iter()
                .map(|s| json!({"name": s.name, "passed": s.passed(), "failure": s.failure, "logs": s.logs}))
                .collect();
            json!({"event": "scenario", "name": report.name, "transport": transport.as_str(),
                   "passed": report.passed(),
                   "failed": report.failed(), "steps": steps})
        },
    );
}

/// Makes the scenario's claws (the echo service's and the testers') from the command's config
/// on a real broker, each under its own JID. A claw that cannot connect is remembered, so that
/// the command exits 3 rather than reporting a failed step.
struct ConfigFactory {
    base: Config,
    failure: Arc<Mutex<Option<Failure>>>,
}

impl ConfigFactory {
    fn new(base: Config) -> Self {
        Self {
            base,
            failure: Arc::default(),
        }
    }

    /// The first connection failure, if a claw could not connect.
    fn connect_failure(&self) -> Option<Failure> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

#[async_trait]
impl ClawFactory for ConfigFactory {
    fn name(&self) -> String {
        format!(
            "{} at {}",
            self.base.transport.as_str(),
            session::endpoint(&self.base)
        )
    }

    async fn make(&self, jid: &str, opts: &Options) -> claws::Result<Arc<dyn Claw>> {
        let config = Config {
            jid: jid.to_owned(),
            prefetch: opts.prefetch,
            max_deliveries: opts.max_deliveries,
            subscriptions: opts.subscriptions,
            name: opts.name.clone().or_else(|| self.base.name.clone()),
            ..self.base.clone()
        };
        let inner = claws::connect(&config)?;
        Ok(Arc::new(Connecting {
            inner,
            config,
            failure: self.failure.clone(),
        }))
    }

    async fn cleanup(&self, jids: &[String]) {
        #[cfg(feature = "amqp091")]
        {
            let jids: Vec<&str> = jids.iter().map(String::as_str).collect();
            crate::rabbit::delete_queues_of(&self.base, &jids).await;
        }
        #[cfg(not(feature = "amqp091"))]
        let _ = jids;
    }
}

/// A scenario's claw whose start is bounded as every command's is ([`session::start`]); a
/// connection failure is kept for the exit code.
#[derive(Debug)]
struct Connecting {
    inner: Arc<dyn Claw>,
    config: Config,
    failure: Arc<Mutex<Option<Failure>>>,
}

#[async_trait]
impl Claw for Connecting {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn jid(&self) -> &claws::Jid {
        self.inner.jid()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn start(&self, events: Events) -> claws::Result<()> {
        match session::start(&self.config, self.inner.start(events)).await {
            Ok(()) => Ok(()),
            Err(failure) => {
                let message = failure.message.clone();
                if failure.code == CONNECT {
                    let mut first = self.failure.lock().unwrap_or_else(|e| e.into_inner());
                    first.get_or_insert(failure);
                }
                Err(claws::Error::backend(message))
            }
        }
    }
    async fn send(&self, to: &claws::Jid, id: Option<&str>, packet: Packet) -> claws::Result<()> {
        self.inner.send(to, id, packet).await
    }
    async fn publish(&self, packet: Packet) -> claws::Result<()> {
        self.inner.publish(packet).await
    }
    async fn close(&self) -> claws::Result<()> {
        self.inner.close().await
    }
}
