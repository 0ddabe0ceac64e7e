//! The in-process broker: exchanges, bindings and queues with TOPOLOGY.md's semantics.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::jid::Jid;
use crate::topology::{DEAD_LETTER_QUEUE, DIRECT_EXCHANGE, FANOUT_EXCHANGE};
use crate::Packet;

/// A message as the mem broker keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub(crate) payload: Bytes,
    pub(crate) exchange: &'static str,
    pub(crate) routing_key: String,
    pub(crate) id: Option<String>,
    /// Shared with the sending claw: a send copies no JID.
    pub(crate) from: Option<Arc<Jid>>,
    /// How many times it has been delivered so far.
    pub(crate) deliveries: u32,
    /// The sender's trace context (see [`crate::trace`]).
    pub(crate) trace: Option<crate::trace::TraceContext>,
}

/// One queue: messages in order, and a wake-up for competing consumers.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    items: Mutex<VecDeque<Message>>,
    notify: Notify,
}

impl Queue {
    pub(crate) fn push_back(&self, msg: Message) {
        self.items.lock().expect("queue lock").push_back(msg);
        self.notify.notify_one();
    }

    /// Returns a message to the head of the queue (a requeue), as RabbitMQ does.
    pub(crate) fn push_front(&self, msg: Message) {
        self.items.lock().expect("queue lock").push_front(msg);
        self.notify.notify_one();
    }

    /// The next message if there is one now.
    pub(crate) fn try_pop(&self) -> Option<Message> {
        let (msg, more) = {
            let mut items = self.items.lock().expect("queue lock");
            let msg = items.pop_front();
            (msg, !items.is_empty())
        };
        if more {
            // Other consumers may be waiting for what is left.
            self.notify.notify_one();
        }
        msg
    }

    /// Waits for the next message.
    pub(crate) async fn pop(&self) -> Message {
        loop {
            let notified = self.notify.notified();
            let (msg, more) = {
                let mut items = self.items.lock().expect("queue lock");
                let msg = items.pop_front();
                (msg, !items.is_empty())
            };
            if more {
                // Other consumers may be waiting for what is left.
                self.notify.notify_one();
            }
            if let Some(msg) = msg {
                return msg;
            }
            notified.await;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.lock().expect("queue lock").len()
    }

    fn snapshot(&self) -> Vec<Message> {
        self.items
            .lock()
            .expect("queue lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// A bound queue: its name, and the queue itself (so that routing looks up the routing key
/// alone).
type Bound = (String, Arc<Queue>);

#[derive(Debug, Default)]
struct State {
    queues: HashMap<String, Arc<Queue>>,
    /// Direct exchange: routing key -> bound queues.
    direct: HashMap<String, Vec<Bound>>,
    /// Fanout exchange: bound queues.
    fanout: Vec<Bound>,
}

/// An in-process broker keeping TOPOLOGY.md: the `xmpp_direct` and `xmpp_fanout` exchanges and
/// durable queues that outlive the claws consuming them. Clone it to share; every clone is the
/// same broker. Make claws on it with [`MemBroker::claw`].
#[derive(Clone, Default)]
pub struct MemBroker {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for MemBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemBroker")
            .field("queues", &self.queue_names())
            .finish()
    }
}

impl MemBroker {
    /// A new, empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("broker lock poisoned")
    }

    /// Declares a queue (idempotent) and returns it.
    pub(crate) fn declare(&self, name: &str) -> Arc<Queue> {
        self.state()
            .queues
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Binds the declared `queue` to `exchange` with `routing_key` (idempotent).
    pub(crate) fn bind(&self, queue: &str, exchange: &str, routing_key: &str) {
        let mut state = self.state();
        let Some(q) = state.queues.get(queue).cloned() else {
            return;
        };
        let list = if exchange == FANOUT_EXCHANGE {
            &mut state.fanout
        } else {
            state.direct.entry(routing_key.to_owned()).or_default()
        };
        if !list.iter().any(|(name, _)| name == queue) {
            list.push((queue.to_owned(), q));
        }
    }

    /// Routes a message through `exchange`; returns how many queues took it.
    pub(crate) fn route(&self, msg: Message) -> usize {
        // The broker's lock, then each queue's (never the other way round): a message is
        // pushed without collecting the queues first, and the last queue takes it without a
        // copy.
        let state = self.state();
        let targets: &[Bound] = if msg.exchange == DIRECT_EXCHANGE {
            state
                .direct
                .get(msg.routing_key.as_str())
                .map_or(&[][..], Vec::as_slice)
        } else {
            &state.fanout
        };
        let Some(((_, last), rest)) = targets.split_last() else {
            return 0;
        };
        for (_, q) in rest {
            q.push_back(msg.clone());
        }
        last.push_back(msg);
        targets.len()
    }

    pub(crate) fn dead_letter(&self, msg: Message) {
        self.declare(DEAD_LETTER_QUEUE).push_back(msg);
    }

    /// The names of every declared queue, sorted.
    pub fn queue_names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.state().queues.keys().cloned().collect();
        names.sort();
        names
    }

    /// How many messages wait in `queue` (0 if it does not exist).
    pub fn queue_len(&self, queue: &str) -> usize {
        self.state().queues.get(queue).map_or(0, |q| q.len())
    }

    /// The payloads dead-lettered so far (they stay in the dead-letter queue).
    pub fn dead_letters(&self) -> Vec<Packet> {
        let q = self.state().queues.get(DEAD_LETTER_QUEUE).cloned();
        q.map(|q| {
            q.snapshot()
                .into_iter()
                .map(|m| Packet::new(m.payload))
                .collect()
        })
        .unwrap_or_default()
    }

    /// Deletes a queue and its bindings, with whatever it held.
    pub fn delete_queue(&self, queue: &str) {
        let mut state = self.state();
        state.queues.remove(queue);
        state.fanout.retain(|(q, _)| q != queue);
        for list in state.direct.values_mut() {
            list.retain(|(q, _)| q != queue);
        }
        state.direct.retain(|_, list| !list.is_empty());
    }
}
