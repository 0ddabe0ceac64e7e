//! Reading the `<functional>` format into a [`Scenario`].

use std::collections::HashMap;
use std::time::Duration;

use claws_core::stanza::Element;

use super::{Expected, Kind, Scenario, ScenarioError, SendSpec, Step};

/// The handler's JID when the file names none.
const DEFAULT_SERVICE: &str = "service@scenario.claws.test/handler";
/// The sender's JID when the file names none.
const DEFAULT_TESTER: &str = "tester@scenario.claws.test/t";

pub(super) fn parse(source: &str, text: &str) -> Result<Scenario, ScenarioError> {
    let err = |message: String| ScenarioError {
        source_name: source.to_owned(),
        message,
    };
    let root =
        Element::parse(text.as_bytes()).map_err(|e| err(format!("not well-formed XML: {e}")))?;
    if root.name() != "functional" {
        return Err(err(format!(
            "the root element is <{}>, expected <functional>",
            root.name()
        )));
    }
    let mut scenario = Scenario {
        name: source.to_owned(),
        service: DEFAULT_SERVICE.to_owned(),
        tester: DEFAULT_TESTER.to_owned(),
        vars: Vec::new(),
        steps: Vec::new(),
        checks: HashMap::new(),
    };
    for part in root.children() {
        match part.name() {
            "config" => {
                for c in part.children() {
                    match c.name() {
                        "service" | "jid" => scenario.service = c.text().trim().to_owned(),
                        "tester" => scenario.tester = c.text().trim().to_owned(),
                        "vars" => scenario.vars.extend(values(c).map_err(err)?),
                        other => {
                            tracing::debug!(element = other, "scenario: config element ignored");
                        }
                    }
                }
            }
            "steps" => {
                for (i, s) in part.children().enumerate() {
                    if s.name() != "step" {
                        return Err(err(format!(
                            "<steps> holds <{}>, expected only <step>",
                            s.name()
                        )));
                    }
                    scenario.steps.push(step(s, i).map_err(err)?);
                }
            }
            other => {
                return Err(err(format!(
                    "unknown element <{other}> in <functional>; expected <config> or <steps>"
                )))
            }
        }
    }
    if scenario.steps.is_empty() {
        return Err(err("no <step> in <steps>".into()));
    }
    Ok(scenario)
}

fn values(vars: &Element) -> Result<Vec<(String, String)>, String> {
    vars.children()
        .map(|v| {
            if v.name() != "value" {
                return Err(format!(
                    "<vars> holds <{}>, expected <value key=\"..\">",
                    v.name()
                ));
            }
            let key = v.attr("key").ok_or("a <value> has no `key` attribute")?;
            Ok((key.to_owned(), v.text().trim().to_owned()))
        })
        .collect()
}

fn kind(el: &Element) -> Result<Kind, String> {
    match el.attr("type").unwrap_or("xml") {
        "xml" => Ok(Kind::Xml),
        "json" => Ok(Kind::Json),
        "raw" => Ok(Kind::Raw),
        other => Err(format!(
            "<{}> has type=\"{other}\"; use xml, json or raw",
            el.name()
        )),
    }
}

/// The packets an element holds: each child element (XML), or its text.
fn packets(el: &Element, kind: Kind) -> Vec<String> {
    match kind {
        Kind::Xml => el.children().map(|c| c.to_string()).collect(),
        Kind::Json | Kind::Raw => vec![el.text().trim().to_owned()],
    }
}

fn step(el: &Element, index: usize) -> Result<Step, String> {
    let name = el
        .attr("name")
        .map_or_else(|| format!("step {}", index + 1), str::to_owned);
    let timeout = match el.attr("timeout") {
        None => Duration::from_secs(5),
        Some(t) => t
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                format!("step `{name}`: timeout=\"{t}\" is not a positive number of seconds")
            })?,
    };
    let mut step = Step {
        name: name.clone(),
        timeout,
        vars: Vec::new(),
        sends: Vec::new(),
        expected: Vec::new(),
        checks: Vec::new(),
        logs: Vec::new(),
    };
    let within = |e: String| format!("step `{name}`: {e}");
    for c in el.children() {
        match c.name() {
            "vars" => step.vars.extend(values(c).map_err(within)?),
            "send" => {
                let kind = kind(c).map_err(within)?;
                let packets = packets(c, kind);
                if packets.is_empty() || packets.iter().all(String::is_empty) {
                    return Err(within("a <send> holds nothing to send".into()));
                }
                step.sends.push(SendSpec {
                    via: c.attr("via").map(str::to_owned),
                    to: c.attr("to").map(str::to_owned),
                    id: c.attr("id").map(str::to_owned),
                    packets,
                });
            }
            "expected" => {
                let kind = kind(c).map_err(within)?;
                for template in packets(c, kind) {
                    step.expected.push(Expected {
                        kind,
                        to: c.attr("to").map(str::to_owned),
                        template,
                    });
                }
            }
            "check" => step
                .checks
                .push(c.attr("name").ok_or_else(|| within("a <check> has no `name`".into()))?.to_owned()),
            "log" => step.logs.push(c.text().trim().to_owned()),
            other => {
                return Err(within(format!(
                    "unknown element <{other}>; a step holds <vars>, <send>, <expected>, <check> and <log>"
                )))
            }
        }
    }
    Ok(step)
}
