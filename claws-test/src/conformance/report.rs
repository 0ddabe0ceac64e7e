//! [`Report`]: what a conformance run found, case by case.

use std::fmt;
use std::time::Duration;

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Passed,
    /// A check failed; the message says which and what was seen.
    Failed(String),
    /// The case does not apply to this claw; the reason names the missing capability or hook.
    Skipped(String),
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// The case's name (see [`case_names`](super::case_names)).
    pub name: &'static str,
    /// What the case checks, in one line.
    pub about: &'static str,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took.
    pub elapsed: Duration,
}

/// The result of [`run`](super::run): every case with its outcome. `Display` prints a table.
#[derive(Debug, Clone)]
pub struct Report {
    /// The factory's name (which claw, on which broker).
    pub claw: String,
    /// What the claw declared in `capabilities()`, if a claw could be made to ask.
    pub capabilities: Option<claws_core::Capabilities>,
    /// Every case, in the order they ran.
    pub cases: Vec<CaseReport>,
    /// The whole run's duration.
    pub elapsed: Duration,
}

impl Report {
    /// The cases that passed.
    pub fn passed(&self) -> impl Iterator<Item = &CaseReport> {
        self.cases.iter().filter(|c| c.outcome == Outcome::Passed)
    }

    /// The cases that failed.
    pub fn failed(&self) -> impl Iterator<Item = &CaseReport> {
        self.cases
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Failed(_)))
    }

    /// The cases that were skipped, with their reasons in [`CaseReport::outcome`].
    pub fn skipped(&self) -> impl Iterator<Item = &CaseReport> {
        self.cases
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Skipped(_)))
    }

    /// Whether no case failed.
    pub fn is_success(&self) -> bool {
        self.failed().next().is_none()
    }

    /// The outcome of the case named `name`, if it ran.
    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.cases
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.outcome)
    }

    /// Panics with the whole report if any case failed.
    #[track_caller]
    pub fn assert_passed(&self) {
        if !self.is_success() {
            panic!("conformance suite failed\n{self}");
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "conformance: {}", self.claw)?;
        if let Some(c) = &self.capabilities {
            let flags = [
                ("load_balancing", c.load_balancing),
                ("fanout", c.fanout),
                ("persistence", c.persistence),
                ("ordering", c.ordering),
                ("redelivery", c.redelivery),
                ("dead_letter", c.dead_letter),
                ("reconnect", c.reconnect),
                ("lossless_cut", c.lossless_cut),
                ("survives_broker_restart", c.survives_broker_restart),
                ("unroutable_errors", c.unroutable_errors),
            ];
            let has: Vec<&str> = flags
                .iter()
                .filter(|(_, on)| *on)
                .map(|(n, _)| *n)
                .collect();
            let lacks: Vec<&str> = flags
                .iter()
                .filter(|(_, on)| !*on)
                .map(|(n, _)| *n)
                .collect();
            writeln!(
                f,
                "  capabilities: {}",
                if has.is_empty() {
                    "none".into()
                } else {
                    has.join(", ")
                }
            )?;
            if !lacks.is_empty() {
                writeln!(f, "  lacks: {}", lacks.join(", "))?;
            }
        }
        for case in &self.cases {
            let secs = case.elapsed.as_secs_f64();
            match &case.outcome {
                Outcome::Passed => writeln!(f, "  ok    {:<34} {secs:>7.2}s", case.name)?,
                Outcome::Skipped(why) => writeln!(f, "  skip  {:<34}          {why}", case.name)?,
                Outcome::Failed(why) => {
                    writeln!(f, "  FAIL  {:<34} {secs:>7.2}s", case.name)?;
                    for line in why.lines() {
                        writeln!(f, "          {line}")?;
                    }
                }
            }
        }
        write!(
            f,
            "{} passed, {} failed, {} skipped in {:.2}s",
            self.passed().count(),
            self.failed().count(),
            self.skipped().count(),
            self.elapsed.as_secs_f64()
        )
    }
}
