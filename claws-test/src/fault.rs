//! [`FaultProxy`]: a loopback TCP proxy that tests put between a claw and its broker to cut,
//! stall, slow down or refuse its connections, then heal.
//!
//! ```no_run
//! use claws_test::fault::FaultProxy;
//! # async fn demo(broker: std::net::SocketAddr) -> std::io::Result<()> {
//! let proxy = FaultProxy::start(broker).await?;
//! // point the claw at proxy.addr() instead of the broker, start it, then:
//! proxy.cut(); // every live connection drops (RST); the claw should reconnect
//! proxy.refuse(true); // ... and fail to, until
//! proxy.heal();
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A loopback TCP proxy with faults on demand. Dropping it stops it and drops its connections.
///
/// - [`cut`](Self::cut) resets every live connection (new ones are accepted again);
/// - [`pause`](Self::pause) stalls traffic in both directions: bytes are held, not forwarded,
///   as in a network partition that TCP rides out; [`resume`](Self::resume) delivers them;
/// - [`set_latency`](Self::set_latency) delays every chunk forwarded;
/// - [`refuse`](Self::refuse) resets new connections as soon as they are accepted;
/// - [`heal`](Self::heal) undoes pause, latency and refuse (cut connections stay cut).
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    /// Bumped by `cut`; each connection ends when it changes.
    generation: watch::Sender<u64>,
    paused: watch::Sender<bool>,
    latency: watch::Sender<Duration>,
    refuse: AtomicBool,
    live: AtomicUsize,
}

impl FaultProxy {
    /// Listens on an ephemeral loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            generation: watch::channel(0).0,
            paused: watch::channel(false).0,
            latency: watch::channel(Duration::ZERO).0,
            refuse: AtomicBool::new(false),
            live: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        Ok(FaultProxy {
            addr,
            upstream,
            shared,
            accept,
        })
    }

    /// The address to connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Resets every live connection, both sides (new connections are still accepted).
    pub fn cut(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Stalls traffic in both directions on every connection, live or new, until
    /// [`resume`](Self::resume).
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Lets stalled traffic flow again.
    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Delays every chunk forwarded, in both directions, by `latency` (zero turns it off).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.latency.send_replace(latency);
    }

    /// While `true`, new connections are reset as soon as they are accepted.
    pub fn refuse(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::SeqCst);
    }

    /// Resumes traffic, removes latency and accepts new connections again.
    pub fn heal(&self) {
        self.resume();
        self.set_latency(Duration::ZERO);
        self.refuse(false);
    }

    /// How many connections are being proxied now.
    pub fn connection_count(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(err) => {
                tracing::warn!(%err, "fault proxy: accept failed");
                continue;
            }
        };
        if shared.refuse.load(Ordering::SeqCst) {
            reset(&client);
            continue;
        }
        tokio::spawn(proxy_connection(client, upstream, shared.clone()));
    }
}

/// Makes the coming drop send a RST instead of a FIN, as a cut cable or a crashed peer would.
fn reset(stream: &TcpStream) {
    #[allow(deprecated)] // a zero linger never blocks, which is what the deprecation is about
    let _ = stream.set_linger(Some(Duration::ZERO));
}

async fn proxy_connection(mut client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut generation = shared.generation.subscribe();
    generation.mark_unchanged();
    let mut server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(err) => {
            tracing::debug!(%err, %upstream, "fault proxy: upstream unreachable");
            reset(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    shared.live.fetch_add(1, Ordering::SeqCst);
    let was_cut = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = pump(client_read, server_write, &shared);
        let down = pump(server_read, client_write, &shared);
        tokio::select! {
            _ = generation.changed() => true,
            _ = async { tokio::join!(up, down) } => false,
        }
    };
    shared.live.fetch_sub(1, Ordering::SeqCst);
    if was_cut {
        reset(&client);
        reset(&server);
    }
}

/// Copies one direction, honouring pause and latency; on end of stream, half-closes the writer.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    shared: &Shared,
) {
    let mut paused = shared.paused.subscribe();
    let latency = shared.latency.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if paused.wait_for(|p| !*p).await.is_err() {
            break;
        }
        let delay = *latency.borrow();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const WAIT: Duration = Duration::from_secs(5);

    /// An echo server on loopback.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, s.read_exact(&mut got))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no echo"))??;
        Ok(got)
    }

    /// Waits until the proxy has `n` live connections.
    async fn live(proxy: &FaultProxy, n: usize) {
        tokio::time::timeout(WAIT, async {
            while proxy.connection_count() != n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "expected {n} live connections, have {}",
                proxy.connection_count()
            )
        });
    }

    #[tokio::test]
    async fn forwards_both_ways() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"hello").await.unwrap(), b"hello");
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        assert_eq!(round_trip(&mut s, &big).await.unwrap(), big);
        assert_eq!(proxy.connection_count(), 1);
        drop(s);
        live(&proxy, 0).await;
    }

    #[tokio::test]
    async fn cut_drops_live_connections_and_accepts_new_ones() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut a, b"a").await.unwrap();
        round_trip(&mut b, b"b").await.unwrap();
        assert_eq!(proxy.connection_count(), 2);
        proxy.cut();
        for s in [&mut a, &mut b] {
            let mut buf = [0u8; 8];
            let r = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .expect("cut is seen at once");
            assert!(matches!(r, Ok(0) | Err(_)), "connection still alive: {r:?}");
        }
        live(&proxy, 0).await;
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut c, b"again").await.unwrap(), b"again");
    }

    #[tokio::test]
    async fn pause_holds_traffic_until_resume() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut s, b"x").await.unwrap();
        proxy.pause();
        s.write_all(b"held").await.unwrap();
        let mut buf = [0u8; 4];
        let stalled =
            tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await;
        assert!(stalled.is_err(), "traffic flowed while paused");
        proxy.resume();
        tokio::time::timeout(WAIT, s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"held");
    }

    #[tokio::test]
    async fn latency_delays_each_chunk() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut s, b"warm").await.unwrap();
        proxy.set_latency(Duration::from_millis(400));
        let t = Instant::now();
        round_trip(&mut s, b"slow").await.unwrap();
        // once up, once down
        let slow = t.elapsed();
        assert!(slow >= Duration::from_millis(800), "{slow:?}");
        proxy.heal();
        let t = Instant::now();
        round_trip(&mut s, b"fast").await.unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn refuse_resets_new_connections_until_healed() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        proxy.refuse(true);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let r = round_trip(&mut s, b"no").await;
        assert!(r.is_err(), "a refused connection echoed: {r:?}");
        assert_eq!(proxy.connection_count(), 0);
        proxy.heal();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"yes").await.unwrap(), b"yes");
    }

    #[tokio::test]
    async fn unreachable_upstream_resets_the_client() {
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let proxy = FaultProxy::start(closed).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut s, b"x").await.is_err());
    }
}
