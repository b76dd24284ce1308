//! Watching every server's link: its current rate, and when it is to be dropped.
//!
//! A link is dropped when it delivers nothing for `stall` while it has work, or when its rate
//! stays below `slow_fraction` × the median rate of all busy links *and* below `slow_floor` for
//! `grace`. Time is passed in; nothing here reads a clock or touches a socket.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// When a link is dropped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchRules {
    pub slow_fraction: f64,
    /// Bytes per second.
    pub slow_floor: f64,
    pub grace: Duration,
    pub stall: Duration,
    /// The span a rate is measured over.
    pub window: Duration,
}

impl Default for WatchRules {
    fn default() -> Self {
        Self {
            // A link at a quarter of the median costs more in waiting than it adds.
            slow_fraction: 0.25,
            // 1 MiB/s: below it a link is slow on any network worth splitting a download over.
            slow_floor: 1024.0 * 1024.0,
            grace: Duration::from_secs(3),
            stall: Duration::from_secs(5),
            window: Duration::from_secs(2),
        }
    }
}

/// Most samples kept per link; at one sample per tick this is far more than a window.
const MAX_SAMPLES: usize = 256;

/// One server's link.
#[derive(Debug, Clone, Default)]
pub struct Link {
    /// (time, total bytes) while busy.
    samples: VecDeque<(Instant, u64)>,
    busy_since: Option<Instant>,
    last_bytes: Option<(Instant, u64)>,
    slow_since: Option<Instant>,
    /// The last rate measured over a whole window, bytes per second.
    pub rate: Option<f64>,
}

/// Why a link is dropped.
#[derive(Debug, Clone, PartialEq)]
pub enum Drop {
    Stalled(Duration),
    Slow { rate: f64, median: f64 },
}

impl std::fmt::Display for Drop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drop::Stalled(d) => write!(f, "stalled: no bytes for {:.1} s", d.as_secs_f64()),
            Drop::Slow { rate, median } => {
                write!(
                    f,
                    "slow: {} against a median of {}",
                    human_rate(*rate),
                    human_rate(*median)
                )
            }
        }
    }
}

/// A rate in bytes per second as text.
pub fn human_rate(bps: f64) -> String {
    if bps >= 1024.0 * 1024.0 {
        format!("{:.1} MiB/s", bps / 1024.0 / 1024.0)
    } else {
        format!("{:.1} KiB/s", bps / 1024.0)
    }
}

impl Link {
    /// Records the link's byte total at `now`; `busy` says whether it has work.
    pub fn sample(&mut self, now: Instant, total: u64, busy: bool) {
        if !busy {
            self.samples.clear();
            self.busy_since = None;
            self.slow_since = None;
            self.last_bytes = None;
            return;
        }
        if self.busy_since.is_none() {
            self.busy_since = Some(now);
            self.last_bytes = Some((now, total));
        }
        if self.last_bytes.is_some_and(|(_, t)| total > t) {
            self.last_bytes = Some((now, total));
        }
        self.samples.push_back((now, total));
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// The rate over the last `window`, once the link has been busy that long.
    fn windowed(&self, now: Instant, window: Duration) -> Option<f64> {
        let &(last_t, last_b) = self.samples.back()?;
        if now.duration_since(self.busy_since?) < window {
            return None;
        }
        let &(t0, b0) = self
            .samples
            .iter()
            .find(|(t, _)| now.duration_since(*t) <= window)
            .unwrap_or(self.samples.front()?);
        let dt = last_t.duration_since(t0).as_secs_f64();
        (dt > 0.0).then(|| (last_b - b0) as f64 / dt)
    }
}

/// Updates every link's rate and returns the links to drop (by index).
pub fn judge(links: &mut [&mut Link], now: Instant, rules: &WatchRules) -> Vec<(usize, Drop)> {
    let mut rates = Vec::new();
    for l in links.iter_mut() {
        let r = l.windowed(now, rules.window);
        if r.is_some() {
            l.rate = r;
        }
        if let Some(r) = r {
            rates.push(r);
        }
    }
    rates.sort_by(f64::total_cmp);
    let median = match rates.len() {
        0 => None,
        n if n % 2 == 1 => Some(rates[n / 2]),
        n => Some((rates[n / 2 - 1] + rates[n / 2]) / 2.0),
    };
    let mut out = Vec::new();
    for (i, l) in links.iter_mut().enumerate() {
        let Some(busy_since) = l.busy_since else { continue };
        let quiet_since = l.last_bytes.map_or(busy_since, |(t, _)| t);
        let quiet = now.duration_since(quiet_since);
        if quiet >= rules.stall {
            out.push((i, Drop::Stalled(quiet)));
            continue;
        }
        let (Some(rate), Some(median)) = (l.windowed(now, rules.window), median) else {
            l.slow_since = None;
            continue;
        };
        if rate < rules.slow_fraction * median && rate < rules.slow_floor {
            let since = *l.slow_since.get_or_insert(now);
            if now.duration_since(since) >= rules.grace {
                out.push((i, Drop::Slow { rate, median }));
            }
        } else {
            l.slow_since = None;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;

    /// Three links at the given rates (bytes/s), sampled every 100 ms for `secs`.
    fn run(rates: [f64; 3], secs: f64, rules: &WatchRules) -> (Vec<Link>, Vec<(f64, usize, Drop)>) {
        let t0 = Instant::now();
        let mut links = vec![Link::default(), Link::default(), Link::default()];
        let mut drops = Vec::new();
        let mut dropped = [false; 3];
        let steps = (secs * 10.0) as u64;
        for k in 0..=steps {
            let t = k as f64 / 10.0;
            let now = t0 + Duration::from_millis(k * 100);
            for (i, l) in links.iter_mut().enumerate() {
                l.sample(now, (rates[i] * t) as u64, !dropped[i]);
            }
            let mut refs: Vec<&mut Link> = links.iter_mut().collect();
            for (i, d) in judge(&mut refs, now, rules) {
                if !dropped[i] {
                    dropped[i] = true;
                    drops.push((t, i, d));
                }
            }
        }
        (links, drops)
    }

    #[test]
    fn a_crawling_link_is_dropped_after_the_grace_period() {
        let rules = WatchRules::default();
        let (_, drops) = run([10.0 * MIB, 8.0 * MIB, 30.0 * 1024.0], 10.0, &rules);
        assert_eq!(drops.len(), 1);
        let (t, i, d) = &drops[0];
        assert_eq!(*i, 2);
        // Measurable after one window (2 s), dropped a grace period (3 s) later.
        assert!((5.0..=5.05).contains(t), "dropped at {t}");
        assert!(matches!(d, Drop::Slow { median, .. } if (*median - 8.0 * MIB).abs() < 0.1 * MIB));
    }

    #[test]
    fn a_link_above_the_floor_or_near_the_median_stays() {
        let rules = WatchRules::default();
        // A quarter of the median but above the floor.
        assert!(run([40.0 * MIB, 40.0 * MIB, 2.0 * MIB], 10.0, &rules).1.is_empty());
        // Below the floor, but so is everyone.
        assert!(run([0.5 * MIB, 0.4 * MIB, 0.3 * MIB], 10.0, &rules).1.is_empty());
    }

    #[test]
    fn a_silent_link_is_dropped_as_stalled() {
        let rules = WatchRules::default();
        let (_, drops) = run([10.0 * MIB, 10.0 * MIB, 0.0], 10.0, &rules);
        assert_eq!(drops.len(), 1);
        assert_eq!(drops[0].1, 2);
        assert!(matches!(drops[0].2, Drop::Stalled(d) if d == Duration::from_secs(5)));
        assert!((drops[0].0 - 5.0).abs() < 0.01);
    }

    #[test]
    fn rates_are_measured_over_the_window() {
        let rules = WatchRules::default();
        let (links, _) = run([10.0 * MIB, 5.0 * MIB, 1.0 * MIB], 4.0, &rules);
        let r: Vec<f64> = links.iter().map(|l| l.rate.unwrap_or(0.0) / MIB).collect();
        assert!(
            (r[0] - 10.0).abs() < 0.1 && (r[1] - 5.0).abs() < 0.1 && (r[2] - 1.0).abs() < 0.1,
            "{r:?}"
        );
    }
}
