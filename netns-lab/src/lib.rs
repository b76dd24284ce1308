//! baton-lab: labs of Linux network namespaces for Baton, built from a YAML topology.
//!
//! A lab is one router namespace and one namespace per node (main, participants, clients), each
//! node linked to the router by a veth pair. A link with delay, jitter or loss runs through a
//! delay line of its own ([`delay_line`]), because the kernel has no `netem`. Clients reach the VIP through the router, which
//! routes it to the main; participants hold the VIP on `lo` for direct server return. The lab
//! writes its own GeoIP database so that Baton's geo choice works on lab addresses.
//!
//! Addresses come only from 198.18.0.0/15 and the VIP from 203.0.113.0/24; nothing a lab does
//! reaches outside the namespaces it made, and [`Lab::down`] removes all of them.
//!
//! ```no_run
//! use baton_lab::{Lab, Role, Topology};
//!
//! # fn main() -> Result<(), baton_lab::LabError> {
//! let topology = Topology::default_topology()
//!     .with_name("mytest")
//!     .with_block("198.19.0.0/21".parse().expect("a valid block"));
//! let lab = Lab::up(&topology)?;
//! let client = lab.nodes_with_role(Role::Client)[0].name.clone();
//! let output = lab.run(&client, &["ip", "-o", "addr", "show", "eth0"])?;
//! println!("{}", String::from_utf8_lossy(&output.stdout));
//! lab.down()
//! # }
//! ```

pub mod delay_line;
pub mod geoip;
pub mod impairment;
pub mod lab;
pub mod netns;
pub mod offload;
pub mod topology;
pub mod units;

pub use delay_line::DelayLine;
pub use impairment::Impairment;
pub use lab::{Lab, LabError};
pub use topology::{Location, Node, NodeSpec, Role, Topology, TopologyError};
pub use units::{Delay, Loss, Rate};
