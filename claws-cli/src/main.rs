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

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() { 2 } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
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

async fn run(global: &Global, command: Command) -> Result<(), exit::Failure> {
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
    }
}

/// Library logs on stderr: off unless `-v` (warnings; `-vv` info, `-vvv` debug, `-vvvv`
/// trace) or `RUST_LOG` asks for them. Coloured only on a terminal without `NO_COLOR`; every
/// line goes through [`exit::clean`] (no password), and lapin never logs below debug (its trace
/// shows the login frame).
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
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
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
