//! The Baton main server: VIP listener, participant selection, TCP_REPAIR handoff orchestration,
//! the participant control channel and the admin API.
//!
//! Policy (parsing, selection, wire formats) lives in `baton_shared`; this crate wires it to
//! sockets, the data plane and the registry. It never serves a handed-off connection: once the
//! flow is FORWARD, the participant owns it.

pub mod admin;
pub mod control;
pub mod metrics;
pub mod mirror;
pub mod moves;
pub mod origin;
pub mod packages;
pub mod persist;
pub mod probe;
pub mod registry;
pub mod state;
pub mod vip;

use std::path::Path;
use std::time::Duration;

/// `CAP_NET_ADMIN`'s bit in the capability sets.
const CAP_NET_ADMIN: u32 = 12;
/// Objects the start-up digest pass looks at, at most (it only warms a cache).
const PREWARM_MAX_OBJECTS: usize = 10_000;

/// Fails with a clear message when the process lacks CAP_NET_ADMIN (needed by TCP_REPAIR).
pub fn check_net_admin() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| anyhow::anyhow!("cannot read CapEff from /proc/self/status"))?;
    if eff & (1 << CAP_NET_ADMIN) == 0 {
        anyhow::bail!("CAP_NET_ADMIN is missing (run as root or grant it with setcap)");
    }
    Ok(())
}

/// Fails with a clear message unless IPv4 forwarding is on for `iface`: the data plane routes the
/// packets it forwards to participants with the kernel's FIB, which refuses to route for an
/// interface without forwarding, so every handed-off flow would stall.
pub fn check_forwarding(iface: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/forwarding");
    let value = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?;
    if value.trim() != "1" {
        anyhow::bail!(
            "IPv4 forwarding is off on {iface}; the data plane cannot route handed-off packets to participants \
             (sysctl -w net.ipv4.conf.all.forwarding=1)"
        );
    }
    Ok(())
}

/// Lets the main's health probes through the VIP path: the participant's answers come back to
/// the main's own address with the VIP, a local address, as their source, which the kernel
/// drops as martian unless `accept_local` is on for the interface, and strict reverse-path
/// filtering drops too (loose filtering, 2, passes). Says what it changed.
pub fn prepare_probe_path(iface: &str) -> anyhow::Result<()> {
    let set = |key: &str, dev: &str, value: &str| -> anyhow::Result<()> {
        let path = format!("/proc/sys/net/ipv4/conf/{dev}/{key}");
        let old = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?;
        if old.trim() != value {
            std::fs::write(&path, value).map_err(|e| anyhow::anyhow!("writing {path}: {e}"))?;
            tracing::info!(setting = %path, from = old.trim(), to = value, "changed for the health probes' return path");
        }
        Ok(())
    };
    set("accept_local", iface, "1")?;
    for dev in ["all", iface] {
        let path = format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter");
        if std::fs::read_to_string(&path).map(|v| v.trim() == "1").unwrap_or(false) {
            set("rp_filter", dev, "2")?;
        }
    }
    Ok(())
}

/// The kernel's SYN-flood defence for the VIP listener: with `tcp_syncookies` off, a flood of
/// spoofed SYNs fills the listener's SYN queue (its backlog), every entry waits about a minute of
/// SYN-ACK retransmissions for an ACK that never comes, and meanwhile every real client's SYN is
/// dropped. With cookies (1: once the queue is full) the kernel answers the overflow statelessly
/// and only a client that completes the handshake gets a socket, so a flood never reaches
/// `accept`, the handoff or the flow table. The setting belongs to the main's network namespace;
/// a 0 is turned into 1, and the change is logged.
pub fn ensure_syncookies() -> anyhow::Result<()> {
    let path = "/proc/sys/net/ipv4/tcp_syncookies";
    let old = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?;
    if old.trim() == "0" {
        std::fs::write(path, "1").map_err(|e| anyhow::anyhow!("writing {path}: {e}"))?;
        tracing::info!(setting = path, from = 0, to = 1, "changed so that a SYN flood cannot fill the VIP listener's queue");
    }
    Ok(())
}

/// How long ago the data plane last saw a packet of this flow; a flow it has not seen a packet
/// of yet (a participant still filling its cache, say) is idle only since it was recorded.
pub fn idle_for(v: &baton_ebpf::FlowValue, recorded: std::time::Instant) -> Duration {
    if v.last_seen_ns() == 0 {
        return recorded.elapsed();
    }
    Duration::from_nanos(baton_ebpf::monotonic_now_ns().saturating_sub(v.last_seen_ns()))
}

/// Relative paths of the regular files below `root` (bounded, symlinks not followed).
pub fn list_objects(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for entry in rd.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            let path = entry.path();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                if let Some(rel) = path.strip_prefix(root).ok().and_then(|p| p.to_str()) {
                    out.push(rel.to_owned());
                }
                if out.len() >= PREWARM_MAX_OBJECTS {
                    return out;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_not_seen_yet_is_idle_only_since_it_was_recorded() {
        let v = baton_ebpf::FlowValue::forward(std::net::Ipv4Addr::new(198, 18, 1, 2));
        assert_eq!(v.last_seen_ns(), 0);
        assert!(idle_for(&v, std::time::Instant::now()) < Duration::from_secs(1));
        let long_ago = std::time::Instant::now() - Duration::from_secs(5);
        assert!(idle_for(&v, long_ago) >= Duration::from_secs(5));
    }
}
