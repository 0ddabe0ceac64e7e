//! `claws bench`: throughput and latency of a claw, optionally against the raw client.

#[cfg(feature = "amqp091")]
mod baseline;
#[cfg(all(feature = "amqp091", feature = "amqp10"))]
mod baseline10;
mod claw;
mod stats;

use claws::Transport;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::exit::Failure;
use crate::options::Global;
use crate::output::Printer;
use stats::Stats;

/// Measure a claw's throughput and latency.
///
/// One instance sends --messages stanzas of --size bytes directly to another (every send
/// confirmed, up to --in-flight at once), which acknowledges each; prints throughput and
/// latency percentiles (p50, p99), with a progress bar on stderr. Latency runs from the send
/// to the receipt under full load, so it includes the time stanzas wait in the queue.
///
/// --baseline runs the raw client doing the same work in the same run and prints the ratio:
/// on amqp091 raw lapin (persistent messages, publisher confirms, manual acks, the same
/// prefetch), on amqp10 raw fe2o3-amqp (durable messages sent unsettled, each awaiting its
/// outcome, every delivery accepted, the prefetch as credit; RabbitMQ 3.x addresses).
///
/// --repeat N runs each side N times (claws and lapin taking turns), prints every run, then a
/// table of the throughput's min, median and max per side and the ratio of the medians; it
/// warns on stderr when one side's runs disagree by more than 20 % (max - min over the
/// median): the figures are then too noisy to compare.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// How many stanzas to send.
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    messages: u64,
    /// Payload size in bytes (at least 16: the send time travels in it).
    #[arg(long, default_value_t = 256, value_name = "BYTES",
          value_parser = bytes)]
    size: usize,
    /// Unconfirmed sends allowed at once.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = in_flight)]
    in_flight: usize,
    /// Also run the raw client doing the same work (lapin on amqp091, fe2o3-amqp on amqp10),
    /// and print the ratio.
    #[arg(long)]
    baseline: bool,
    /// Run each side this many times and print min/median/max (warning when runs disagree
    /// by more than 20 %).
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    repeat: u32,
}

/// Runs of one side that differ by more than this fraction of their median are reported as
/// disagreeing.
const DISAGREEMENT: f64 = 0.20;

/// What one run measures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Work {
    pub(crate) messages: u64,
    pub(crate) size: usize,
    pub(crate) in_flight: usize,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<(), Failure> {
    if args.messages == 0 || args.in_flight == 0 {
        return Err(Failure::usage(
            "--messages and --in-flight must be at least 1",
        ));
    }
    let config = global.config()?;
    if args.baseline && !matches!(config.transport, Transport::Amqp091 | Transport::Amqp10) {
        return Err(Failure::usage(format!(
            "--baseline compares with the raw client (lapin or fe2o3-amqp) and needs --transport \
             amqp091 or amqp10 (the transport is {})",
            config.transport.as_str()
        )));
    }
    let raw_label = match config.transport {
        Transport::Amqp10 => "fe2o3-amqp (raw)",
        _ => RAW,
    };
    let work = Work {
        messages: args.messages,
        size: args.size.max(stats::MIN_SIZE),
        in_flight: args.in_flight,
    };
    let printer = Printer::new(global.format);
    let label = format!("claws ({})", config.transport.as_str());
    let repeat = args.repeat;
    let mut claws_runs = Vec::new();
    #[cfg_attr(not(feature = "amqp091"), allow(unused_mut))]
    let mut raw_runs: Vec<f64> = Vec::new();
    for round in 1..=repeat {
        let stats = claw::run(&config, work, progress(work.messages, &label)).await?;
        report(
            &printer,
            &label,
            &stats,
            work,
            (repeat > 1).then_some(round),
        );
        claws_runs.push(stats.throughput());
        if args.baseline {
            #[cfg(feature = "amqp091")]
            {
                let bar = progress(work.messages, raw_label);
                let raw = match config.transport {
                    #[cfg(feature = "amqp10")]
                    Transport::Amqp10 => baseline10::run(&config, work, bar).await?,
                    _ => baseline::run(&config, work, bar).await?,
                };
                report(
                    &printer,
                    raw_label,
                    &raw,
                    work,
                    (repeat > 1).then_some(round),
                );
                raw_runs.push(raw.throughput());
            }
        }
    }
    let claws_side = Side::new(&label, &claws_runs);
    let raw_side = (!raw_runs.is_empty()).then(|| Side::new(raw_label, &raw_runs));
    if repeat > 1 {
        table(&printer, &[Some(&claws_side), raw_side.as_ref()]);
    }
    if let Some(raw) = &raw_side {
        let ratio = claws_side.median / raw.median;
        printer.line(
            || {
                let of = if repeat > 1 { "median " } else { "" };
                format!(
                    "ratio: claws reaches {:.0}% of {raw_label}'s {of}throughput",
                    ratio * 100.0
                )
            },
            || json!({"event": "ratio", "throughput_ratio": ratio}),
        );
    }
    for side in [Some(&claws_side), raw_side.as_ref()].into_iter().flatten() {
        if side.disagrees() {
            crate::exit::warn(&format!(
                "the {} runs of {} disagree by {:.0} % (min {:.0}, max {:.0} stanzas/s, more \
                 than {:.0} % of the median {:.0}): the figures are noisy; use more --messages \
                 or a quieter machine",
                side.runs,
                side.label,
                side.spread() * 100.0,
                side.min,
                side.max,
                DISAGREEMENT * 100.0,
                side.median
            ));
        }
    }
    Ok(())
}

/// The label of the raw lapin side.
const RAW: &str = "lapin (raw)";

/// One side's throughput over its runs (stanzas per second).
#[derive(Debug, Clone, PartialEq)]
struct Side {
    label: String,
    runs: usize,
    min: f64,
    median: f64,
    max: f64,
}

impl Side {
    fn new(label: &str, runs: &[f64]) -> Self {
        let mut sorted = runs.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => 0.0,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Self {
            label: label.to_owned(),
            runs: n,
            min: sorted.first().copied().unwrap_or(0.0),
            median,
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }

    /// (max - min) / median: how far apart the runs are.
    fn spread(&self) -> f64 {
        if self.median > 0.0 {
            (self.max - self.min) / self.median
        } else {
            0.0
        }
    }

    /// Whether the runs disagree by more than [`DISAGREEMENT`] (one run never does).
    fn disagrees(&self) -> bool {
        self.runs > 1 && self.spread() > DISAGREEMENT
    }
}

/// The min/median/max table, one row (or JSON line) per side.
fn table(printer: &Printer, sides: &[Option<&Side>]) {
    let sides: Vec<&Side> = sides.iter().flatten().copied().collect();
    let width = sides.iter().map(|s| s.label.len()).max().unwrap_or(0);
    printer.line(
        || {
            let mut text = format!(
                "{:width$}  {:>4}  {:>12}  {:>12}  {:>12}  {:>6}",
                "stanzas/s", "runs", "min", "median", "max", "spread"
            );
            for s in &sides {
                text.push_str(&format!(
                    "\n{:width$}  {:>4}  {:>12.0}  {:>12.0}  {:>12.0}  {:>5.0}%",
                    s.label,
                    s.runs,
                    s.min,
                    s.median,
                    s.max,
                    s.spread() * 100.0
                ));
            }
            text
        },
        || {
            let rows: Vec<_> = sides
                .iter()
                .map(|s| {
                    json!({"run": s.label, "runs": s.runs, "min_per_second": s.min,
                           "median_per_second": s.median, "max_per_second": s.max,
                           "spread": s.spread(), "disagree": s.disagrees()})
                })
                .collect();
            json!({"event": "summary", "sides": rows})
        },
    );
}

fn progress(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>14} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_owned());
    bar
}

fn report(printer: &Printer, label: &str, stats: &Stats, work: Work, round: Option<u32>) {
    printer.line(
        || {
            let run = round.map(|r| format!(" run {r}")).unwrap_or_default();
            format!(
                "{label}{run}: {} stanzas of {} bytes in {:.2} s: {:.0} stanzas/s, latency p50 {:.2} ms, p99 {:.2} ms",
                work.messages,
                work.size,
                stats.elapsed.as_secs_f64(),
                stats.throughput(),
                stats.percentile_ms(50.0),
                stats.percentile_ms(99.0),
            )
        },
        || {
            let mut line = json!({"event": "bench", "run": label, "messages": work.messages,
                   "size": work.size, "seconds": stats.elapsed.as_secs_f64(),
                   "per_second": stats.throughput(), "p50_ms": stats.percentile_ms(50.0),
                   "p99_ms": stats.percentile_ms(99.0)});
            if let Some(round) = round {
                line["round"] = json!(round);
            }
            line
        },
    );
}

/// `--size`: 1 byte to 16 MiB (the largest stanza a claw parses).
fn bytes(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=16 << 20).contains(&n) => Ok(n),
        Ok(_) => Err("must be from 1 to 16777216 (16 MiB)".into()),
        Err(e) => Err(format!("{e}; expected a number of bytes")),
    }
}

/// `--in-flight`: 1 to 65535.
fn in_flight(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=65_535).contains(&n) => Ok(n),
        Ok(_) => Err("must be from 1 to 65535".into()),
        Err(e) => Err(format!("{e}; expected a whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_summarise_their_runs() {
        let side = Side::new("x", &[120.0, 100.0, 110.0]);
        assert_eq!((side.min, side.median, side.max), (100.0, 110.0, 120.0));
        assert!(!side.disagrees(), "20/110 is within 20 %");
        let even = Side::new("x", &[100.0, 300.0, 200.0, 400.0]);
        assert_eq!(even.median, 250.0);
        assert!(even.disagrees());
        assert!(
            !Side::new("x", &[5.0]).disagrees(),
            "one run never disagrees"
        );
        assert!(
            Side::new("x", &[100.0, 125.0]).disagrees(),
            "25/112.5 is over 20 %"
        );
    }
}
