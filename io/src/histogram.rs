//! Fixed-bucket latency histograms, rendered in the Prometheus text format (0.0.4) as a
//! `histogram` family: `_bucket{le=…}` (cumulative), `_sum` and `_count` per series.
//!
//! The buckets are fixed at compile time on a microsecond scale ([`BUCKET_BOUNDS_US`]), so an
//! observation is one comparison walk and two relaxed atomic adds: cheap enough for the
//! handoff's hot path, with no lock and no allocation. This module never reads a clock; callers
//! pass the measured [`Duration`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the finite buckets, in microseconds. A handoff's steps range from a few
/// microseconds (selection, a dump's dozen system calls) to tens of milliseconds (a control
/// round trip across regions, a cache fill), so the buckets run 1-2.5-5 per decade from 10 µs
/// to 100 ms; everything slower lands in `+Inf`.
pub const BUCKET_BOUNDS_US: [u64; 13] = [10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000];

/// Buckets including `+Inf`.
const BUCKETS: usize = BUCKET_BOUNDS_US.len() + 1;

/// One latency distribution. Counts are kept per bucket (not cumulative) and summed when
/// rendered, so `_count` always equals the `+Inf` bucket even while observations race a scrape.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    /// Sum of all observations in nanoseconds (wraps after 584 years of summed latency).
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram; `const` so a process-wide `static` can hold one.
    pub const fn new() -> Self {
        Self { buckets: [const { AtomicU64::new(0) }; BUCKETS], sum_ns: AtomicU64::new(0) }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_BOUNDS_US.iter().position(|&us| ns <= us.saturating_mul(1_000)).unwrap_or(BUCKETS - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Cumulative counts per bucket, `+Inf` last.
    fn cumulative(&self) -> [u64; BUCKETS] {
        let mut out = [0u64; BUCKETS];
        let mut total = 0u64;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            total += b.load(Ordering::Relaxed);
            *o = total;
        }
        out
    }
}

/// The `le` label of a bound: exact decimal seconds (`10` µs is `0.00001`), never a float
/// rounding artefact.
fn seconds_text(us: u64) -> String {
    let text = format!("{}.{:06}", us / 1_000_000, us % 1_000_000);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Writes `{k="v",…}` with the values escaped as the text format requires; `extra` is appended
/// last (the `le` label), nothing at all when there are no labels.
fn write_labels(out: &mut String, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().copied().chain(extra).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let _ = write!(out, "{k}=\"{v}\"");
    }
    out.push('}');
}

/// Appends one histogram family to `out`: its `# HELP` and `# TYPE` lines, then for each series
/// (its labels and its histogram) the cumulative buckets, the sum in seconds and the count.
pub fn render_family(out: &mut String, name: &str, help: &str, series: &[(&[(&str, &str)], &Histogram)]) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (labels, h) in series {
        let cumulative = h.cumulative();
        for (i, n) in cumulative.iter().enumerate() {
            let le = BUCKET_BOUNDS_US.get(i).map_or_else(|| "+Inf".to_owned(), |&us| seconds_text(us));
            let _ = write!(out, "{name}_bucket");
            write_labels(out, labels, Some(("le", &le)));
            let _ = writeln!(out, " {n}");
        }
        let sum = h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = write!(out, "{name}_sum");
        write_labels(out, labels, None);
        let _ = writeln!(out, " {sum}");
        let _ = write!(out, "{name}_count");
        write_labels(out, labels, None);
        let _ = writeln!(out, " {}", cumulative[BUCKETS - 1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_exact_decimal_seconds() {
        let texts: Vec<String> = BUCKET_BOUNDS_US.iter().map(|&us| seconds_text(us)).collect();
        assert_eq!(
            texts,
            ["0.00001", "0.000025", "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1"]
        );
        assert_eq!(seconds_text(1_000_000), "1");
        assert_eq!(seconds_text(2_500_000), "2.5");
    }

    #[test]
    fn an_observation_on_a_bound_belongs_to_that_bucket() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_nanos(10_001));
        h.observe(Duration::from_secs(3));
        assert_eq!(h.cumulative(), [1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3]);
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn renders_a_labelled_family_exactly() {
        let dump = Histogram::new();
        for us in [8, 40, 102] {
            dump.observe(Duration::from_micros(us));
        }
        let total = Histogram::new();
        total.observe(Duration::from_millis(150));
        let mut out = String::new();
        render_family(
            &mut out,
            "baton_handoff_step_seconds",
            "Handoff steps.\nBy step.",
            &[(&[("step", "dump")], &dump), (&[("step", "to\"tal")], &total)],
        );
        let expected = "\
# HELP baton_handoff_step_seconds Handoff steps.\\nBy step.
# TYPE baton_handoff_step_seconds histogram
baton_handoff_step_seconds_bucket{step=\"dump\",le=\"0.00001\"} 1
baton_handoff_step_seconds_bucket{step=\"dump\",le=\"0.000025\"} 1
baton_handoff_step_seconds_bucket{step=\"dump\",le=\"0.00005\"} 2
baton_handoff_step_seconds_bucket{step=\"dump\",le=\"0.0001\"} 2
baton_handoff_step_seconds_bucket{step=\"dump\",le=\"0.00025\"} 3
baton_handoff_step_seconds_bucket{step=\"dump\",le=\"0.0005\"} 3
baton_handoff_step_seconds_bucket{step=\"dump\",le=\"0.001\"} 3
baton_handoff_step_seconds_bucket{step=\"dump\",le=\"0.0025\"} 3
baton_handoff_step_seconds_bucket{step=\"dump\",le=\"0.005\"} 3
baton_handoff_step_seconds_bucket{step=\"dump\",le=\"0.01\"} 3
baton_handoff_step_seconds_bucket{step=\"dump\",le=\"0.025\"} 3
baton_handoff_step_seconds_bucket{step=\"dump\",le=\"0.05\"} 3
baton_handoff_step_seconds_bucket{step=\"dump\",le=\"0.1\"} 3
baton_handoff_step_seconds_bucket{step=\"dump\",le=\"+Inf\"} 3
baton_handoff_step_seconds_sum{step=\"dump\"} 0.00015
baton_handoff_step_seconds_count{step=\"dump\"} 3
baton_handoff_step_seconds_bucket{step=\"to\\\"tal\",le=\"0.00001\"} 0
baton_handoff_step_seconds_bucket{step=\"to\\\"tal\",le=\"0.000025\"} 0
baton_handoff_step_seconds_bucket{step=\"to\\\"tal\",le=\"0.00005\"} 0
baton_handoff_step_seconds_bucket{step=\"to\\\"tal\",le=\"0.0001\"} 0
baton_handoff_step_seconds_bucket{step=\"to\\\"tal\",le=\"0.00025\"} 0
baton_handoff_step_seconds_bucket{step=\"to\\\"tal\",le=\"0.0005\"} 0
baton_handoff_step_seconds_bucket{step=\"to\\\"tal\",le=\"0.001\"} 0
baton_handoff_step_seconds_bucket{step=\"to\\\"tal\",le=\"0.0025\"} 0
baton_handoff_step_seconds_bucket{step=\"to\\\"tal\",le=\"0.005\"} 0
baton_handoff_step_seconds_bucket{step=\"to\\\"tal\",le=\"0.01\"} 0
baton_handoff_step_seconds_bucket{step=\"to\\\"tal\",le=\"0.025\"} 0
baton_handoff_step_seconds_bucket{step=\"to\\\"tal\",le=\"0.05\"} 0
baton_handoff_step_seconds_bucket{step=\"to\\\"tal\",le=\"0.1\"} 0
baton_handoff_step_seconds_bucket{step=\"to\\\"tal\",le=\"+Inf\"} 1
baton_handoff_step_seconds_sum{step=\"to\\\"tal\"} 0.15
baton_handoff_step_seconds_count{step=\"to\\\"tal\"} 1
";
        assert_eq!(out, expected);
    }

    #[test]
    fn an_unlabelled_series_has_only_le() {
        let h = Histogram::new();
        let mut out = String::new();
        render_family(&mut out, "x_seconds", "X.", &[(&[], &h)]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[2], "x_seconds_bucket{le=\"0.00001\"} 0");
        assert_eq!(lines[lines.len() - 2], "x_seconds_sum 0");
        assert_eq!(lines[lines.len() - 1], "x_seconds_count 0");
    }
}
