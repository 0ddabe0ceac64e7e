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
    pub(crate) from: Option<Jid>,
    /// How many times it has been delivered so far.
    pub(crate) deliveries: u32,
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

#[derive(Debug, Default)]
struct State {
    queues: HashMap<String, Arc<Queue>>,
    /// Direct exchange: routing key -> queue names.
    direct: HashMap<String, Vec<String>>,
    /// Fanout exchange: bound queue names.
    fanout: Vec<String>,
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

    /// Binds `queue` to `exchange` with `routing_key` (idempotent).
    pub(crate) fn bind(&self, queue: &str, exchange: &str, routing_key: &str) {
        let mut state = self.state();
        let list = if exchange == FANOUT_EXCHANGE {
            &mut state.fanout
        } else {
            state.direct.entry(routing_key.to_owned()).or_default()
        };
        if !list.iter().any(|q| q == queue) {
            list.push(queue.to_owned());
        }
    }

    /// Routes a message through `exchange`; returns how many queues took it.
    pub(crate) fn route(&self, msg: Message) -> usize {
        let targets: Vec<Arc<Queue>> = {
            let state = self.state();
            let names: &[String] = if msg.exchange == DIRECT_EXCHANGE {
                state
                    .direct
                    .get(&msg.routing_key)
                    .map_or(&[][..], Vec::as_slice)
            } else {
                &state.fanout
            };
            names
                .iter()
                .filter_map(|n| state.queues.get(n).cloned())
                .collect()
        };
        for q in &targets {
            q.push_back(msg.clone());
        }
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
        state.fanout.retain(|q| q != queue);
        for list in state.direct.values_mut() {
            list.retain(|q| q != queue);
        }
        state.direct.retain(|_, list| !list.is_empty());
    }
}
