//! baton-fetch: one file from several servers at once.
//!
//! The library finds the servers that hold a file (the URLs given, RFC 6249 `Link:
//! rel=duplicate` headers, Metalink 4 documents), proves each is a duplicate of the primary,
//! ranks them, spreads byte ranges across them, drops links that fall behind and continues their
//! remainder from the exact byte elsewhere, resumes from a state file, and verifies the result.
//! It never leaves a file that failed verification under its final name.

pub mod discover;
pub mod fetch;
pub mod ftp;
pub mod http;
pub mod peer;
pub mod plan;
pub mod progress;
pub mod source;
pub mod state;
pub mod watch;

pub use fetch::{run, FetchError, Options, Summary};
