//! Throughput and latency percentiles, and the payload that carries its send time.

use std::time::{Duration, Instant};

/// The results of one run.
#[derive(Debug)]
pub(crate) struct Stats {
    /// From the first send to the last receive.
    pub(crate) elapsed: Duration,
    /// Send-to-receive latency of each stanza, sorted.
    latencies: Vec<Duration>,
}

impl Stats {
    pub(crate) fn new(elapsed: Duration, mut latencies: Vec<Duration>) -> Self {
        latencies.sort_unstable();
        Self { elapsed, latencies }
    }

    /// Stanzas per second.
    pub(crate) fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`th percentile latency in milliseconds (nearest rank).
    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.latencies.len()) - 1;
        self.latencies[i].as_secs_f64() * 1000.0
    }
}

/// The smallest payload: the send time, as 16 hex digits.
pub(crate) const MIN_SIZE: usize = 16;

/// An ASCII payload of `size` bytes whose first 16 carry the send time (nanoseconds since
/// `start`, in hex).
pub(crate) fn payload(start: Instant, size: usize) -> Vec<u8> {
    let nanos = start.elapsed().as_nanos() as u64;
    let mut bytes = format!("{nanos:016x}").into_bytes();
    bytes.resize(size.max(MIN_SIZE), b'x');
    bytes
}

/// The latency of a received payload made by [`payload`].
pub(crate) fn latency(start: Instant, payload: &[u8]) -> Duration {
    let sent = payload
        .get(..MIN_SIZE)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .unwrap_or(0);
    start.elapsed().saturating_sub(Duration::from_nanos(sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_its_send_time() {
        let start = Instant::now() - Duration::from_millis(5);
        let p = payload(start, 20);
        assert_eq!(p.len(), 20);
        assert!(latency(start, &p) < Duration::from_secs(1));
        assert_eq!(payload(start, 3).len(), MIN_SIZE);
    }

    #[test]
    fn percentiles() {
        let s = Stats::new(
            Duration::from_secs(1),
            (1..=100).map(Duration::from_millis).collect(),
        );
        assert_eq!(s.percentile_ms(50.0).round(), 50.0);
        assert_eq!(s.percentile_ms(99.0).round(), 99.0);
        assert_eq!(s.throughput().round(), 100.0);
    }
}
