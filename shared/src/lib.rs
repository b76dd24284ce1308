//! Baton's protocol and domain code: wire formats, the TCP handoff record, HTTP head parsing and
//! response planning, geo math, participant selection, and mirror publication (RFC 6249 `Link`
//! values, RFC 5854 Metalink documents), and the peer cache's package list and discovery format.
//!
//! Everything here is deterministic and free of I/O. This crate must never open a socket or a
//! file, read a clock, spawn a task or depend on an async runtime: the binaries are thin shells
//! that do the I/O and call into it, passing in whatever time or state a function needs.

pub mod config;
pub mod control;
pub mod digest;
#[cfg(test)]
mod fuzz;
pub mod geo;
pub mod handoff;
pub mod health;
pub mod http;
pub mod link;
pub mod metalink;
pub mod mirror;
pub mod moves;
pub mod peer;
pub mod select;

mod wire;
