//! `cargo xtask bench`: the handoff latency broken into its steps.

use crate::report::Report;

/// Runs the benchmark and adds its comparisons to `report`.
pub fn run(report: &mut Report) -> anyhow::Result<()> {
    let _ = report;
    anyhow::bail!("not measured yet")
}
