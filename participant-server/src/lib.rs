//! The Baton participant: restores handed-off connections, serves them from its cache, fills the
//! cache from other participants (the peer cache) or the main's origin store, and serves the
//! same objects as a plain HTTP mirror.
//!
//! It never answers on the VIP except through a restored socket: it holds the VIP on lo only so
//! that restored sockets can use it as their source address.

pub mod agent;
pub mod cache;
pub mod checks;
pub mod guard;
pub mod metrics;
pub mod origin;
pub mod peers;
