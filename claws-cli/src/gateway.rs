//! `claws gateway`: an XMPP server's component traffic onto the bus, and back.

use std::sync::Arc;

use claws::component::config::{ComponentSection, Secret};
use claws::component::ComponentClaw;

use crate::exit::Failure;
use crate::options::Global;
use crate::session;

/// Run the XMPP gateway: a XEP-0114 component on the XMPP server, and the bus claw (--transport,
/// --url, --jid) in one router.
///
/// A stanza from the XMPP server addressed to a JID of the component's domain is sent over the
/// bus to that JID (a bare JID load-balances over its worker group); a stanza from the bus
/// addressed outside the bus goes back to the XMPP server. Settings come from the [component]
/// table of the config file (server, domain, secret, ...), overridden by these flags. Runs
/// until Ctrl-C or SIGTERM, then drains both claws.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The XMPP server's component port, host:port (default: [component] server).
    #[arg(long, value_name = "HOST:PORT")]
    server: Option<String>,
    /// The domain the server hands to the component (default: [component] domain).
    #[arg(long)]
    domain: Option<String>,
    /// The component's shared secret (default: [component] secret).
    #[arg(long, env = "CLAWS_COMPONENT_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<(), Failure> {
    let mut shutdown = session::Shutdown::install()?;
    let mut config = global.config()?;
    let mut section: ComponentSection = config.section("component")?;
    section.server = args.server.or(section.server);
    section.domain = args.domain.or(section.domain);
    section.secret = args.secret.map(Secret::new).or(section.secret);
    config.set_section("component", &section)?;
    let component = ComponentClaw::from_config(&config)?;
    let bus: Arc<dyn claws::Claw> = claws::connect(&config)?;
    let router = tokio::time::timeout(
        session::CONNECT_TIMEOUT,
        claws::component::gateway::start(component, bus),
    )
    .await
    .map_err(|_| Failure::connect("cannot start the gateway: no answer within 15 s"))?
    .map_err(|err| {
        let mut failure = Failure::from(err);
        if failure.code == crate::exit::OTHER {
            failure.code = crate::exit::CONNECT;
        }
        failure
    })?;
    eprintln!("gateway running; Ctrl-C to stop");
    shutdown.recv().await;
    router.close().await?;
    Ok(())
}
