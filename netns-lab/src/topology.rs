//! Lab topologies: the YAML format, its validation, and the deterministic address plan.
//!
//! A topology names the lab, gives it an address block inside 198.18.0.0/15 (RFC 2544) and a VIP
//! inside 203.0.113.0/24 (TEST-NET-3), and lists its nodes. There is always exactly one router,
//! which is implicit; every node has one link to it (or shares one, see LANs below). Link `i`
//! (node `i` in YAML order) uses the `i`-th /24 of the block, with the router on `.1` and the
//! node on `.2`.
//!
//! A node's link may carry a `rate` (both directions, `tbf`) and impairments, each applied in
//! both directions of that link by a delay line ([`crate::delay_line`]):
//! - `delay`: one-way delay added in each direction, so a client and a participant that both
//!   have `delay: 10ms` see a 40 ms round trip between them (10 ms on each of the four
//!   crossings of a link);
//! - `jitter`: a uniform random extra delay in `[0, jitter]` per packet, without reordering: a
//!   packet never leaves before the one ahead of it in the same direction, as on a serial link;
//! - `loss`: an independent random drop probability per packet, in each direction.
//!
//! `delay` and `jitter` are at most [`Delay::MAX`] (10 s); `loss` is at least 0% and below
//! [`Loss::LIMIT_PERCENT`] (100%).
//!
//! Nodes may share one Ethernet segment instead: all nodes with the same `lan: <name>`
//! (`[a-z0-9-]`, at most [`MAX_LAN_NAME_LEN`] characters) sit on one switch, a bridge in the
//! router's namespace, so that link-local multicast and subnet broadcasts reach every member
//! while traffic to other nodes is routed (the router forwards no multicast). A LAN uses the
//! /24 of its first member's link (in YAML order): the router is `.1` on it and the members are
//! `.2`, `.3`, ... in YAML order. The other members' own links stay reserved and unused, so no
//! other node's addresses move. A LAN member may have a `rate` (on its own port of the switch)
//! but no `delay`, `jitter` or `loss`: delay lines are built per point-to-point link.
//!
//! This module never touches the system: it parses, checks and computes. Every error names the
//! field it is about (`nodes[2].rate`, `block`, ...).

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::impairment::Impairment;
use crate::units::{Delay, Loss, Rate};

/// The embedded default topology (`netns-lab/topologies/default.yaml`).
pub const DEFAULT_TOPOLOGY_YAML: &str = include_str!("../topologies/default.yaml");

/// Where every lab address must come from: 198.18.0.0/15, the RFC 2544 benchmarking range,
/// which no real network routes.
pub const LAB_RANGE: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 15);

/// Where the VIP must come from: 203.0.113.0/24, TEST-NET-3 (RFC 5737).
pub const VIP_RANGE: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(203, 0, 113, 0), 24);

/// Longest lab name. The name prefixes every namespace of the lab (`<lab>-<node>`); short names
/// keep `ip netns list` and the `status` table readable.
pub const MAX_LAB_NAME_LEN: usize = 12;

/// Longest node name, for the same reason as [`MAX_LAB_NAME_LEN`].
pub const MAX_NODE_NAME_LEN: usize = 24;

/// Prefix length of one link's subnet: every link is a /24.
pub const LINK_PREFIX_LEN: u8 = 24;

/// Longest LAN name, for the same reason as [`MAX_LAB_NAME_LEN`]. The bridge's interface name
/// does not derive from it (see [`lan_bridge`]).
pub const MAX_LAN_NAME_LEN: usize = 12;

/// Most members of one LAN: the hosts `.2` to `.254` of its /24 (`.1` is the router, `.255`
/// the broadcast address).
pub const MAX_LAN_MEMBERS: usize = 253;

/// Name of the implicit router node (its namespace is `<lab>-router`).
pub const ROUTER_NAME: &str = "router";

/// Name of a node's interface towards the router, inside the node's namespace.
pub const NODE_IFACE: &str = "eth0";

/// What ends the name of a delay line's namespace, `<lab>-<node>_dl`. Node names never hold
/// `_`, so no node's namespace can look like a delay line's.
pub const DELAY_LINE_SUFFIX: &str = "_dl";

/// Why a topology was rejected.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The topology file could not be read.
    #[error("cannot read topology {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
    /// The YAML is malformed, has an unknown field or a value of the wrong type. The message
    /// starts with the path of the field (`nodes[0].rate: ...`).
    #[error("invalid topology: {error}")]
    Parse {
        /// The parser's error, which names the field and its line.
        error: serde_yaml::Error,
    },
    /// A field parsed but its value is not allowed.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field, like `nodes[3].name`.
        field: String,
        /// Why it is not allowed.
        reason: String,
    },
}

impl TopologyError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TopologyError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// What a node does in the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The implicit router every node links to. Never listed in a topology file.
    Router,
    /// The main server: owns the VIP's route, hands connections to participants.
    Main,
    /// A participant server: holds the VIP on `lo` and answers clients directly.
    Participant,
    /// A client: talks to the VIP.
    Client,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Router => "router",
            Role::Main => "main",
            Role::Participant => "participant",
            Role::Client => "client",
        })
    }
}

/// Where a node is in the world; the lab's GeoIP database maps the node's subnet here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// City name in English.
    pub city: String,
    /// ISO 3166-1 alpha-2 country code (`DE`).
    pub country: String,
    /// Latitude in degrees, -90..=90.
    pub lat: f64,
    /// Longitude in degrees, -180..=180.
    pub lon: f64,
}

/// One node as written in the topology.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Node name, `[a-z0-9-]`; the namespace is `<lab>-<name>`.
    pub name: String,
    /// What the node does. `router` is not allowed here: the router is implicit.
    pub role: Role,
    /// Where the node is, for the lab's GeoIP database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// Rate limit on both directions of the node's link (`tbf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// One-way delay added in each direction of the node's link (by its delay line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    /// Upper bound of a uniform random extra delay per packet, in each direction of the
    /// node's link; packets are never reordered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Delay>,
    /// Independent random drop probability per packet, in each direction of the node's link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<Loss>,
    /// The LAN segment the node is on, `[a-z0-9-]`: every node with the same `lan` shares one
    /// /24 behind one bridge on the router. `None`: the node has a link of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan: Option<String>,
}

impl NodeSpec {
    /// What the node's delay line does; `None` when the link has no delay, jitter or loss and
    /// so needs no delay line.
    pub fn impairment(&self) -> Option<Impairment> {
        Impairment::from_fields(self.delay, self.jitter, self.loss)
    }
}

/// One LAN segment of a topology: the nodes with the same `lan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lan {
    /// The LAN name from the topology.
    pub name: String,
    /// The bridge's interface name in the router's namespace, see [`lan_bridge`].
    pub bridge: String,
    /// The members' link indexes (their positions in the node list), in YAML order. The first
    /// one's link subnet is the LAN's subnet.
    pub members: Vec<usize>,
}

/// A parsed, validated lab topology.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    name: String,
    block: Ipv4Net,
    vip: Ipv4Addr,
    nodes: Vec<NodeSpec>,
}

/// A node with its resolved namespace and addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Node name from the topology (`router` for the router).
    pub name: String,
    /// What the node does.
    pub role: Role,
    /// Network namespace name, `<lab>-<node>`.
    pub ns: String,
    /// The node's address on its link. For the router: its address on link 0.
    pub addr: Ipv4Addr,
    /// The router's address on the node's link, the node's default gateway. For the router
    /// itself this equals `addr`.
    pub gateway: Ipv4Addr,
    /// The node's link subnet (a /24). For the router: the whole lab block.
    pub subnet: Ipv4Net,
    /// Where the node is, if the topology says.
    pub location: Option<Location>,
    /// The node's interface towards the router: `eth0`. The router has `veth<i>` towards
    /// node `i`; its entry names the interface that holds its address on link 0: `veth0`, or
    /// the LAN's bridge when node 0 is on a LAN.
    pub iface: String,
}

/// Checks a lab name: `[a-z0-9-]`, starts with a letter or digit, at most
/// [`MAX_LAB_NAME_LEN`] characters.
pub fn validate_lab_name(name: &str) -> Result<(), TopologyError> {
    check_name("name", name, MAX_LAB_NAME_LEN)
}

fn check_name(field: &str, name: &str, max_len: usize) -> Result<(), TopologyError> {
    if name.is_empty() || name.len() > max_len {
        return Err(TopologyError::invalid(
            field,
            format!("`{name}` must be 1 to {max_len} characters long"),
        ));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !name.chars().all(allowed) || name.starts_with('-') {
        return Err(TopologyError::invalid(
            field,
            format!("`{name}` may only contain a-z, 0-9 and '-', and must not start with '-'"),
        ));
    }
    Ok(())
}

impl Topology {
    /// The embedded default topology: a main in Amsterdam, participants in Frankfurt, Ashburn
    /// and Singapore, and a client near each participant.
    pub fn default_topology() -> Topology {
        match Topology::from_yaml(DEFAULT_TOPOLOGY_YAML) {
            Ok(topology) => topology,
            // The file is part of the crate and a unit test parses it.
            Err(error) => panic!("embedded default topology is invalid: {error}"),
        }
    }

    /// Parses and validates a topology.
    pub fn from_yaml(text: &str) -> Result<Topology, TopologyError> {
        let topology: Topology =
            serde_yaml::from_str(text).map_err(|error| TopologyError::Parse { error })?;
        topology.validate()?;
        Ok(topology)
    }

    /// Reads, parses and validates a topology file.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|error| TopologyError::Read {
            path: path.to_owned(),
            error,
        })?;
        Topology::from_yaml(&text)
    }

    /// The same topology under another lab name (namespaces, state dir and pin dir follow the
    /// name). Checked by [`Topology::validate`] and [`crate::Lab::up`].
    #[must_use]
    pub fn with_name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    /// The same topology on another address block, so that labs can run side by side.
    /// Checked by [`Topology::validate`] and [`crate::Lab::up`].
    #[must_use]
    pub fn with_block(mut self, block: Ipv4Net) -> Self {
        self.block = block;
        self
    }

    /// The lab name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address block the links are cut from.
    pub fn block(&self) -> Ipv4Net {
        self.block
    }

    /// The VIP.
    pub fn vip(&self) -> Ipv4Addr {
        self.vip
    }

    /// The nodes as written, in link order (the router is not among them).
    pub fn node_specs(&self) -> &[NodeSpec] {
        &self.nodes
    }

    /// Checks every rule a topology must follow; the error names the offending field.
    pub fn validate(&self) -> Result<(), TopologyError> {
        validate_lab_name(&self.name)?;
        self.validate_addresses()?;
        let mut names = HashSet::new();
        let mut mains = 0;
        for (i, node) in self.nodes.iter().enumerate() {
            let field = |name: &str| format!("nodes[{i}].{name}");
            check_name(&field("name"), &node.name, MAX_NODE_NAME_LEN)?;
            if node.name == ROUTER_NAME {
                return Err(TopologyError::invalid(
                    field("name"),
                    "`router` is the name of the implicit router",
                ));
            }
            if !names.insert(node.name.as_str()) {
                return Err(TopologyError::invalid(
                    field("name"),
                    format!("duplicate node name `{}`", node.name),
                ));
            }
            match node.role {
                Role::Router => {
                    return Err(TopologyError::invalid(
                        field("role"),
                        "the router is implicit; do not list it as a node",
                    ))
                }
                Role::Main => mains += 1,
                Role::Participant | Role::Client => {}
            }
            if let Some(location) = &node.location {
                validate_location(&field("location"), location)?;
            }
            if let Some(lan) = &node.lan {
                check_name(&field("lan"), lan, MAX_LAN_NAME_LEN)?;
                let impairments = [
                    ("delay", node.delay.is_some()),
                    ("jitter", node.jitter.is_some()),
                    ("loss", node.loss.is_some()),
                ];
                if let Some((name, _)) = impairments.iter().find(|(_, set)| *set) {
                    return Err(TopologyError::invalid(
                        field(name),
                        "a LAN member cannot have a delay line yet",
                    ));
                }
            }
        }
        for lan in self.lans() {
            if lan.members.len() > MAX_LAN_MEMBERS {
                let i = lan.members[MAX_LAN_MEMBERS];
                return Err(TopologyError::invalid(
                    format!("nodes[{i}].lan"),
                    format!(
                        "LAN `{}` would have {} members, but its /{LINK_PREFIX_LEN} holds \
                         {MAX_LAN_MEMBERS}",
                        lan.name,
                        lan.members.len()
                    ),
                ));
            }
        }
        if mains != 1 {
            return Err(TopologyError::invalid(
                "nodes",
                format!("exactly one node must have role `main`, found {mains}"),
            ));
        }
        Ok(())
    }

    fn validate_addresses(&self) -> Result<(), TopologyError> {
        let block = self.block;
        if !LAB_RANGE.contains(&block) {
            return Err(TopologyError::invalid(
                "block",
                format!("{block} is not inside {LAB_RANGE}"),
            ));
        }
        if block.prefix_len() > LINK_PREFIX_LEN {
            return Err(TopologyError::invalid(
                "block",
                format!("{block} is smaller than one /{LINK_PREFIX_LEN} link"),
            ));
        }
        if block.addr() != block.network() {
            return Err(TopologyError::invalid(
                "block",
                format!("{block} has host bits set; did you mean {}?", block.trunc()),
            ));
        }
        let links = 1usize << (LINK_PREFIX_LEN - block.prefix_len());
        if self.nodes.len() > links {
            return Err(TopologyError::invalid(
                "nodes",
                format!(
                    "{} nodes need {} links but {block} holds {links}",
                    self.nodes.len(),
                    self.nodes.len()
                ),
            ));
        }
        let vip = self.vip;
        if !VIP_RANGE.contains(&vip) {
            return Err(TopologyError::invalid(
                "vip",
                format!("{vip} is not inside {VIP_RANGE}"),
            ));
        }
        if vip == VIP_RANGE.network() || vip == VIP_RANGE.broadcast() {
            return Err(TopologyError::invalid(
                "vip",
                format!("{vip} is the network or broadcast address of {VIP_RANGE}"),
            ));
        }
        Ok(())
    }

    /// The subnet of link `index`: the `index`-th /24 of the block.
    fn link_subnet(&self, index: usize) -> Result<Ipv4Net, TopologyError> {
        let base = u32::from(self.block.network());
        let subnet = u32::try_from(index)
            .ok()
            .and_then(|index| index.checked_mul(1 << (32 - LINK_PREFIX_LEN)))
            .and_then(|offset| base.checked_add(offset))
            .map(Ipv4Addr::from)
            .and_then(|addr| Ipv4Net::new(addr, LINK_PREFIX_LEN).ok())
            .filter(|subnet| self.block.contains(subnet));
        subnet.ok_or_else(|| {
            TopologyError::invalid(
                "nodes",
                format!("link {index} does not fit in {}", self.block),
            )
        })
    }

    /// The LAN segments, in order of their first member; the `k`-th has bridge `lan<k>`.
    pub fn lans(&self) -> Vec<Lan> {
        let mut lans: Vec<Lan> = Vec::new();
        for (i, spec) in self.nodes.iter().enumerate() {
            let Some(name) = &spec.lan else {
                continue;
            };
            match lans.iter_mut().find(|lan| lan.name == *name) {
                Some(lan) => lan.members.push(i),
                None => lans.push(Lan {
                    name: name.clone(),
                    bridge: lan_bridge(lans.len()),
                    members: vec![i],
                }),
            }
        }
        lans
    }

    /// Namespace name of a node: `<lab>-<node>`.
    pub fn namespace(&self, node: &str) -> String {
        format!("{}-{node}", self.name)
    }

    /// Namespace name of the delay line on a node's link: `<lab>-<node>_dl`.
    pub fn delay_line_namespace(&self, node: &str) -> String {
        format!("{}-{node}{DELAY_LINE_SUFFIX}", self.name)
    }

    /// The namespaces of the delay lines this topology needs, one per impaired link, in link
    /// order.
    pub fn delay_line_namespaces(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|spec| spec.impairment().is_some())
            .map(|spec| self.delay_line_namespace(&spec.name))
            .collect()
    }

    /// Validates the topology and computes every node's namespace and addresses; the router
    /// comes first, then the nodes in link order.
    pub fn resolve(&self) -> Result<Vec<Node>, TopologyError> {
        self.validate()?;
        let lans = self.lans();
        // Node 0's link is always link 0, whether or not node 0 is on a LAN.
        let first = self.link_subnet(0)?;
        let router_iface_0 = lans
            .iter()
            .find(|lan| lan.members.first() == Some(&0))
            .map_or_else(|| router_iface(0), |lan| lan.bridge.clone());
        let mut nodes = vec![Node {
            name: ROUTER_NAME.to_owned(),
            role: Role::Router,
            ns: self.namespace(ROUTER_NAME),
            addr: host(first, 1),
            gateway: host(first, 1),
            subnet: self.block,
            location: None,
            iface: router_iface_0,
        }];
        for (i, spec) in self.nodes.iter().enumerate() {
            // On a LAN: the first member's link, host 2 + position in the LAN.
            let (link, position) = lans
                .iter()
                .find_map(|lan| {
                    let position = lan.members.iter().position(|&member| member == i)?;
                    Some((lan.members[0], position))
                })
                .unwrap_or((i, 0));
            let subnet = self.link_subnet(link)?;
            let host_number = u8::try_from(position + 2)
                .ok()
                .filter(|&n| n < u8::MAX)
                .ok_or_else(|| {
                    // `validate` limits LANs to MAX_LAN_MEMBERS, so this is not reached.
                    TopologyError::invalid(format!("nodes[{i}].lan"), "too many LAN members")
                })?;
            nodes.push(Node {
                name: spec.name.clone(),
                role: spec.role,
                ns: self.namespace(&spec.name),
                addr: host(subnet, host_number),
                gateway: host(subnet, 1),
                subnet,
                location: spec.location.clone(),
                iface: NODE_IFACE.to_owned(),
            });
        }
        Ok(nodes)
    }
}

/// The router's interface towards link `index`.
pub fn router_iface(index: usize) -> String {
    format!("veth{index}")
}

/// The bridge of the `k`-th LAN (in order of first appearance) in the router's namespace:
/// `lan<k>`. Not derived from the LAN name, so it always fits an interface name (at most 15
/// characters): a lab has at most 512 links and so at most 512 LANs.
pub fn lan_bridge(k: usize) -> String {
    format!("lan{k}")
}

/// Host number `n` inside a /24.
fn host(subnet: Ipv4Net, n: u8) -> Ipv4Addr {
    let [a, b, c, _] = subnet.network().octets();
    Ipv4Addr::new(a, b, c, n)
}

fn validate_location(field: &str, location: &Location) -> Result<(), TopologyError> {
    if location.city.trim().is_empty() {
        return Err(TopologyError::invalid(
            format!("{field}.city"),
            "must not be empty",
        ));
    }
    let country = &location.country;
    if country.len() != 2 || !country.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(TopologyError::invalid(
            format!("{field}.country"),
            format!("`{country}` is not an ISO 3166-1 alpha-2 code like `DE`"),
        ));
    }
    if !(-90.0..=90.0).contains(&location.lat) {
        return Err(TopologyError::invalid(
            format!("{field}.lat"),
            format!("{} is not between -90 and 90", location.lat),
        ));
    }
    if !(-180.0..=180.0).contains(&location.lon) {
        return Err(TopologyError::invalid(
            format!("{field}.lon"),
            format!("{} is not between -180 and 180", location.lon),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A small valid topology to break one field at a time.
    const SMALL: &str = "\
name: t
block: 198.18.8.0/22
vip: 203.0.113.10
nodes:
  - { name: main, role: main }
  - { name: p1, role: participant, location: { city: Frankfurt, country: DE, lat: 50.11, lon: 8.68 } }
";

    fn error_of(yaml: &str) -> String {
        match Topology::from_yaml(yaml) {
            Ok(topology) => panic!("accepted: {topology:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn small_topology_parses() {
        let topology = Topology::from_yaml(SMALL).expect("valid");
        assert_eq!(topology.name(), "t");
        assert_eq!(topology.node_specs().len(), 2);
    }

    #[test]
    fn default_topology_parses() {
        let topology = Topology::from_yaml(DEFAULT_TOPOLOGY_YAML).expect("default parses");
        assert_eq!(topology.name(), "baton");
        assert_eq!(
            topology.block(),
            "198.18.0.0/21".parse::<Ipv4Net>().expect("net")
        );
        assert_eq!(topology.vip(), Ipv4Addr::new(203, 0, 113, 10));
        let names: Vec<_> = topology
            .node_specs()
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["main", "p-fra", "p-iad", "p-sin", "c-fra", "c-iad", "c-sin"]
        );
        let main = &topology.node_specs()[0];
        assert_eq!(main.rate.map(Rate::bits_per_second), Some(10_000_000_000));
    }

    #[test]
    fn the_commented_example_link_in_the_default_topology_is_valid() {
        let example: String = DEFAULT_TOPOLOGY_YAML
            .lines()
            .skip_while(|line| !line.contains("For example"))
            .skip(1)
            .map_while(|line| line.strip_prefix("#   "))
            // Indented to sit in SMALL's node list.
            .map(|line| format!("  {line}\n"))
            .collect();
        assert!(example.starts_with("  - name: c-far\n"), "{example}");
        let topology =
            Topology::from_yaml(&format!("{SMALL}{example}")).expect("the example parses");
        let spec = &topology.node_specs()[2];
        assert_eq!(spec.rate.map(Rate::bits_per_second), Some(100_000_000));
        let impairment = spec.impairment().expect("impaired");
        assert_eq!(impairment.delay, Duration::from_millis(80));
        assert_eq!(impairment.jitter, Duration::from_millis(5));
        assert!((impairment.loss - 0.001).abs() < 1e-12);
    }

    #[test]
    fn default_addresses_are_fixed() {
        let nodes = Topology::default_topology().resolve().expect("resolves");
        let table: Vec<_> = nodes
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.role,
                    n.ns.as_str(),
                    n.addr.to_string(),
                    n.gateway.to_string(),
                    n.subnet.to_string(),
                    n.iface.as_str(),
                )
            })
            .collect();
        let expected = [
            (
                "router",
                Role::Router,
                "baton-router",
                "198.18.0.1",
                "198.18.0.1",
                "198.18.0.0/21",
                "veth0",
            ),
            (
                "main",
                Role::Main,
                "baton-main",
                "198.18.0.2",
                "198.18.0.1",
                "198.18.0.0/24",
                "eth0",
            ),
            (
                "p-fra",
                Role::Participant,
                "baton-p-fra",
                "198.18.1.2",
                "198.18.1.1",
                "198.18.1.0/24",
                "eth0",
            ),
            (
                "p-iad",
                Role::Participant,
                "baton-p-iad",
                "198.18.2.2",
                "198.18.2.1",
                "198.18.2.0/24",
                "eth0",
            ),
            (
                "p-sin",
                Role::Participant,
                "baton-p-sin",
                "198.18.3.2",
                "198.18.3.1",
                "198.18.3.0/24",
                "eth0",
            ),
            (
                "c-fra",
                Role::Client,
                "baton-c-fra",
                "198.18.4.2",
                "198.18.4.1",
                "198.18.4.0/24",
                "eth0",
            ),
            (
                "c-iad",
                Role::Client,
                "baton-c-iad",
                "198.18.5.2",
                "198.18.5.1",
                "198.18.5.0/24",
                "eth0",
            ),
            (
                "c-sin",
                Role::Client,
                "baton-c-sin",
                "198.18.6.2",
                "198.18.6.1",
                "198.18.6.0/24",
                "eth0",
            ),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|&(name, role, ns, addr, gw, subnet, iface)| {
                (
                    name,
                    role,
                    ns,
                    addr.to_owned(),
                    gw.to_owned(),
                    subnet.to_owned(),
                    iface,
                )
            })
            .collect();
        assert_eq!(table, expected);
    }

    #[test]
    fn name_and_block_overrides_move_everything() {
        let block = "198.19.248.0/21".parse().expect("net");
        let nodes = Topology::default_topology()
            .with_name("labt1")
            .with_block(block)
            .resolve()
            .expect("resolves");
        let c_sin = nodes.iter().find(|n| n.name == "c-sin").expect("c-sin");
        assert_eq!(c_sin.ns, "labt1-c-sin");
        assert_eq!(c_sin.addr, Ipv4Addr::new(198, 19, 254, 2));
        assert_eq!(c_sin.gateway, Ipv4Addr::new(198, 19, 254, 1));
    }

    #[test]
    fn unknown_field_is_named() {
        let error = error_of(&SMALL.replace("role: main }", "role: main, colour: red }"));
        assert!(
            error.contains("nodes[0]") && error.contains("unknown field `colour`"),
            "{error}"
        );
        let error = error_of(&format!("{SMALL}extra: 1\n"));
        assert!(error.contains("unknown field `extra`"), "{error}");
        let error = error_of(&SMALL.replace("lon: 8.68", "lon: 8.68, alt: 3"));
        assert!(
            error.contains("nodes[1].location") && error.contains("`alt`"),
            "{error}"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let error = error_of(&SMALL.replace("vip: 203.0.113.10", "vip: [1]"));
        assert!(error.contains("vip"), "{error}");
        let error = error_of(&SMALL.replace("lat: 50.11", "lat: north"));
        assert!(error.contains("nodes[1].location.lat"), "{error}");
        let error = error_of(&SMALL.replace("role: main }", "role: main, rate: fast }"));
        assert!(
            error.contains("nodes[0].rate") && error.contains("invalid rate"),
            "{error}"
        );
        let error = error_of(&SMALL.replace("role: participant", "role: server"));
        assert!(error.contains("nodes[1].role"), "{error}");
    }

    #[test]
    fn addresses_outside_the_allowed_ranges_are_rejected() {
        let cases = [
            (
                "block: 198.18.8.0/22",
                "block: 10.0.0.0/22",
                "block: 10.0.0.0/22 is not inside 198.18.0.0/15",
            ),
            (
                "block: 198.18.8.0/22",
                "block: 198.16.0.0/14",
                "block: 198.16.0.0/14 is not inside",
            ),
            (
                "block: 198.18.8.0/22",
                "block: 198.18.8.1/22",
                "block: 198.18.8.1/22 has host bits set",
            ),
            (
                "block: 198.18.8.0/22",
                "block: 198.18.8.0/25",
                "block: 198.18.8.0/25 is smaller",
            ),
            (
                "block: 198.18.8.0/22",
                "block: 198.18.8.0/24",
                "nodes: 2 nodes need 2 links",
            ),
            (
                "vip: 203.0.113.10",
                "vip: 192.0.2.10",
                "vip: 192.0.2.10 is not inside 203.0.113.0/24",
            ),
            (
                "vip: 203.0.113.10",
                "vip: 198.18.8.10",
                "vip: 198.18.8.10 is not inside",
            ),
            (
                "vip: 203.0.113.10",
                "vip: 203.0.113.255",
                "vip: 203.0.113.255 is the network or broadcast",
            ),
        ];
        for (from, to, expected) in cases {
            let error = error_of(&SMALL.replace(from, to));
            assert!(error.starts_with(expected), "{to}: {error}");
        }
    }

    #[test]
    fn node_rules_name_the_field() {
        let cases = [
            (
                "name: p1",
                "name: main",
                "nodes[1].name: duplicate node name `main`",
            ),
            (
                "name: p1",
                "name: router",
                "nodes[1].name: `router` is the name",
            ),
            (
                "name: p1",
                "name: P1",
                "nodes[1].name: `P1` may only contain",
            ),
            (
                "name: t\n",
                "name: much-too-long-name\n",
                "name: `much-too-long-name` must be 1 to 12",
            ),
            (
                "role: participant",
                "role: router",
                "nodes[1].role: the router is implicit",
            ),
            (
                "role: participant",
                "role: main",
                "nodes: exactly one node must have role `main`, found 2",
            ),
            (
                "country: DE",
                "country: Germany",
                "nodes[1].location.country: `Germany`",
            ),
            (
                "lat: 50.11",
                "lat: 91",
                "nodes[1].location.lat: 91 is not between",
            ),
            (
                "lon: 8.68",
                "lon: -181",
                "nodes[1].location.lon: -181 is not between",
            ),
        ];
        for (from, to, expected) in cases {
            let error = error_of(&SMALL.replacen(from, to, 1));
            assert!(error.starts_with(expected), "{to}: {error}");
        }
    }

    #[test]
    fn zero_impairments_need_no_delay_line() {
        let zero = SMALL.replace(
            "role: main }",
            "role: main, delay: 0ms, jitter: 0, loss: 0% }",
        );
        let topology = Topology::from_yaml(&zero).expect("zero impairments are accepted");
        assert_eq!(
            topology.node_specs()[0].delay.map(Delay::is_zero),
            Some(true)
        );
        assert_eq!(topology.node_specs()[0].impairment(), None);
        assert_eq!(topology.delay_line_namespaces(), Vec::<String>::new());
        assert_eq!(
            Topology::default_topology().delay_line_namespaces(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn impairments_are_applied_per_link() {
        let yaml = SMALL
            .replace(
                "role: main }",
                "role: main, delay: 20ms, jitter: 250us, loss: 0.5% }",
            )
            .replace("role: participant,", "role: participant, loss: 3,");
        let topology = Topology::from_yaml(&yaml).expect("impairments parse");
        let main = topology.node_specs()[0]
            .impairment()
            .expect("main impaired");
        assert_eq!(main.delay, Duration::from_millis(20));
        assert_eq!(main.jitter, Duration::from_micros(250));
        assert!((main.loss - 0.005).abs() < 1e-12, "{}", main.loss);
        let p1 = topology.node_specs()[1].impairment().expect("p1 impaired");
        assert_eq!((p1.delay, p1.jitter), (Duration::ZERO, Duration::ZERO));
        assert!((p1.loss - 0.03).abs() < 1e-12, "{}", p1.loss);
        assert_eq!(topology.delay_line_namespaces(), ["t-main_dl", "t-p1_dl"]);
        // Jitter alone is an impairment too.
        let jitter =
            Topology::from_yaml(&SMALL.replace("role: main }", "role: main, jitter: 1ms }"))
                .expect("jitter parses");
        assert_eq!(jitter.delay_line_namespaces(), ["t-main_dl"]);
        // The impairments survive the state file.
        let json = serde_json::to_string(&topology).expect("serializes");
        let back: Topology = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, topology);
    }

    #[test]
    fn bad_impairments_name_the_field() {
        let cases = [
            ("delay: 11s", "nodes[0].delay", "must be at most 10s"),
            (
                "delay: 20",
                "nodes[0].delay",
                "expected a unit: us, ms or s",
            ),
            ("delay: -5ms", "nodes[0].delay", "expected a number"),
            ("jitter: 10.5s", "nodes[0].jitter", "must be at most 10s"),
            ("jitter: fast", "nodes[0].jitter", "expected a number"),
            (
                "loss: 100%",
                "nodes[0].loss",
                "must be at least 0% and below 100%",
            ),
            (
                "loss: 250",
                "nodes[0].loss",
                "must be at least 0% and below 100%",
            ),
            (
                "loss: -1%",
                "nodes[0].loss",
                "must be at least 0% and below 100%",
            ),
            ("loss: lots", "nodes[0].loss", "expected a percentage"),
        ];
        for (field, path, reason) in cases {
            let error =
                error_of(&SMALL.replace("role: main }", &format!("role: main, {field} }}")));
            assert!(
                error.contains(path) && error.contains(reason),
                "{field}: {error}"
            );
        }
        // The third node's loss is `nodes[2].loss`.
        let yaml = format!("{SMALL}  - {{ name: c1, role: client, loss: 100% }}\n");
        let error = error_of(&yaml);
        assert!(
            error.contains("nodes[2].loss: invalid loss `100%`"),
            "{error}"
        );
    }

    #[test]
    fn overrides_are_validated() {
        let topology = Topology::default_topology().with_name("Bad Name");
        let error = topology.resolve().map(|_| ()).map_err(|e| e.to_string());
        assert!(error.is_err_and(|e| e.starts_with("name: `Bad Name`")));
        let topology =
            Topology::default_topology().with_block("198.18.0.0/23".parse().expect("net"));
        let error = topology.resolve().map(|_| ()).map_err(|e| e.to_string());
        assert!(error.is_err_and(|e| e.starts_with("nodes: 7 nodes need 7 links")));
    }

    /// A mixed topology: LAN `office` with a, b and d, LAN `lab` with e alone, and c and the
    /// main on links of their own.
    const MIXED: &str = "\
name: t
block: 198.18.8.0/21
vip: 203.0.113.10
nodes:
  - { name: a, role: client, lan: office, rate: 10mbit }
  - { name: main, role: main }
  - { name: b, role: client, lan: office }
  - { name: c, role: participant }
  - { name: d, role: client, lan: office }
  - { name: e, role: client, lan: lab }
";

    /// `(name, addr, gateway, subnet, iface)` of every resolved node.
    fn plan(topology: &Topology) -> Vec<(String, String, String, String, String)> {
        topology
            .resolve()
            .expect("resolves")
            .into_iter()
            .map(|n| {
                (
                    n.name,
                    n.addr.to_string(),
                    n.gateway.to_string(),
                    n.subnet.to_string(),
                    n.iface,
                )
            })
            .collect()
    }

    fn plan_of(
        rows: &[(&str, &str, &str, &str, &str)],
    ) -> Vec<(String, String, String, String, String)> {
        rows.iter()
            .map(|&(name, addr, gateway, subnet, iface)| {
                (
                    name.to_owned(),
                    addr.to_owned(),
                    gateway.to_owned(),
                    subnet.to_owned(),
                    iface.to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn lan_members_share_their_first_members_subnet() {
        let topology = Topology::from_yaml(MIXED).expect("parses");
        assert_eq!(
            topology.lans(),
            [
                Lan {
                    name: "office".to_owned(),
                    bridge: "lan0".to_owned(),
                    members: vec![0, 2, 4],
                },
                Lan {
                    name: "lab".to_owned(),
                    bridge: "lan1".to_owned(),
                    members: vec![5],
                },
            ]
        );
        // Links 2 (b) and 4 (d), 198.18.10.0/24 and 198.18.12.0/24, stay unused.
        let expected = plan_of(&[
            (
                "router",
                "198.18.8.1",
                "198.18.8.1",
                "198.18.8.0/21",
                "lan0",
            ),
            ("a", "198.18.8.2", "198.18.8.1", "198.18.8.0/24", "eth0"),
            ("main", "198.18.9.2", "198.18.9.1", "198.18.9.0/24", "eth0"),
            ("b", "198.18.8.3", "198.18.8.1", "198.18.8.0/24", "eth0"),
            ("c", "198.18.11.2", "198.18.11.1", "198.18.11.0/24", "eth0"),
            ("d", "198.18.8.4", "198.18.8.1", "198.18.8.0/24", "eth0"),
            ("e", "198.18.13.2", "198.18.13.1", "198.18.13.0/24", "eth0"),
        ]);
        assert_eq!(plan(&topology), expected);
        // Without the `lan` fields the same nodes get the usual one link each.
        let plain =
            Topology::from_yaml(&MIXED.replace(", lan: office", "").replace(", lan: lab", ""))
                .expect("parses");
        assert_eq!(plain.lans(), []);
        let expected = plan_of(&[
            (
                "router",
                "198.18.8.1",
                "198.18.8.1",
                "198.18.8.0/21",
                "veth0",
            ),
            ("a", "198.18.8.2", "198.18.8.1", "198.18.8.0/24", "eth0"),
            ("main", "198.18.9.2", "198.18.9.1", "198.18.9.0/24", "eth0"),
            ("b", "198.18.10.2", "198.18.10.1", "198.18.10.0/24", "eth0"),
            ("c", "198.18.11.2", "198.18.11.1", "198.18.11.0/24", "eth0"),
            ("d", "198.18.12.2", "198.18.12.1", "198.18.12.0/24", "eth0"),
            ("e", "198.18.13.2", "198.18.13.1", "198.18.13.0/24", "eth0"),
        ]);
        assert_eq!(plan(&plain), expected);
        // A LAN member keeps its rate, and the LAN survives the state file.
        assert_eq!(
            topology.node_specs()[0].rate.map(Rate::bits_per_second),
            Some(10_000_000)
        );
        let json = serde_json::to_string(&topology).expect("serializes");
        let back: Topology = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, topology);
        assert!(!serde_json::to_string(&plain)
            .expect("serializes")
            .contains("lan"));
    }

    #[test]
    fn the_lan_example_topology_parses_and_resolves() {
        let yaml = include_str!("../topologies/lan.yaml");
        let topology = Topology::from_yaml(yaml).expect("lan.yaml parses");
        assert_eq!(topology.name(), "baton-lan");
        assert_eq!(topology.delay_line_namespaces(), Vec::<String>::new());
        let lans = topology.lans();
        assert_eq!(lans.len(), 1);
        assert_eq!(
            (lans[0].name.as_str(), lans[0].bridge.as_str()),
            ("office", "lan0")
        );
        assert_eq!(lans[0].members, [1, 2, 3, 4, 5, 6]);
        let expected = plan_of(&[
            (
                "router",
                "198.18.8.1",
                "198.18.8.1",
                "198.18.8.0/21",
                "veth0",
            ),
            ("main", "198.18.8.2", "198.18.8.1", "198.18.8.0/24", "eth0"),
            ("peer1", "198.18.9.2", "198.18.9.1", "198.18.9.0/24", "eth0"),
            ("peer2", "198.18.9.3", "198.18.9.1", "198.18.9.0/24", "eth0"),
            ("peer3", "198.18.9.4", "198.18.9.1", "198.18.9.0/24", "eth0"),
            ("peer4", "198.18.9.5", "198.18.9.1", "198.18.9.0/24", "eth0"),
            ("peer5", "198.18.9.6", "198.18.9.1", "198.18.9.0/24", "eth0"),
            ("peer6", "198.18.9.7", "198.18.9.1", "198.18.9.0/24", "eth0"),
        ]);
        assert_eq!(plan(&topology), expected);
        let roles: Vec<_> = topology.node_specs().iter().map(|n| n.role).collect();
        assert_eq!(
            roles,
            [
                Role::Main,
                Role::Client,
                Role::Client,
                Role::Client,
                Role::Client,
                Role::Client,
                Role::Client
            ]
        );
    }

    #[test]
    fn the_default_topology_documents_lans() {
        let documented = DEFAULT_TOPOLOGY_YAML
            .lines()
            .any(|line| line.starts_with("#   lan: office "));
        assert!(documented, "default.yaml explains `lan`");
        assert!(DEFAULT_TOPOLOGY_YAML.contains(&format!("at most {MAX_LAN_NAME_LEN} characters")));
    }

    #[test]
    fn lan_rules_name_the_field() {
        let cases = [
            ("lan: Office", "nodes[1].lan: `Office` may only contain"),
            ("lan: -office", "nodes[1].lan: `-office` may only contain"),
            ("lan: o_1", "nodes[1].lan: `o_1` may only contain"),
            (
                "lan: much-too-long",
                "nodes[1].lan: `much-too-long` must be 1 to 12",
            ),
            ("lan: ''", "nodes[1].lan: `` must be 1 to 12"),
            (
                "lan: office, delay: 10ms",
                "nodes[1].delay: a LAN member cannot have a delay line yet",
            ),
            (
                "lan: office, jitter: 1ms",
                "nodes[1].jitter: a LAN member cannot have a delay line yet",
            ),
            (
                "lan: office, loss: 1%",
                "nodes[1].loss: a LAN member cannot have a delay line yet",
            ),
            (
                "lan: office, delay: 0ms",
                "nodes[1].delay: a LAN member cannot have a delay line yet",
            ),
            ("lan: [office]", "nodes[1].lan: invalid type"),
        ];
        for (fields, expected) in cases {
            let error = error_of(&SMALL.replace(
                "role: participant,",
                &format!("role: participant, {fields},"),
            ));
            assert!(error.contains(expected), "{fields}: {error}");
        }
        // Delay on the fourth node of a LAN names that node.
        let yaml = format!(
            "{SMALL}  - {{ name: c1, role: client, lan: office }}\n  - {{ name: c2, role: client, lan: office, delay: 5ms }}\n"
        );
        let error = error_of(&yaml);
        assert_eq!(
            error,
            "nodes[3].delay: a LAN member cannot have a delay line yet"
        );
        // Delay on a node that is not on a LAN is still fine, and so is a one-member LAN,
        // the main's included.
        let yaml = format!("{SMALL}  - {{ name: c1, role: client, delay: 5ms }}\n")
            .replace("role: main }", "role: main, lan: solo }");
        let topology = Topology::from_yaml(&yaml).expect("valid");
        assert_eq!(topology.lans()[0].members, [0]);
        assert_eq!(topology.delay_line_namespaces(), ["t-c1_dl"]);
    }

    #[test]
    fn a_lan_holds_at_most_one_subnet_of_hosts() {
        let node = |i: usize| format!("  - {{ name: c{i}, role: client, lan: big }}\n");
        let yaml = |members: usize| {
            let mut yaml = "name: t\nblock: 198.18.0.0/15\nvip: 203.0.113.10\nnodes:\n  - { name: main, role: main }\n".to_owned();
            yaml.extend((0..members).map(node));
            yaml
        };
        let nodes = Topology::from_yaml(&yaml(MAX_LAN_MEMBERS))
            .expect("a full LAN is fine")
            .resolve()
            .expect("resolves");
        let last = nodes.last().expect("nodes");
        assert_eq!(
            (last.name.as_str(), last.addr),
            ("c252", Ipv4Addr::new(198, 18, 1, 254))
        );
        let error = error_of(&yaml(MAX_LAN_MEMBERS + 1));
        assert_eq!(
            error,
            "nodes[254].lan: LAN `big` would have 254 members, but its /24 holds 253"
        );
    }

    #[test]
    fn topology_round_trips_through_json() {
        let topology = Topology::default_topology();
        let json = serde_json::to_string(&topology).expect("serializes");
        let back: Topology = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, topology);
    }
}
