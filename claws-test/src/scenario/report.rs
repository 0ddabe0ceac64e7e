//! [`ScenarioReport`]: per-step outcomes.

use std::fmt;
use std::time::Duration;

/// One step's outcome.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The step's name.
    pub name: String,
    /// Why it failed (a readable diff), or `None` if it passed.
    pub failure: Option<String>,
    /// The step's `<log>` lines, with variables replaced.
    pub logs: Vec<String>,
    /// How long it took.
    pub elapsed: Duration,
}

impl StepReport {
    /// Whether the step passed.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// The outcome of [`Scenario::run`](super::Scenario::run). `Display` prints each step and
/// `N passed, M failed`.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// The scenario's name (its file).
    pub name: String,
    /// Every step, in order.
    pub steps: Vec<StepReport>,
    /// The whole run's duration.
    pub elapsed: Duration,
}

impl ScenarioReport {
    /// How many steps passed.
    pub fn passed(&self) -> usize {
        self.steps.iter().filter(|s| s.passed()).count()
    }

    /// How many steps failed.
    pub fn failed(&self) -> usize {
        self.steps.len() - self.passed()
    }

    /// Whether every step passed.
    pub fn is_success(&self) -> bool {
        self.failed() == 0
    }

    /// Panics with the report if a step failed.
    #[track_caller]
    pub fn assert_passed(&self) {
        if !self.is_success() {
            panic!("scenario failed\n{self}");
        }
    }
}

impl fmt::Display for ScenarioReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "scenario {}", self.name)?;
        for s in &self.steps {
            let secs = s.elapsed.as_secs_f64();
            match &s.failure {
                None => writeln!(f, "  ok    {} ({secs:.2}s)", s.name)?,
                Some(why) => {
                    writeln!(f, "  FAIL  {} ({secs:.2}s)", s.name)?;
                    for line in why.lines() {
                        writeln!(f, "        {line}")?;
                    }
                }
            }
            for log in &s.logs {
                writeln!(f, "        log: {log}")?;
            }
        }
        write!(f, "{} passed, {} failed", self.passed(), self.failed())
    }
}
