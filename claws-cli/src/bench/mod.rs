//! `claws bench`: throughput and latency of a claw, optionally against the raw client.

#[cfg(feature = "amqp091")]
mod baseline;
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
/// --baseline runs raw lapin doing the same work (persistent messages, publisher confirms,
/// manual acks, the same prefetch) in the same run and prints the ratio; it needs
/// --transport amqp091.
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
    /// Also run raw lapin doing the same work, and print the ratio (amqp091 only).
    #[arg(long)]
    baseline: bool,
}

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
    if args.baseline && config.transport != Transport::Amqp091 {
        return Err(Failure::usage(format!(
            "--baseline compares with raw lapin and needs --transport amqp091 (the transport is {})",
            config.transport.as_str()
        )));
    }
    let work = Work {
        messages: args.messages,
        size: args.size.max(stats::MIN_SIZE),
        in_flight: args.in_flight,
    };
    let printer = Printer::new(global.format);
    let label = format!("claws ({})", config.transport.as_str());
    let claws_stats = claw::run(&config, work, progress(work.messages, &label)).await?;
    report(&printer, &label, &claws_stats, work);
    if args.baseline {
        #[cfg(feature = "amqp091")]
        {
            let raw = baseline::run(&config, work, progress(work.messages, "lapin")).await?;
            report(&printer, "lapin (raw)", &raw, work);
            let ratio = claws_stats.throughput() / raw.throughput();
            printer.line(
                || {
                    format!(
                        "ratio: claws reaches {:.0}% of raw lapin's throughput",
                        ratio * 100.0
                    )
                },
                || json!({"event": "ratio", "throughput_ratio": ratio}),
            );
        }
    }
    Ok(())
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

fn report(printer: &Printer, label: &str, stats: &Stats, work: Work) {
    printer.line(
        || {
            format!(
                "{label}: {} stanzas of {} bytes in {:.2} s: {:.0} stanzas/s, latency p50 {:.2} ms, p99 {:.2} ms",
                work.messages,
                work.size,
                stats.elapsed.as_secs_f64(),
                stats.throughput(),
                stats.percentile_ms(50.0),
                stats.percentile_ms(99.0),
            )
        },
        || {
            json!({"event": "bench", "run": label, "messages": work.messages, "size": work.size,
                   "seconds": stats.elapsed.as_secs_f64(), "per_second": stats.throughput(),
                   "p50_ms": stats.percentile_ms(50.0), "p99_ms": stats.percentile_ms(99.0)})
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
