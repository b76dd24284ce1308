//! `cargo xtask bench`: BPF program cost (BPF_PROG_TEST_RUN) and forwarding rate (xdp, tc, userspace).

use crate::report::Report;

/// Runs the benchmark and adds its comparisons to `report`.
pub fn run(report: &mut Report) -> anyhow::Result<()> {
    let _ = report;
    anyhow::bail!("not measured yet")
}
