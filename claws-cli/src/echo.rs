//! `claws echo`: the ready echo service.

use claws::{async_trait, Context, Echo, Handler, HandlerResult, Packet, Via};
use tokio::sync::mpsc;

use crate::exit::Failure;
use crate::options::Global;
use crate::output::Printer;
use crate::session;

/// Run the echo service as --jid.
///
/// Answers XEP-0199 pings with an iq result, echoes each <message> back to its sender
/// (from/to swapped), answers other iq get/set with service-unavailable. Prints each event (as
/// `listen` does) and runs until Ctrl-C or SIGTERM (or --count packets).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Exit (0) after handling this many packets.
    #[arg(long, value_name = "N", value_parser = crate::options::positive)]
    count: Option<u64>,
}

/// Prints what arrives, then lets [`Echo`] answer it.
struct Printing {
    printer: Printer,
    handled: mpsc::UnboundedSender<()>,
}

#[async_trait]
impl Handler for Printing {
    async fn connected(&self, claw: &str, _ctx: &Context) {
        self.printer.connected(claw, None);
    }

    async fn disconnected(&self, claw: &str, reason: &str, _ctx: &Context) {
        self.printer.disconnected(claw, reason);
    }

    async fn received(&self, packet: Packet, via: Via, ctx: &Context) -> HandlerResult {
        let _ = self.printer.received(&packet, &via);
        Echo.received(packet, via, ctx).await?;
        let _ = self.handled.send(());
        Ok(())
    }
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<(), Failure> {
    let mut shutdown = session::Shutdown::install()?;
    let config = global.config()?;
    let (tx, mut handled) = mpsc::unbounded_channel();
    let handler = Printing {
        printer: Printer::new(global.format),
        handled: tx,
    };
    let router = session::router(&config, handler).await?;
    let mut count = 0u64;
    tokio::select! {
        biased;
        () = shutdown.recv() => {}
        () = async {
            while handled.recv().await.is_some() {
                count += 1;
                if args.count.is_some_and(|n| count >= n) {
                    break;
                }
            }
        } => {}
    }
    router.close().await?;
    Ok(())
}
