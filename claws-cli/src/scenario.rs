//! `claws test`: scripted scenario files (claws-test).

use std::path::PathBuf;

use claws::Echo;
use claws_test::scenario::{Scenario, ScenarioReport, StepOutput};
use serde_json::json;

use crate::exit::Failure;
use crate::options::Global;
use crate::output::Printer;

/// Run scripted scenario files (claws-test) against the echo handler.
///
/// Runs claws-test's XML scenario files against the echo service's handler (the handler built
/// into this tool; a file whose <config> names another <handler> fails), each on a fresh
/// in-process mem broker. Prints each step and `N passed, M failed` (steps);
/// exits 1 when any step fails, 2 when a file cannot be read or parsed.
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
    let (mut passed, mut failed) = (0, 0);
    for scenario in &scenarios {
        let report = scenario.run(Echo).await;
        passed += report.passed();
        failed += report.failed();
        print(&printer, &report);
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

fn print(printer: &Printer, report: &ScenarioReport) {
    printer.line(
        || report.to_string().trim_end().to_owned(),
        || {
            let steps: Vec<_> = report
                .steps
                .iter()
                .map(|s| json!({"name": s.name, "passed": s.passed(), "failure": s.failure, "logs": s.logs}))
                .collect();
            json!({"event": "scenario", "name": report.name, "passed": report.passed(),
                   "failed": report.failed(), "steps": steps})
        },
    );
}
