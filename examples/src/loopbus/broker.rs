//! [`LoopBroker`]: a tiny broker on loopback TCP with TOPOLOGY.md's exchanges and queues.
//!
//! It keeps queues (in memory) for as long as it runs, delivers each queue's messages to its
//! consumers in turn within each connection's prefetch, requeues what a connection left unacked
//! when it goes, and dead-letters what a client rejects for the last time.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use claws_core::topology::{DIRECT_EXCHANGE, FANOUT_EXCHANGE, MAX_NAME_BYTES};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::wire::{Frame, ERROR, NO_ROUTE, OK};

#[derive(Debug, Clone)]
struct Msg {
    exchange: String,
    key: String,
    id: Option<String>,
    from: Option<String>,
    /// Deliveries so far.
    count: u32,
    payload: Arc<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Msg>,
    /// (connection, consumer) pairs, served in turn.
    consumers: Vec<(u64, u64)>,
    next: usize,
}

#[derive(Debug)]
struct Conn {
    out: mpsc::UnboundedSender<Frame>,
    /// The task serving the connection, aborted (closing its socket) on a restart.
    task: Option<tokio::task::AbortHandle>,
    prefetch: usize,
    unacked: HashMap<u64, (String, Msg)>,
    next_tag: u64,
}

#[derive(Debug, Default)]
struct State {
    queues: HashMap<String, Queue>,
    direct: HashMap<String, Vec<String>>,
    fanout: Vec<String>,
    dead: Vec<Vec<u8>>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
}

impl State {
    /// Hands queued messages to consumers with room, in turn.
    fn dispatch(&mut self, queue: &str) {
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        while !q.items.is_empty() && !q.consumers.is_empty() {
            let n = q.consumers.len();
            let pick = (0..n).map(|i| (q.next + i) % n).find(|i| {
                let (conn, _) = q.consumers[*i];
                self.conns
                    .get(&conn)
                    .is_some_and(|c| c.unacked.len() < c.prefetch)
            });
            let Some(i) = pick else { break };
            q.next = (i + 1) % n;
            let (conn_id, consumer) = q.consumers[i];
            let Some(mut msg) = q.items.pop_front() else {
                break;
            };
            let conn = self
                .conns
                .get_mut(&conn_id)
                .expect("picked a live connection");
            msg.count += 1;
            conn.next_tag += 1;
            let tag = conn.next_tag;
            let _ = conn.out.send(Frame::Deliver {
                consumer,
                tag,
                exchange: msg.exchange.clone(),
                key: msg.key.clone(),
                id: msg.id.clone(),
                from: msg.from.clone(),
                count: msg.count,
                payload: msg.payload.to_vec(),
            });
            conn.unacked.insert(tag, (queue.to_owned(), msg));
        }
    }

    /// The queues `conn` consumes, to dispatch after it made room.
    fn consumed_by(&self, conn: u64) -> Vec<String> {
        self.queues
            .iter()
            .filter(|(_, q)| q.consumers.iter().any(|(c, _)| *c == conn))
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn dispatch_for(&mut self, conn: u64) {
        for q in self.consumed_by(conn) {
            self.dispatch(&q);
        }
    }

    fn handle(&mut self, conn: u64, frame: Frame) {
        let reply = |state: &State, req: u64, code: u8, message: String| {
            if let Some(c) = state.conns.get(&conn) {
                let _ = c.out.send(Frame::Reply { req, code, message });
            }
        };
        match frame {
            Frame::Hello { req, prefetch } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.prefetch = prefetch.max(1) as usize;
                }
                reply(self, req, OK, String::new());
            }
            Frame::Declare {
                req,
                queue,
                exchange,
                key,
            } => {
                if queue.len() > MAX_NAME_BYTES || key.len() > MAX_NAME_BYTES {
                    return reply(
                        self,
                        req,
                        ERROR,
                        format!("name over {MAX_NAME_BYTES} bytes"),
                    );
                }
                self.queues.entry(queue.clone()).or_default();
                let bound = if exchange == FANOUT_EXCHANGE {
                    &mut self.fanout
                } else {
                    self.direct.entry(key).or_default()
                };
                if !bound.contains(&queue) {
                    bound.push(queue);
                }
                reply(self, req, OK, String::new());
            }
            Frame::Consume {
                req,
                queue,
                consumer,
            } => match self.queues.get_mut(&queue) {
                None => reply(
                    self,
                    req,
                    ERROR,
                    format!("no queue `{queue}`; declare it first"),
                ),
                Some(q) => {
                    q.consumers.push((conn, consumer));
                    reply(self, req, OK, String::new());
                    self.dispatch(&queue);
                }
            },
            Frame::Cancel { req, consumer } => {
                for q in self.queues.values_mut() {
                    q.consumers.retain(|c| *c != (conn, consumer));
                }
                reply(self, req, OK, String::new());
            }
            Frame::Publish {
                req,
                exchange,
                key,
                id,
                from,
                mandatory,
                payload,
            } => {
                let targets: Vec<String> = if exchange == DIRECT_EXCHANGE {
                    self.direct.get(&key).cloned().unwrap_or_default()
                } else {
                    self.fanout.clone()
                };
                if targets.is_empty() && mandatory {
                    return reply(self, req, NO_ROUTE, format!("no queue is bound to `{key}`"));
                }
                let msg = Msg {
                    exchange,
                    key,
                    id,
                    from,
                    count: 0,
                    payload: Arc::new(payload),
                };
                for t in &targets {
                    if let Some(q) = self.queues.get_mut(t) {
                        q.items.push_back(msg.clone());
                    }
                }
                reply(self, req, OK, String::new());
                for t in &targets {
                    self.dispatch(t);
                }
            }
            Frame::Ack { req, tag } => {
                let known = self
                    .conns
                    .get_mut(&conn)
                    .and_then(|c| c.unacked.remove(&tag));
                match known {
                    Some(_) => reply(self, req, OK, String::new()),
                    None => reply(self, req, ERROR, format!("unknown delivery tag {tag}")),
                }
                self.dispatch_for(conn);
            }
            Frame::Reject {
                req,
                tag,
                dead_letter,
            } => {
                let known = self
                    .conns
                    .get_mut(&conn)
                    .and_then(|c| c.unacked.remove(&tag));
                match known {
                    Some((queue, msg)) => {
                        if dead_letter {
                            self.dead.push(msg.payload.to_vec());
                        } else if let Some(q) = self.queues.get_mut(&queue) {
                            q.items.push_front(msg);
                        }
                        reply(self, req, OK, String::new());
                    }
                    None => reply(self, req, ERROR, format!("unknown delivery tag {tag}")),
                }
                self.dispatch_for(conn);
            }
            Frame::Reply { .. } | Frame::Deliver { .. } => {
                tracing::warn!(
                    conn,
                    "loopbus broker: a client sent a broker-only frame; ignored"
                );
            }
        }
    }

    /// A connection went: its consumers go, and what it left unacked returns to its queues.
    fn disconnect(&mut self, conn: u64) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        for q in self.queues.values_mut() {
            q.consumers.retain(|(cn, _)| *cn != conn);
        }
        let mut unacked: Vec<(u64, (String, Msg))> = c.unacked.into_iter().collect();
        unacked.sort_by_key(|(tag, _)| std::cmp::Reverse(*tag));
        let mut touched = Vec::new();
        for (_, (queue, msg)) in unacked {
            if let Some(q) = self.queues.get_mut(&queue) {
                q.items.push_front(msg);
                touched.push(queue);
            }
        }
        for q in touched {
            self.dispatch(&q);
        }
    }
}

/// A loopback broker. Dropping it stops it and drops every connection.
#[derive(Debug)]
pub struct LoopBroker {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl LoopBroker {
    /// Starts a broker on an ephemeral loopback port.
    pub async fn start() -> io::Result<LoopBroker> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let accept = Mutex::new(Some(tokio::spawn(accept_loop(listener, state.clone()))));
        Ok(LoopBroker {
            addr,
            state,
            accept,
        })
    }

    /// Restarts the broker as a crash would look to clients: every connection drops (their
    /// unacked deliveries return to their queues), the port closes, then it listens again on
    /// the same address. Queues and their messages are kept, as a broker keeps durable ones.
    pub async fn restart(&self) -> io::Result<()> {
        let accepting = self.accept.lock().expect("accept lock").take();
        if let Some(task) = accepting {
            task.abort();
            let _ = task.await; // the listener is closed once the task is gone
        }
        {
            let mut s = self.state();
            let conns: Vec<u64> = s.conns.keys().copied().collect();
            for id in conns {
                if let Some(task) = s.conns.get_mut(&id).and_then(|c| c.task.take()) {
                    task.abort();
                }
                s.disconnect(id);
            }
        }
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(self.addr)?;
        let listener = socket.listen(1024)?;
        *self.accept.lock().expect("accept lock") =
            Some(tokio::spawn(accept_loop(listener, self.state.clone())));
        Ok(())
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("loopbus state lock")
    }

    /// The payloads dead-lettered so far.
    pub fn dead_letters(&self) -> Vec<Vec<u8>> {
        self.state().dead.clone()
    }

    /// Every queue's name, sorted.
    pub fn queue_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.state().queues.keys().cloned().collect();
        names.sort();
        names
    }

    /// Deletes a queue, its bindings and its messages.
    pub fn delete_queue(&self, name: &str) {
        let mut s = self.state();
        s.queues.remove(name);
        s.fanout.retain(|q| q != name);
        for list in s.direct.values_mut() {
            list.retain(|q| q != name);
        }
        s.direct.retain(|_, l| !l.is_empty());
    }
}

impl Drop for LoopBroker {
    fn drop(&mut self) {
        if let Some(task) = self.accept.lock().expect("accept lock").take() {
            task.abort();
        }
        for (_, c) in self.state().conns.drain() {
            if let Some(task) = c.task {
                task.abort();
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (registered, ready) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(serve(stream, state.clone(), ready));
                let _ = registered.send(task.abort_handle());
            }
            Err(err) => tracing::warn!(%err, "loopbus broker: accept failed"),
        }
    }
}

async fn serve(
    stream: TcpStream,
    state: Arc<Mutex<State>>,
    task: tokio::sync::oneshot::Receiver<tokio::task::AbortHandle>,
) {
    let task = task.await.ok();
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    let (out, mut outgoing) = mpsc::unbounded_channel::<Frame>();
    let conn = {
        let mut s = state.lock().expect("loopbus state lock");
        s.next_conn += 1;
        let id = s.next_conn;
        s.conns.insert(
            id,
            Conn {
                out,
                task,
                prefetch: 32,
                unacked: HashMap::new(),
                next_tag: 0,
            },
        );
        id
    };
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(frame) = outgoing.recv().await {
            buf.clear();
            buf.extend(frame.encode());
            while let Ok(more) = outgoing.try_recv() {
                buf.extend(more.encode());
            }
            if write.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    loop {
        match Frame::read(&mut read).await {
            Ok(Some(frame)) => state
                .lock()
                .expect("loopbus state lock")
                .handle(conn, frame),
            Ok(None) => break,
            Err(err) => {
                tracing::debug!(conn, %err, "loopbus broker: connection ended");
                break;
            }
        }
    }
    state.lock().expect("loopbus state lock").disconnect(conn);
    writer.abort();
}
