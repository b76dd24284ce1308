//! I/O shared by Baton's binaries: TCP_REPAIR dump and restore, HTTP/1.1 file serving with
//! `sendfile(2)`, content stores, and control-channel framing over tokio.
//!
//! Protocol decisions (parsing, planning, wire formats) belong to `baton_shared`; this crate only
//! performs the system calls and socket I/O those decisions need.

pub mod cli;
pub mod control;
pub mod histogram;
pub mod http;
pub mod metrics;
pub mod peer;
pub mod repair;
pub mod session;
pub mod store;
pub mod tls;
