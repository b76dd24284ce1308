//! The nftables table that keeps the main's kernel from seeing handed-off flows in the
//! userspace data plane: a set of flow keys and one rule in `prerouting` (before conntrack and
//! the TCP stack) that drops their packets. AF_PACKET sockets see a frame before netfilter
//! does, so the forwarder still gets every one of them.
//!
//! The table outlives `baton-main` (as the BPF data plane's pinned maps do): while the process
//! restarts, handed-off flows are held (dropped, the client retransmits), never reset.
//!
//! Changes go through `nft -f -` so that each one is one atomic transaction. This module never
//! touches another table.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::DataplaneError;
use crate::types::{FlowKey, FLOW_MAP_MAX_ENTRIES};

/// The table (family `ip`).
pub const TABLE: &str = "baton_userspace";
/// The set of flow keys (client address . client port . VIP address . VIP port).
const SET: &str = "flows";
/// Hook priority of the drop rule: before conntrack (-200) and raw (-300), so a held flow
/// leaves no conntrack entry behind.
const PRIORITY: i32 = -310;

fn element(key: &FlowKey) -> String {
    let (c, v) = (key.client(), key.vip());
    format!("{} . {} . {} . {}", c.ip(), c.port(), v.ip(), v.port())
}

/// Runs one nft script as a transaction.
fn run(script: &str) -> Result<(), DataplaneError> {
    let fail = |detail: String| DataplaneError::Nft { detail };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("running nft (Debian package nftables): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| fail(format!("writing to nft: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(format!("waiting for nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(format!("nft refused `{}`: {}", script.trim(), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Creates the table, set and rule if missing (keeping the elements of an earlier run) and
/// adds `keys`.
pub fn ensure(keys: &[FlowKey]) -> Result<(), DataplaneError> {
    let mut script = format!(
        "add table ip {TABLE}\n\
         add set ip {TABLE} {SET} {{ type ipv4_addr . inet_service . ipv4_addr . inet_service; size {FLOW_MAP_MAX_ENTRIES}; }}\n\
         add chain ip {TABLE} prerouting {{ type filter hook prerouting priority {PRIORITY}; policy accept; }}\n\
         flush chain ip {TABLE} prerouting\n\
         add rule ip {TABLE} prerouting ip protocol tcp ip saddr . tcp sport . ip daddr . tcp dport @{SET} counter drop\n"
    );
    for chunk in keys.chunks(256) {
        let list: Vec<String> = chunk.iter().map(element).collect();
        script.push_str(&format!("add element ip {TABLE} {SET} {{ {} }}\n", list.join(", ")));
    }
    run(&script)
}

/// Holds a flow: from now on the kernel never sees its packets.
pub fn hold(key: &FlowKey) -> Result<(), DataplaneError> {
    run(&format!("add element ip {TABLE} {SET} {{ {} }}\n", element(key)))
}

/// Releases a flow to the kernel again (absent is fine).
pub fn release(key: &FlowKey) -> Result<(), DataplaneError> {
    // Adding first makes the delete valid whether or not the element was there.
    run(&format!("add element ip {TABLE} {SET} {{ {e} }}\ndelete element ip {TABLE} {SET} {{ {e} }}\n", e = element(key)))
}

/// Removes the whole table: every held flow reaches the kernel again (which resets it).
pub fn remove_table() -> Result<(), DataplaneError> {
    run(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"))
}

/// The keys in the set (of an earlier run).
pub fn held() -> Result<Vec<FlowKey>, DataplaneError> {
    let out = Command::new("nft")
        .args(["list", "set", "ip", TABLE, SET])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| DataplaneError::Nft { detail: format!("running nft: {e}") })?;
    if !out.status.success() {
        return Ok(Vec::new());
    }
    Ok(parse_elements(&String::from_utf8_lossy(&out.stdout)))
}

/// The flow keys in `nft list set` output (`a.b.c.d . port . e.f.g.h . port` items).
fn parse_elements(text: &str) -> Vec<FlowKey> {
    let Some(start) = text.find("elements = {") else { return Vec::new() };
    let body = &text[start + "elements = {".len()..];
    let body = &body[..body.find('}').unwrap_or(body.len())];
    body.split(',')
        .filter_map(|item| {
            let parts: Vec<&str> = item.split(" . ").map(str::trim).collect();
            let [c, cp, v, vp] = parts.as_slice() else { return None };
            Some(FlowKey::new(
                std::net::SocketAddrV4::new(c.parse().ok()?, cp.parse().ok()?),
                std::net::SocketAddrV4::new(v.parse().ok()?, vp.parse().ok()?),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    #[test]
    fn elements_of_a_listed_set_are_read_back() {
        let text = "table ip baton_userspace {\n\tset flows {\n\t\ttype ipv4_addr . inet_service . ipv4_addr . inet_service\n\t\tsize 65536\n\t\telements = { 198.18.1.1 . 4000 . 203.0.113.10 . 80,\n\t\t\t     198.18.1.2 . 65535 . 203.0.113.10 . 8080 }\n\t}\n}\n";
        let keys = parse_elements(text);
        assert_eq!(
            keys,
            vec![
                FlowKey::new(SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 4000), SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80)),
                FlowKey::new(SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 65535), SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 8080)),
            ]
        );
        assert_eq!(element(&keys[0]), "198.18.1.1 . 4000 . 203.0.113.10 . 80");
        assert!(parse_elements("table ip baton_userspace {\n\tset flows {\n\t}\n}\n").is_empty());
    }
}
