//! The main's package list over HTTP: the JSON documents, and the member's two calls (look a
//! package up; report that this member now has it).
//!
//! The main serves the list on its origin store's listener under [`PACKAGES_PREFIX`] (the
//! RFC 8615 well-known prefix; an origin object stored under that path is shadowed by the list):
//! - `GET  /.well-known/baton/packages` — every entry;
//! - `GET  /.well-known/baton/packages/<id>` — one entry, 404 when unknown;
//! - `POST /.well-known/baton/packages/<id>` with a [`Report`] — a peer has it; the location is
//!   learned with the generation rule.
//!
//! Nothing in the list is trusted for integrity: requesters verify every byte against the
//! origin's SHA-256, so a forged report costs at most one failed attempt.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use baton_shared::digest::sha256_hex;
use baton_shared::peer::{Entry, Package, PackageId};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the list lives on the main's origin listener.
pub const PACKAGES_PREFIX: &str = "/.well-known/baton/packages";
/// Largest list document or report read. An entry is a few hundred bytes; the whole list of a
/// big cluster fits comfortably.
pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;
/// Deadline of a list call; the list is an optimisation, so a slow main is skipped.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// One entry of the list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryDoc {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<LocationDoc>,
    #[serde(default)]
    pub alternates: Vec<AlternateDoc>,
}

/// The stored location and its generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocationDoc {
    pub addr: SocketAddrV4,
    pub generation: u32,
}

/// A kept alternate with its observed rate (bytes/s, 0 when not measured).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlternateDoc {
    pub addr: SocketAddrV4,
    pub rate: f64,
}

/// A peer's report that it has a package, served at `addr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub addr: SocketAddrV4,
    pub sha256: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
}

impl Report {
    /// The package the report describes, when its digests are well-formed.
    pub fn package(&self) -> Option<Package> {
        let sha256 = match PackageId::parse(&self.sha256).ok()? {
            PackageId::Sha256(d) => d,
            PackageId::Md5(_) => return None,
        };
        let md5 = match &self.md5 {
            None => None,
            Some(m) => match PackageId::parse(m).ok()? {
                PackageId::Md5(m) => Some(m),
                PackageId::Sha256(_) => return None,
            },
        };
        Some(Package { sha256, size: self.size, md5 })
    }
}

/// The document of one entry.
pub fn entry_doc(id: &PackageId, entry: &Entry) -> EntryDoc {
    EntryDoc {
        id: id.to_string(),
        sha256: entry.package.map(|p| sha256_hex(&p.sha256)),
        size: entry.package.map(|p| p.size),
        location: entry.location.as_ref().map(|l| LocationDoc { addr: l.addr, generation: l.generation }),
        alternates: entry.alternates.iter().map(|a| AlternateDoc { addr: a.addr, rate: a.rate }).collect(),
    }
}

/// Peers the main lists for `id`: its location first, then alternates. Empty when the main has
/// none, cannot be reached or answers nonsense (the list is only a hint).
pub async fn lookup(main: SocketAddr, id: &PackageId) -> Vec<SocketAddrV4> {
    let target = format!("{PACKAGES_PREFIX}/{id}");
    match tokio::time::timeout(CALL_TIMEOUT, call(main, "GET", &target, None)).await {
        Ok(Ok((200, body))) => match serde_json::from_slice::<EntryDoc>(&body) {
            Ok(doc) => doc.location.map(|l| l.addr).into_iter().chain(doc.alternates.iter().map(|a| a.addr)).collect(),
            Err(e) => {
                tracing::debug!(%main, error = %e, "the main's package list answered nonsense");
                Vec::new()
            }
        },
        Ok(Ok(_)) => Vec::new(),
        Ok(Err(e)) => {
            tracing::debug!(%main, error = %e, "the main's package list is unreachable");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// Tells the main that this member serves `package` at `addr`, from `addr`'s IP: the main
/// accepts a report only for the address it came from.
pub async fn report(main: SocketAddr, package: &Package, addr: SocketAddrV4) -> io::Result<()> {
    let doc = Report {
        addr,
        sha256: sha256_hex(&package.sha256),
        size: package.size,
        md5: package.md5.map(|m| PackageId::Md5(m).to_string()),
    };
    let body = serde_json::to_vec(&doc).map_err(io::Error::other)?;
    let target = format!("{PACKAGES_PREFIX}/{}", package.id());
    match tokio::time::timeout(CALL_TIMEOUT, call_from(Some(*addr.ip()), main, "POST", &target, Some(&body))).await {
        Ok(Ok((200..=299, _))) => Ok(()),
        Ok(Ok((status, _))) => Err(io::Error::other(format!("the main answered {status}"))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "the main's package list did not answer")),
    }
}

/// One request with `Connection: close`; the status and the body (read to the end, bounded).
async fn call(addr: SocketAddr, method: &str, target: &str, body: Option<&[u8]>) -> io::Result<(u16, Vec<u8>)> {
    call_from(None, addr, method, target, body).await
}

/// [`call`], from the local address `from` when given.
async fn call_from(from: Option<std::net::Ipv4Addr>, addr: SocketAddr, method: &str, target: &str, body: Option<&[u8]>) -> io::Result<(u16, Vec<u8>)> {
    let mut stream = match from {
        Some(ip) if !ip.is_unspecified() => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))?;
            socket.connect(addr).await?
        }
        _ => TcpStream::connect(addr).await?,
    };
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: baton-peer\r\nConnection: close\r\n");
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&out).await?;
    let mut buf = Vec::new();
    (&mut stream).take(MAX_DOCUMENT_BYTES as u64 + 16 * 1024).read_to_end(&mut buf).await?;
    let (head, len) = baton_shared::http::parse_response_head(&buf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no complete response head"))?;
    let mut body = buf.split_off(len);
    if let Some(n) = head.content_length() {
        body.truncate(usize::try_from(n).unwrap_or(usize::MAX));
    }
    Ok((head.status, body))
}
