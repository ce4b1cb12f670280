//! Request sizing, and the waits buffers must outlast, from what the link has shown.

use std::collections::VecDeque;
use std::time::Duration;

/// Sizes requests from what the link has shown: big enough that round trips do not dominate
/// (a quarter second of transfer, or four round trips' worth), within 64 KiB to 4 MiB.
#[derive(Debug, Clone)]
pub(crate) struct RequestSizer {
    /// Smoothed bytes per second, round trip included.
    throughput: f64,
    /// Smallest recent request latency: the round trip.
    rtt: Duration,
    samples: u32,
}

impl RequestSizer {
    pub(crate) const MIN: u64 = 64 * 1024;
    pub(crate) const MAX: u64 = 4 * 1024 * 1024;

    pub(crate) fn new() -> RequestSizer {
        RequestSizer { throughput: 0.0, rtt: Duration::ZERO, samples: 0 }
    }

    pub(crate) fn record(&mut self, bytes: u64, elapsed: Duration) {
        if self.samples == 0 || elapsed < self.rtt {
            self.rtt = elapsed;
        } else {
            // Let the floor drift up slowly so a route change is noticed.
            self.rtt += (elapsed - self.rtt) / 64;
        }
        // Whole-request rate: conservative on far links, where the round trip is part of what
        // a bigger request amortises.
        let rate = bytes as f64 / elapsed.max(Duration::from_micros(50)).as_secs_f64();
        self.throughput = if self.samples == 0 { rate } else { self.throughput * 0.7 + rate * 0.3 };
        self.samples = self.samples.saturating_add(1);
    }

    pub(crate) fn request_bytes(&self) -> u64 {
        if self.samples == 0 {
            return Self::MIN * 4;
        }
        let span = (self.rtt * 4).max(Duration::from_millis(250));
        let bytes = self.throughput * span.as_secs_f64();
        (bytes as u64).clamp(Self::MIN, Self::MAX)
    }

    pub(crate) fn throughput(&self) -> f64 {
        self.throughput
    }

    pub(crate) fn rtt(&self) -> Duration {
        self.rtt
    }
}

/// The longest of the last few waits on the link (reads, index walks that read).
#[derive(Debug, Default)]
pub(crate) struct RecentWaits {
    recent: VecDeque<Duration>,
}

impl RecentWaits {
    const KEPT: usize = 16;

    pub(crate) fn note(&mut self, wait: Duration) {
        if self.recent.len() == Self::KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(wait);
    }

    pub(crate) fn longest(&self) -> Duration {
        self.recent.iter().copied().max().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_size_grows_with_throughput_and_stays_bounded() {
        let mut sizer = RequestSizer::new();
        for _ in 0..10 {
            sizer.record(1024 * 1024, Duration::from_millis(11));
        }
        assert!(sizer.request_bytes() >= 2 * 1024 * 1024, "{}", sizer.request_bytes());
        // 10 ms away, 128 KB/s: a quarter second of transfer is below the floor.
        let mut slow = RequestSizer::new();
        slow.record(1024, Duration::from_millis(10));
        for _ in 0..10 {
            slow.record(64 * 1024, Duration::from_millis(510));
        }
        assert_eq!(slow.request_bytes(), RequestSizer::MIN);
        // 500 ms away at the same rate: requests grow to cover four round trips.
        let mut far = RequestSizer::new();
        for _ in 0..10 {
            far.record(128 * 1024, Duration::from_millis(1000));
        }
        assert!(far.request_bytes() >= 256 * 1024, "{}", far.request_bytes());
        assert!(sizer.request_bytes() <= RequestSizer::MAX);
    }
}
