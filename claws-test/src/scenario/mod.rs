//! Scripted scenarios in the spirit of snatch's functional tests: XML files of steps that send
//! packets to a [`Handler`](claws_core::Handler) and say what it must send back.
//!
//! ```xml
//! <functional>
//!   <config>
//!     <service>echo@example.com/e1</service>   <!-- the handler's JID ({{service}}) -->
//!     <tester>tester@example.com/t</tester>    <!-- the default sender ({{tester}}) -->
//!     <vars><value key="domain">example.com</value></vars>
//!   </config>
//!   <steps>
//!     <step name="ping" timeout="5">
//!       <vars><value key="id">ping-1</value></vars>
//!       <send via="{{tester}}" type="xml">
//!         <iq type="get" id="{{id}}" from="{{tester}}" to="{{service}}"><ping xmlns="urn:xmpp:ping"/></iq>
//!       </send>
//!       <expected type="xml">
//!         <iq type="result" id="{{id}}" from="{{service}}" to="{{tester}}"/>
//!       </expected>
//!       <check name="no_errors"/>
//!       <log>ping {{id}} answered</log>
//!     </step>
//!   </steps>
//! </functional>
//! ```
//!
//! A step runs in this order, whatever the order of its children:
//!
//! 1. `<vars>`: each `<value key="k">v</value>` binds `{{k}}` (for this and later steps).
//! 2. `<send via="JID" to="JID" id=".." type="xml|json|raw">`: delivers packets to the handler
//!    from `via` (default `{{tester}}`) to `to` (default `{{service}}`), with correlation id `id`.
//!    With `type="xml"` (the default) each child element is one packet; with `json` or `raw`
//!    the element's text (CDATA is handy) is one packet. Bound `{{var}}`s are replaced; an
//!    unbound one fails the step.
//! 3. The handler runs. The step waits (at most `timeout` seconds, default 5) until the handler
//!    has returned from every packet the step sent; what it sent meanwhile (replies, sends,
//!    broadcasts) is the step's output.
//! 4. `<expected type="xml|json|raw" to="JID">`: packets the handler must have sent, in any
//!    order (`to`, if given, is matched against the destination). XML matches by name, the
//!    namespace when the expected element names one, the exact set of attributes, trimmed text
//!    and child elements; JSON by structure; raw by text. Any expected value may hold
//!    `{{var}}`: replaced when bound, bound to what was received when not (`{{_}}` matches
//!    anything). A missing or an unexpected packet fails the step with a diff.
//! 5. `<check name="..">`: a Rust function registered with [`Scenario::check`].
//! 6. `<log>`: text (with `{{var}}`s) kept in the step's report.
//!
//! Run it over the in-memory claw:
//!
//! ```
//! use claws_test::scenario::Scenario;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let scenario = Scenario::from_str(r#"
//!   <functional><steps>
//!     <step name="ping">
//!       <send><iq type="get" id="p1" from="{{tester}}" to="{{service}}"><ping xmlns="urn:xmpp:ping"/></iq></send>
//!       <expected><iq type="result" id="p1" from="{{service}}" to="{{tester}}"/></expected>
//!     </step>
//!   </steps></functional>"#)?;
//! let report = scenario.run(claws_core::Echo).await;
//! assert_eq!((report.passed(), report.failed()), (1, 0), "{report}");
//! # Ok(()) }
//! ```

mod parse;
pub mod pattern;
mod report;
mod run;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use claws_core::Packet;

pub use pattern::Vars;
pub use report::{ScenarioReport, StepReport};

/// A check function: given a step's output, `Err` with a message fails the step.
pub type CheckFn = dyn Fn(&StepOutput<'_>) -> Result<(), String> + Send + Sync;

/// A packet the handler sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The destination JID, or `None` for a broadcast.
    pub to: Option<String>,
    /// The correlation id it was sent with.
    pub id: Option<String>,
    /// The payload.
    pub packet: Packet,
}

/// What a check function sees.
#[derive(Debug)]
pub struct StepOutput<'a> {
    /// The step's name.
    pub step: &'a str,
    /// Everything the handler sent during the step.
    pub sent: &'a [Outgoing],
    /// The variables bound so far.
    pub vars: &'a Vars,
}

/// A scenario file could not be read or understood.
#[derive(Debug, thiserror::Error)]
#[error("scenario {source_name}: {message}")]
pub struct ScenarioError {
    /// The file (or `<string>`).
    pub source_name: String,
    /// What is wrong, and where.
    pub message: String,
}

/// How a packet is written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Xml,
    Json,
    Raw,
}

#[derive(Debug, Clone)]
pub(crate) struct SendSpec {
    pub(crate) via: Option<String>,
    pub(crate) to: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) packets: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Expected {
    pub(crate) kind: Kind,
    pub(crate) to: Option<String>,
    pub(crate) template: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub(crate) name: String,
    pub(crate) timeout: Duration,
    pub(crate) vars: Vec<(String, String)>,
    pub(crate) sends: Vec<SendSpec>,
    pub(crate) expected: Vec<Expected>,
    pub(crate) checks: Vec<String>,
    pub(crate) logs: Vec<String>,
}

/// A parsed scenario, with the check functions registered for it.
#[must_use]
pub struct Scenario {
    name: String,
    service: String,
    tester: String,
    vars: Vec<(String, String)>,
    steps: Vec<Step>,
    checks: HashMap<String, Arc<CheckFn>>,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .field("service", &self.service)
            .field(
                "steps",
                &self.steps.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .field("checks", &self.checks.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Scenario {
    /// Reads and parses a scenario file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            source_name: name.clone(),
            message: format!("cannot read it: {e}"),
        })?;
        parse::parse(&name, &text)
    }

    /// Parses a scenario from a string.
    #[allow(clippy::should_implement_trait)] // also implemented; this one needs no import
    pub fn from_str(xml: &str) -> Result<Scenario, ScenarioError> {
        parse::parse("<string>", xml)
    }

    /// Registers the check function `<check name="{name}"/>` calls.
    pub fn check(
        mut self,
        name: impl Into<String>,
        f: impl Fn(&StepOutput<'_>) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.checks.insert(name.into(), Arc::new(f));
        self
    }

    /// The scenario's name (its file, or `<string>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The steps' names, in order.
    pub fn step_names(&self) -> Vec<&str> {
        self.steps.iter().map(|s| s.name.as_str()).collect()
    }
}

impl std::str::FromStr for Scenario {
    type Err = ScenarioError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse::parse("<string>", s)
    }
}
