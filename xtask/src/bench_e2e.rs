//! `cargo xtask bench`: end-to-end goodput, main CPU per GiB and small-object rate/latency, Baton against nginx.

use crate::report::Report;

/// Runs the benchmark and adds its comparisons to `report`.
pub fn run(report: &mut Report) -> anyhow::Result<()> {
    let _ = report;
    anyhow::bail!("not measured yet")
}
