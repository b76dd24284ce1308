//! The side-by-side benchmark report: every figure is a pair measured in the same run (Baton's
//! side and its reference: the floor, the ceiling or the conventional alternative), so the ratio
//! holds on a noisy machine even when the absolute numbers move.
//!
//! `cargo xtask bench all` collects [`Comparison`]s from every benchmark into one [`Report`] and
//! renders it as `results/<date>.md`, `results/<date>.svg` and the README's table. Nothing here
//! measures anything.

/// One measured value and what it is.
#[derive(Clone, Debug)]
pub struct Measured {
    /// What was measured, e.g. "handoff (xdp)", "nginx reverse proxy", "direct".
    pub label: String,
    /// The value in the comparison's unit.
    pub value: f64,
}

impl Measured {
    pub fn new(label: impl Into<String>, value: f64) -> Self {
        Self { label: label.into(), value }
    }
}

/// What the project promises about a comparison, if anything.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// `subject / reference >= x`.
    RatioAtLeast(f64),
    /// `subject / reference <= x`.
    RatioAtMost(f64),
    /// `subject - reference <= x`, in the comparison's unit.
    DifferenceAtMost(f64),
}

/// Baton's figure next to its reference, measured side by side in one run.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// The group in the report, e.g. "BPF program cost", "Goodput".
    pub section: String,
    /// The row, e.g. "FORWARD packet", "16 x 256 MiB".
    pub what: String,
    /// Baton's side.
    pub subject: Measured,
    /// The other side (floor, ceiling or alternative).
    pub reference: Measured,
    /// Unit of both values, e.g. "ns/packet", "MB/s", "req/s", "us", "CPU s/GiB".
    pub unit: String,
    /// Whether a larger value is better (goodput, rate) or worse (cost, latency).
    pub higher_is_better: bool,
    pub target: Option<Target>,
    /// How it was measured (rounds, median of what), shown under the table.
    pub note: String,
}

impl Comparison {
    /// `subject / reference` (infinite when the reference is zero).
    pub fn ratio(&self) -> f64 {
        if self.reference.value == 0.0 {
            f64::INFINITY
        } else {
            self.subject.value / self.reference.value
        }
    }

    /// Whether the target is met; `None` without a target.
    pub fn met(&self) -> Option<bool> {
        self.target.map(|t| match t {
            Target::RatioAtLeast(x) => self.ratio() >= x,
            Target::RatioAtMost(x) => self.ratio() <= x,
            Target::DifferenceAtMost(x) => self.subject.value - self.reference.value <= x,
        })
    }
}

/// Everything one `bench all` run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub rows: Vec<Comparison>,
    /// Free-form lines about the run (machine, kernel, versions of nginx and wrk, errors of a
    /// benchmark that could not run).
    pub context: Vec<String>,
}

impl Report {
    pub fn push(&mut self, c: Comparison) {
        self.rows.push(c);
    }
}
