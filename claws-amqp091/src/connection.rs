//! Connecting and recovering: [`establish`] builds a [`Session`] (connect, declare, consume,
//! report `Connected`); [`supervise`] watches it and, when it dies, reports `Disconnected` and
//! builds the next one over the endpoints with jittered backoff (claws-core's
//! [`Reconnect`]).
//!
//! claws owns recovery instead of using lapin's `enable_auto_recover()` (see the crate docs).

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use claws_core::runtime::{Endpoints, Reconnect, Stint};
use claws_core::{Error, Events, Result};
use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::types::{LongString, ShortString};
use lapin::{Connection, ConnectionProperties};

use crate::config::{Endpoint, UserId};
use crate::consumer::QueueInfo;
use crate::hostile::poison;
use crate::session::{Session, Shared};
use crate::subscription;
use crate::tls;
use crate::topology::{self, short, OnMismatch};

/// The retry schedule over the claw's endpoints.
pub(crate) fn reconnect(shared: &Shared) -> Result<Reconnect<Endpoint>> {
    Ok(Reconnect::new(
        shared.name.to_string(),
        Endpoints::shuffled(shared.settings.endpoints.clone())?,
        shared.settings.timing.backoff(),
    ))
}

/// Opens a connection: heartbeats on, named after the claw and its JID, bounded in time.
async fn connect(shared: &Shared, endpoint: &Endpoint) -> Result<Connection> {
    let settings = &shared.settings;
    let mut uri = endpoint.uri.clone();
    if uri.query.heartbeat.is_none() {
        let secs = settings.timing.heartbeat.as_secs();
        uri.query.heartbeat = Some(u16::try_from(secs).unwrap_or(u16::MAX));
    }
    let connection_name = format!("claws-amqp091 {} {}", shared.name, shared.jid);
    let properties =
        ConnectionProperties::default().with_connection_name(LongString::from(connection_name));
    let fail = |reason: String| Error::Connect {
        claw: shared.name.to_string(),
        endpoint: endpoint.shown.clone(),
        reason: settings.scrub(&reason),
    };
    crate::hostile::check_parser_stack();
    let runtime = lapin::runtime::default_runtime().map_err(|e| fail(e.to_string()))?;
    match tokio::time::timeout(
        settings.timing.connect_timeout,
        Connection::connect_uri_with_config(uri, properties, settings.tls.clone(), runtime),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => {
            let reason = err.to_string();
            Err(fail(match tls::hint(&reason) {
                Some(hint) if endpoint.is_amqps() => format!("{reason} ({hint})"),
                _ => reason,
            }))
        }
        Err(_) => Err(fail(format!(
            "no answer within {:?} (raise `connect_timeout` if the broker is slow)",
            settings.timing.connect_timeout
        ))),
    }
}

/// Builds a session on `endpoint`: connect, open channels, declare the topology, consume,
/// report `Connected`.
///
/// A broker that refuses transient shared queues (RabbitMQ 4.3's default) closes the whole
/// connection (541) at the first one; the claw then declares the plan without them from then
/// on, on a new connection at once.
pub(crate) async fn establish(
    shared: &Arc<Shared>,
    events: &Events,
    endpoint: &Endpoint,
) -> Result<Arc<Session>> {
    match establish_swept(shared, events, endpoint).await {
        Err(e) if topology::refuses_transient(&e) && shared.refuse_transient() => {
            tracing::info!(claw = &*shared.name, %endpoint,
                "the broker refuses transient queues: declaring them durable with x-expires");
            establish_swept(shared, events, endpoint).await
        }
        other => other,
    }
}

/// [`establish_once`], after sweeping the consumed queues for messages lapin cannot decode if
/// a connection died of one (see `poison`); again at once (up to 3 times) if one killed this
/// connection while it started consuming.
async fn establish_swept(
    shared: &Arc<Shared>,
    events: &Events,
    endpoint: &Endpoint,
) -> Result<Arc<Session>> {
    let mut tries = 0;
    loop {
        if shared.poison.take() {
            poison::sweep_consumed(shared, endpoint).await;
        }
        match establish_once(shared, events, endpoint).await {
            Err(_) if shared.poison.is_set() && tries < 3 => tries += 1,
            other => return other,
        }
    }
}

async fn establish_once(
    shared: &Arc<Shared>,
    events: &Events,
    endpoint: &Endpoint,
) -> Result<Arc<Session>> {
    let connection = connect(shared, endpoint).await?;
    let generation = shared.next_generation();
    let mut conn_events = connection.events_listener();
    let setup = async {
        // Declarations on a channel of their own: a failed one closes its channel.
        let mut declaring = connection
            .create_channel()
            .await
            .map_err(|e| shared.lapin_err("opening a declaring channel", e))?;
        let declared = topology::declare(
            &shared.name,
            &connection,
            &mut declaring,
            shared.topology(),
            OnMismatch::Fail,
            topology::answer_within(shared.settings.timing.connect_timeout),
        )
        .await?;
        let _ = declaring.close(200, ShortString::from("declared")).await;
        let publish = connection
            .create_channel()
            .await
            .map_err(|e| shared.lapin_err("opening the publishing channel", e))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| shared.lapin_err("enabling publisher confirms", e))?;
        let mut consumers = Vec::new();
        for (queue, kind) in shared.topology().consumed() {
            let info = Arc::new(QueueInfo {
                name: short("queue", &queue.name)?,
                kind: kind.clone(),
            });
            let consuming = if declared.unavailable.contains(&queue.name) {
                None
            } else {
                match subscription::consume(shared, &connection, &info, generation).await {
                    Ok(c) => Some(c),
                    // Gone between the declaration and now (its node died): consumed later.
                    Err(e) if topology::is_unavailable(&e) => None,
                    Err(e) => {
                        return Err(shared.lapin_err(&format!("consuming `{}`", queue.name), e))
                    }
                }
            };
            consumers.push((info, consuming));
        }
        Ok::<_, Error>((publish, consumers))
    };
    // Every step has a bound: a connection that dies mid-setup must not hang recovery.
    let bound = shared.settings.timing.connect_timeout * 3;
    let setup = async {
        tokio::time::timeout(bound, setup)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    what: format!(
                        "claw `{}` declaring its topology and consumers",
                        shared.name
                    ),
                    after: bound,
                })
            })
    };
    let (publish, consumers) = match setup.await {
        Ok(parts) => parts,
        Err(err) => {
            // A delivery lapin cannot decode may have killed the connection as consuming began.
            poison::note_setup_failure(shared, &err, &mut conn_events).await;
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                connection.close(200, ShortString::from("claws: setup failed")),
            )
            .await;
            return Err(err);
        }
    };
    let session = Arc::new(Session {
        generation,
        endpoint: endpoint.shown.clone(),
        user: if sets_user_id(shared, endpoint).await {
            crate::session::verified_user(&endpoint.uri)
        } else {
            None
        },
        connection,
        publish: RwLock::new(Arc::new(publish)),
        consumers: Mutex::new(Vec::new()),
        dead: Default::default(),
    });
    // Watch the connection: any error ends the session.
    {
        let shared = shared.clone();
        let session = session.clone();
        tokio::spawn(async move {
            // lapin reports a failed connection as an event; the status check is a safety net
            // in case that event is lost.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = session.died() => return,
                    _ = tick.tick() => {
                        if !session.connection.status().connected() {
                            shared.mark_dead(&session, "connection lost (status no longer connected)");
                            return;
                        }
                    }
                    event = conn_events.next() => match event {
                        // A channel's error (a declaration refused, a queue's node down)
                        // comes here too: only a connection that is no longer up ends the
                        // session; channels recover on their own (`subscription`).
                        Some(lapin::Event::Error(err)) if session.connection.status().connected() && !poison::is_parse_error(&err) => {
                            tracing::debug!(claw = &*shared.name, error = %shared.settings.scrub(&err.to_string()), "channel error");
                        }
                        Some(lapin::Event::Error(err)) => {
                            let mut reason = shared.settings.scrub(&err.to_string());
                            if shared.poison.note(&err) {
                                reason.push_str(poison::DIED_OF_ONE);
                            }
                            shared.mark_dead(&session, format!("connection lost: {reason}"));
                            return;
                        }
                        Some(_) => {}
                        None => return,
                    }
                }
            }
        });
    }
    shared.current.up(session.clone());
    tracing::info!(claw = &*shared.name, endpoint = %endpoint, generation, "connected");
    events
        .connected_to(&shared.name, endpoint.shown.clone())
        .await;
    let mut handles = Vec::with_capacity(consumers.len());
    for (queue, consuming) in consumers {
        handles.push(tokio::spawn(subscription::run(
            shared.clone(),
            session.clone(),
            queue,
            consuming,
            events.clone(),
        )));
    }
    *session.consumers.lock().unwrap_or_else(|e| e.into_inner()) = handles;
    Ok(session)
}

/// Whether this session's sends carry `user_id` ([`UserId`]): with `auto`, only on RabbitMQ 4
/// or later, asked of the broker once (a broker that cannot be asked, over TLS, gets it).
async fn sets_user_id(shared: &Shared, endpoint: &Endpoint) -> bool {
    match shared.settings.user_id {
        UserId::Always => return true,
        UserId::Never => return false,
        _ => {}
    }
    let known = *shared
        .user_id_known
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(known) = known {
        return known;
    }
    let timeout = shared.settings.timing.connect_timeout;
    let Some(version) = poison::broker_version(&endpoint.uri, timeout).await else {
        return true;
    };
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.trim().parse::<u32>().ok());
    let on = major.is_none_or(|m| m >= 4);
    if !on {
        tracing::info!(claw = &*shared.name, %endpoint, %version,
            "not setting user_id: RabbitMQ 3.x hands it to AMQP 1.0 consumers in a form they \
             cannot decode (amqp091.user_id = \"always\" sets it anyway)");
    }
    *shared
        .user_id_known
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(on);
    on
}

/// Watches the current session; when it dies, reports `Disconnected` and builds another one,
/// until the claw closes.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    events: Events,
    mut session: Arc<Session>,
    mut retry: Reconnect<Endpoint>,
) {
    let stop = shared.closing.clone();
    // The backoff starts over only after a connection that held (`Stint`).
    let mut stint = Stint::watching(&shared.in_flight);
    loop {
        let reason = tokio::select! {
            reason = session.died() => reason,
            _ = stop.cancelled() => return,
        };
        if shared.is_closing() {
            return;
        }
        tracing::warn!(claw = &*shared.name, endpoint = %session.endpoint, %reason, "disconnected; reconnecting");
        shared.current.down();
        events.disconnected(&shared.name, reason.clone()).await;
        {
            let old = session.clone();
            tokio::spawn(async move { old.shut("replaced").await });
        }
        if !retry.after(&stint, &stop).await {
            return;
        }
        let next = retry
            .until(&stop, |endpoint| {
                let (shared, events) = (&shared, &events);
                async move { establish(shared, events, &endpoint).await }
            })
            .await;
        match next {
            Some(new) => {
                stint = Stint::watching(&shared.in_flight);
                session = new;
            }
            None => return,
        }
    }
}
