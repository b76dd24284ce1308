//! Start-up checks of what direct server return needs on this host.
//!
//! The participant answers clients with the VIP as source, so the VIP must be a local address
//! (on lo), and the host must neither answer ARP for the VIP nor use it as an ARP source
//! (`arp_ignore=1`, `arp_announce=2`), or it would pull the VIP's traffic away from the main.
//! These checks only read; they never change the host.

use std::net::{Ipv4Addr, SocketAddrV4};

/// Why the host is not ready.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("the VIP {vip} is not a local address here; add it to lo (ip addr add {vip}/32 dev lo)")]
    VipMissing { vip: Ipv4Addr },
    #[error("net.ipv4.conf.{scope}.{name} is {value}, needs {want} (sysctl -w net.ipv4.conf.{scope}.{name}={want})")]
    Sysctl { scope: &'static str, name: &'static str, value: String, want: u32 },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Checks the VIP is local and the ARP sysctls are set (either `all` or the interface may carry
/// the value; the kernel uses the larger one).
pub fn check_host(vip: Ipv4Addr, iface: &str) -> Result<(), HostError> {
    // Binding to an address succeeds only if it is local (or nonlocal binds are enabled, which
    // we do not rely on).
    if std::net::TcpListener::bind(SocketAddrV4::new(vip, 0)).is_err() {
        return Err(HostError::VipMissing { vip });
    }
    for (name, want) in [("arp_ignore", 1u32), ("arp_announce", 2u32)] {
        let all = read_sysctl("all", name)?;
        let dev = read_sysctl(iface, name).unwrap_or(0);
        if all.max(dev) < want {
            return Err(HostError::Sysctl { scope: "all", name, value: all.to_string(), want });
        }
    }
    Ok(())
}

fn read_sysctl(scope: &str, name: &'static str) -> Result<u32, HostError> {
    let path = format!("/proc/sys/net/ipv4/conf/{scope}/{name}");
    let text = std::fs::read_to_string(&path).map_err(|source| HostError::Read { path: path.clone(), source })?;
    text.trim().parse().map_err(|_| HostError::Read {
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a number"),
    })
}
