//! The conformance suite: every case a claw must pass, run against a [`ClawFactory`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use claws_core::{mem::MemBroker, Claw};
//! use claws_test::conformance::{self, ClawFactory, Options};
//!
//! struct MemFactory(MemBroker);
//!
//! #[claws_core::async_trait]
//! impl ClawFactory for MemFactory {
//!     fn name(&self) -> String {
//!         "mem".into()
//!     }
//!     async fn make(&self, jid: &str, opts: &Options) -> claws_core::Result<Arc<dyn Claw>> {
//!         let claw = self.0.claw_builder(jid)?
//!             .name(opts.name.as_deref().unwrap_or("mem"))
//!             .max_deliveries(opts.max_deliveries)
//!             .prefetch(opts.prefetch.into())
//!             .subscriptions(opts.subscriptions)
//!             .build()?;
//!         Ok(Arc::new(claw))
//!     }
//! }
//!
//! # async fn demo() {
//! let report = conformance::run(MemFactory(MemBroker::new())).await;
//! println!("{report}");
//! report.assert_passed();
//! # }
//! ```
//!
//! Cases run one after the other, each with its own JIDs (a random suffix) and its own payload
//! token, so that a shared broker's other traffic (broadcasts from other tests) is ignored. Every
//! wait has a timeout; nothing sleeps to synchronise. After each case the factory's
//! [`cleanup`](ClawFactory::cleanup) gets the JIDs the case used.

mod cases;
mod harness;
mod report;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use claws_core::topology::Subscriptions;
use claws_core::{Claw, Error, Packet, Result};

pub use report::{CaseReport, Outcome, Report};

use harness::Harness;

/// How the suite wants a claw configured. Factories apply every field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// After this many deliveries a rejected stanza is dead-lettered (default 3).
    pub max_deliveries: u32,
    /// How many deliveries may be unsettled at once (default 32).
    pub prefetch: u16,
    /// Which subscriptions the instance consumes (default all four).
    pub subscriptions: Subscriptions,
    /// The claw's name, when the suite needs two claws of one factory in one router (they must
    /// be named apart); `None` leaves the factory's default.
    pub name: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_deliveries: 3,
            prefetch: 32,
            subscriptions: Subscriptions::all(),
            name: None,
        }
    }
}

/// Makes claws for the suite. Only [`name`](Self::name) and [`make`](Self::make) are required;
/// every other hook opts the claw into more cases (the report names the cases skipped for want
/// of one).
#[async_trait]
pub trait ClawFactory: Send + Sync + 'static {
    /// What is being tested, for reports, e.g. `amqp091 on RabbitMQ`.
    fn name(&self) -> String;

    /// A new, unstarted claw for `jid`, configured per `opts`. An invalid `jid` must be an
    /// error ([`Error::InvalidJid`]).
    async fn make(&self, jid: &str, opts: &Options) -> Result<Arc<dyn Claw>>;

    /// The real broker's TCP address, if the claw is network based. With it (and
    /// [`make_at`](Self::make_at)) the suite runs the fault-proxy cases.
    fn broker_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// A claw like [`make`](Self::make)'s, but connecting to `addr` (a [`FaultProxy`]) instead
    /// of the broker.
    ///
    /// [`FaultProxy`]: crate::fault::FaultProxy
    async fn make_at(&self, jid: &str, opts: &Options, addr: SocketAddr) -> Result<Arc<dyn Claw>> {
        let _ = (jid, opts);
        Err(Error::Config(format!(
            "this factory cannot point a claw at {addr}; implement ClawFactory::make_at"
        )))
    }

    /// Restarts the broker and returns once it accepts connections again; `None` (the default)
    /// opts out of the broker-restart case.
    async fn restart_broker(&self) -> Option<Result<()>> {
        None
    }

    /// A claw pointed at a closed port, for the unreachable-broker case; `None` (the default)
    /// lets the suite use [`make_at`](Self::make_at) with a closed port when
    /// [`broker_addr`](Self::broker_addr) is set, or skip the check.
    async fn unreachable(&self, jid: &str) -> Option<Result<Arc<dyn Claw>>> {
        let _ = jid;
        None
    }

    /// The payloads dead-lettered so far, when the backend can list them (the mem broker can).
    /// With `None` the dead-letter case checks only that deliveries stop at the bound.
    async fn dead_lettered(&self) -> Option<Vec<Packet>> {
        None
    }

    /// Deletes what the JIDs' instances declared (queues, files). Called after every case with
    /// every JID the case made a claw for.
    async fn cleanup(&self, jids: &[String]) {
        let _ = jids;
    }
}

/// The names of every case, in the order they run.
pub fn case_names() -> Vec<&'static str> {
    cases::ALL.iter().map(|c| c.name).collect()
}

/// Runs every case against `factory` and reports; see [`Suite`] to run a subset.
pub async fn run(factory: impl ClawFactory) -> Report {
    Suite::new().run(factory).await
}

/// A configured run: which cases, and how long each may take.
#[derive(Debug, Clone)]
#[must_use]
pub struct Suite {
    only: Option<Vec<String>>,
    case_timeout: Duration,
    patience: Duration,
}

impl Default for Suite {
    fn default() -> Self {
        Self::new()
    }
}

impl Suite {
    /// Every case, 120 s at most each. The environment variable `CLAWS_CONFORMANCE_ONLY`
    /// (comma-separated case names) narrows the run, for debugging one case.
    pub fn new() -> Self {
        let only = std::env::var("CLAWS_CONFORMANCE_ONLY")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.split(',').map(|n| n.trim().to_owned()).collect());
        Self {
            only,
            case_timeout: Duration::from_secs(120),
            patience: harness::WAIT,
        }
    }

    /// Runs only the named cases (see [`case_names`]).
    pub fn only<S: AsRef<str>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.only = Some(names.into_iter().map(|n| n.as_ref().to_owned()).collect());
        self
    }

    /// The most one case may take before it fails as hung (default 120 s).
    pub fn case_timeout(mut self, timeout: Duration) -> Self {
        self.case_timeout = timeout;
        self
    }

    /// How long a case waits for a delivery before it fails (default 20 s; bulk transfers get
    /// 4.5 times as long). Lower it to fail fast when a claw is expected to fail (tests of the
    /// suite itself); raise it for a slow broker.
    pub fn patience(mut self, wait: Duration) -> Self {
        self.patience = wait;
        self
    }

    /// Runs the selected cases against `factory`.
    pub async fn run(self, factory: impl ClawFactory) -> Report {
        let factory: Arc<dyn ClawFactory> = Arc::new(factory);
        let started = Instant::now();
        let caps = probe(&*factory).await;
        let mut report = Report {
            claw: factory.name(),
            capabilities: caps.as_ref().ok().copied(),
            cases: Vec::new(),
            elapsed: Duration::ZERO,
        };
        for case in cases::ALL {
            if let Some(only) = &self.only {
                if !only.iter().any(|n| n == case.name) {
                    continue;
                }
            }
            let t = Instant::now();
            let harness = Harness::new(factory.clone(), caps.clone(), self.patience);
            let outcome = match tokio::time::timeout(self.case_timeout, (case.run)(&harness)).await
            {
                Ok(Ok(())) => Outcome::Passed,
                Ok(Err(e)) => e.into_outcome(),
                Err(_) => Outcome::Failed(format!(
                    "the case did not finish within {:?} (a hang: something waited forever)",
                    self.case_timeout
                )),
            };
            harness.finish().await;
            tracing::info!(case = case.name, ?outcome, "conformance case done");
            report.cases.push(CaseReport {
                name: case.name,
                about: case.about,
                outcome,
                elapsed: t.elapsed(),
            });
        }
        report.elapsed = started.elapsed();
        report
    }
}

/// Reads the claw's capabilities from an unstarted claw.
async fn probe(factory: &dyn ClawFactory) -> std::result::Result<claws_core::Capabilities, String> {
    let jid = format!("probe@{}/probe", harness::DOMAIN);
    match tokio::time::timeout(harness::WAIT, factory.make(&jid, &Options::default())).await {
        Ok(Ok(claw)) => Ok(claw.capabilities()),
        Ok(Err(err)) => Err(format!(
            "factory.make({jid}) failed, so no case can run: {err}"
        )),
        Err(_) => Err(format!(
            "factory.make({jid}) did not return within {:?}",
            harness::WAIT
        )),
    }
}
