//! The `claws` command-line tool: operate a claws bus from a shell.
//!
//! `claws --help` lists the subcommands; each has its own `--help`.

mod bench;
mod demo;
mod echo;
mod exit;
#[cfg(feature = "component")]
mod gateway;
mod listen;
mod options;
mod output;
#[cfg(feature = "amqp091")]
mod rabbit;
mod scenario;
mod send;
mod session;
mod topology;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::options::Global;

/// Operate a claws bus from a shell: XMPP stanzas between services over a message broker.
///
/// Every subcommand takes --transport, --url, --jid and --config; flags override CLAWS_*
/// environment variables, which override the config file (default ./claws.toml if present).
///
/// The mem transport (the default) is an in-process broker: it lives and dies with one command,
/// so `listen` in one shell and `send` in another only meet on a real broker
/// (--transport amqp091 or amqp10 with --url). `demo`, `bench` and `test` run everything in one
/// process and work on mem.
///
/// Exit codes: 0 success, 2 usage or configuration error, 3 cannot connect, 1 anything else.
#[derive(Debug, Parser)]
#[command(name = "claws", version)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Listen(listen::Args),
    Send(send::SendArgs),
    Publish(send::PublishArgs),
    Echo(echo::Args),
    Demo(demo::Args),
    Bench(bench::Args),
    Test(scenario::Args),
    Topology(topology::Args),
    #[cfg(feature = "component")]
    Gateway(gateway::Args),
    Completions(Completions),
    Manpage(Manpage),
}

/// Print a shell completion script.
///
/// Writes the completion script for the shell named to stdout, e.g.
/// `claws completions bash > ~/.local/share/bash-completion/completions/claws`,
/// `claws completions zsh > "${fpath[1]}/_claws"`,
/// `claws completions fish > ~/.config/fish/completions/claws.fish`.
#[derive(Debug, clap::Args)]
struct Completions {
    /// The shell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Print the man page (roff).
///
/// Writes the claws(1) man page, generated from this parser, to stdout, e.g.
/// `claws manpage > ~/.local/share/man/man1/claws.1` (then `man claws`), or read it at once
/// with `claws manpage | man -l -`. With a subcommand, its own page: `claws manpage listen`
/// writes claws-listen(1).
#[derive(Debug, clap::Args)]
struct Manpage {
    /// The subcommand whose page to write (default: the claws(1) page).
    #[arg(value_name = "SUBCOMMAND")]
    subcommand: Option<String>,
}

fn main() -> ExitCode {
    // Before any thread: a hostile message's deeply nested headers must not abort the process
    // in lapin's parser (claws_amqp091::protect_parser_stack).
    #[cfg(feature = "amqp091")]
    claws::amqp091::protect_parser_stack();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() { 2 } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Completions(Completions { shell }) => return completions(shell),
        Command::Manpage(Manpage { subcommand }) => return manpage(subcommand.as_deref()),
        _ => {}
    }
    init_tracing(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            return exit::report(&exit::Failure::other(format!(
                "cannot start the async runtime: {err}"
            )))
        }
    };
    let global = cli.global;
    exit::remember_passwords(global.url.iter().map(String::as_str));
    let result = runtime.block_on(run(&global, cli.command));
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) if failure.code == exit::USAGE => {
            exit::report(&options::from_environment(failure))
        }
        Err(failure) => exit::report(&failure),
    };
    // Do not wait for stray tasks (a blocked stdin reader, a lingering connection).
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

/// Writes the completion script: made from the parser alone (nothing to connect or
/// configure), in memory first (clap_complete panics when its writer fails), then to stdout;
/// a reader that went away (`| head`) is not an error.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "claws", &mut script);
    write_out(&script, "the completion script")
}

/// Writes the man page of claws or of one subcommand: made from the parser alone, rendered in
/// memory first, then to stdout as [`completions`] does. An unknown subcommand is a usage
/// error naming the known ones.
fn manpage(subcommand: Option<&str>) -> ExitCode {
    // No `help` subcommand in the page (it has no page of its own), as clap_mangen's own
    // generate_to does.
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let command = match subcommand {
        None => cli,
        Some(name) => match cli.find_subcommand(name) {
            Some(sub) => sub.clone(),
            None => {
                let known: Vec<&str> = cli.get_subcommands().map(|s| s.get_name()).collect();
                return exit::report(&exit::Failure::usage(format!(
                    "no subcommand `{name}`; the man pages are of: {}",
                    known.join(", ")
                )));
            }
        },
    };
    let mut page = Vec::new();
    let title = command.get_display_name().unwrap_or("claws").to_owned();
    if let Err(e) = clap_mangen::Man::new(command).render(&mut page) {
        return exit::report(&exit::Failure::other(format!(
            "cannot render the man page: {e}"
        )));
    }
    write_out(&title_line(&page, &title), "the man page")
}

/// The page with its `.TH` line replaced: clap_mangen writes an empty date as nothing, so that
/// the source and manual each slid one place left (`man` showed the version as the date).
fn title_line(page: &[u8], title: &str) -> Vec<u8> {
    let th = format!(
        ".TH {title} 1 \"\" \"claws {}\" \"User Commands\"\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut out = Vec::with_capacity(page.len() + th.len());
    let mut replaced = false;
    for line in page.split_inclusive(|&b| b == b'\n') {
        if !replaced && line.starts_with(b".TH ") {
            out.extend_from_slice(th.as_bytes());
            replaced = true;
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is not an error.
fn write_out(bytes: &[u8], what: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => exit::report(&exit::Failure::other(format!("cannot write {what}: {e}"))),
    }
}

async fn run(global: &Global, command: Command) -> Result<(), exit::Failure> {
    // Before any claw starts: claws takes its metric handles on the first events.
    if let Some(addr) = global.metrics {
        serve_metrics(addr)?;
    }
    match command {
        Command::Listen(args) => listen::run(global, args).await,
        Command::Send(args) => send::run_send(global, args).await,
        Command::Publish(args) => send::run_publish(global, args).await,
        Command::Echo(args) => echo::run(global, args).await,
        Command::Demo(args) => demo::run(global, args).await,
        Command::Bench(args) => bench::run(global, args).await,
        Command::Test(args) => scenario::run(global, args).await,
        Command::Topology(args) => topology::run(global, args).await,
        #[cfg(feature = "component")]
        Command::Gateway(args) => gateway::run(global, args).await,
        Command::Completions(_) | Command::Manpage(_) => Ok(()),
    }
}

/// Installs the Prometheus recorder and serves its text on `addr` (in this runtime). Handler
/// and send times are histograms with buckets from 0.5 ms to 30 s, so that they can be summed
/// across instances (a summary's quantiles cannot).
fn serve_metrics(addr: std::net::SocketAddr) -> Result<(), exit::Failure> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    const BUCKETS: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .and_then(PrometheusBuilder::install)
        .map_err(|e| exit::Failure::other(format!("cannot serve metrics on {addr}: {e}")))?;
    claws::metrics::enable();
    Ok(())
}

/// Library logs on stderr: off unless `-v` (warnings; `-vv` info, `-vvv` debug, `-vvvv`
/// trace) or `RUST_LOG` asks for them. Coloured only on a terminal, `NO_COLOR` unset or empty; every
/// line goes through [`exit::clean`] (no password), lapin never logs below debug (its trace
/// shows the login frame), and never a returned message (its payload).
fn init_tracing(verbose: u8) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "off",
        1 => "warn",
        2 => "info",
        3 => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if verbose == 0 && !spec.trim().is_empty() => EnvFilter::try_new(spec).ok(),
        _ => None,
    }
    .unwrap_or_else(|| EnvFilter::new(default));
    let filter = match "lapin=debug".parse() {
        Ok(cap)
            if filter.max_level_hint() == Some(tracing_subscriber::filter::LevelFilter::TRACE) =>
        {
            filter.add_directive(cap)
        }
        _ => filter,
    };
    // lapin's warning for a returned (unroutable) message dumps it whole, payload included;
    // claws-amqp091 logs the routing key and sizes instead.
    let filter = match "lapin::returned_messages=off".parse() {
        Ok(quiet) => filter.add_directive(quiet),
        Err(_) => filter,
    };
    let colour = output::colour_wanted(std::io::stderr().is_terminal());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(|| Scrubbed)
        .try_init();
}

/// Stderr, each write with passwords removed (the formatter writes a whole event at once).
struct Scrubbed;

impl std::io::Write for Scrubbed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = exit::clean(&String::from_utf8_lossy(buf));
        std::io::stderr().lock().write_all(text.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Parses a command line as the binary does (no broker, nothing run).
    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("claws").chain(args.iter().copied()))
    }

    #[test]
    fn numeric_flags_are_checked() {
        for bad in [
            &["listen", "--count", "0"][..],
            &["listen", "--count", "-1"],
            &["listen", "--timeout", "1e30"],
            &["listen", "--timeout", "1e19"],
            &["listen", "--timeout", "0"],
            &["listen", "--timeout", "NaN"],
            &["listen", "--timeout", "soon"],
            &["echo", "--count", "0"],
            &["bench", "--messages", "0"],
            &["bench", "--in-flight", "0"],
            &["bench", "--size", "99999999999"],
            &["bench", "--repeat", "0"],
            &["bench", "--repeat", "1001"],
            &["demo", "--messages", "0"],
        ] {
            let err = parse(bad).expect_err(&bad.join(" "));
            assert!(err.use_stderr(), "{bad:?}: exit 2");
        }
        for (text, secs) in [
            ("5s", 5.0),
            ("250ms", 0.25),
            ("2", 2.0),
            ("0.5", 0.5),
            ("1m 30s", 90.0),
        ] {
            let Ok(Cli {
                command: Command::Listen(args),
                ..
            }) = parse(&["listen", "--timeout", text])
            else {
                panic!("{text} refused");
            };
            assert_eq!(
                args.timeout(),
                Some(std::time::Duration::from_secs_f64(secs))
            );
        }
    }

    proptest! {
        /// No value of any numeric flag panics the parser; what it accepts is in range.
        #[test]
        fn any_flag_value_parses_or_is_refused(value in prop_oneof![
            any::<String>(),
            "-?[0-9]{0,25}(\\.[0-9]{0,5})?(e-?[0-9]{1,3})?",
            "[0-9]{1,6} ?(ns|us|ms|s|m|h|d|w|y|months)",
        ]) {
            for flag in [
                &["listen", "--count"][..],
                &["listen", "--timeout"],
                &["echo", "--count"],
                &["bench", "--messages"],
                &["bench", "--size"],
                &["bench", "--in-flight"],
                &["bench", "--repeat"],
                &["demo", "--messages"],
            ] {
                let mut args = flag.to_vec();
                args.push(&value);
                match parse(&args) {
                    Ok(Cli { command: Command::Listen(a), .. }) => {
                        prop_assert!(a.count().is_none_or(|n| n >= 1));
                        prop_assert!(a.timeout().is_none_or(|t| !t.is_zero()
                            && t <= std::time::Duration::from_secs(365 * 24 * 3600)));
                    }
                    Ok(_) => {}
                    Err(e) => prop_assert!(e.use_stderr(), "{e}"),
                }
            }
        }
    }
}
