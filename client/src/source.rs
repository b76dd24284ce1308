//! One server of a download, over HTTP(S) or FTP: what it says about the file (size, digest,
//! validators, mirrors it lists), and a connection that fetches byte ranges from it.
//!
//! This module speaks to one server at a time and decides nothing: whether a server is a
//! duplicate of the primary is [`crate::discover`]'s call, what to fetch is [`crate::plan`]'s.

use std::time::{Duration, Instant};

use baton_shared::digest::{parse_legacy_digest, parse_repr_digest, Sha256};
use baton_shared::link::{parse_links, Links};
use url::Url;

use crate::ftp::{self, FtpData, FtpSession};
use crate::http::{HttpConn, HttpError, TlsClient};

/// Redirects followed when probing a URL (curl's default limit is 50; five is plenty for a
/// mirror and keeps a redirect loop short).
pub const MAX_REDIRECTS: usize = 5;

/// Why talking to a server failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Http(#[from] HttpError),
    #[error("ftp: {0}")]
    Ftp(#[from] ftp::FtpError),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("http status {0}")]
    Status(u16),
    #[error("{0}")]
    Refused(String),
    #[error("unsupported url {0}")]
    BadUrl(String),
}

/// The protocols a source may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Https,
    Ftp,
}

impl Protocol {
    pub fn of(url: &Url) -> Result<Protocol, SourceError> {
        match url.scheme() {
            "http" => Ok(Protocol::Http),
            "https" => Ok(Protocol::Https),
            "ftp" => Ok(Protocol::Ftp),
            other => Err(SourceError::BadUrl(format!(
                "{url}: scheme {other} (use http, https or ftp)"
            ))),
        }
    }
}

/// Settings every connection shares.
#[derive(Debug, Clone)]
pub struct Net {
    pub tls: TlsClient,
    /// Bound on connecting and on waiting for any response.
    pub timeout: Duration,
}

/// What a server says about the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub size: Option<u64>,
    pub sha256: Option<Sha256>,
    /// A strong ETag (weak ones say nothing about bytes).
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Whether it said it serves byte ranges (`Accept-Ranges: bytes`; FTP's REST always).
    pub ranges: bool,
    /// Mirrors and metalinks it lists (RFC 6249).
    pub links: Links,
    /// The URL after redirects.
    pub url: Option<Url>,
}

/// Asks the server about the file: HEAD (following redirects) or FTP SIZE/MDTM. Returns the
/// facts and the time to the answer.
pub async fn probe(url: &Url, net: &Net) -> Result<(Facts, Duration), SourceError> {
    let started = Instant::now();
    match Protocol::of(url)? {
        Protocol::Ftp => {
            let mut s = FtpSession::connect(url, net.timeout).await?;
            let path = ftp::url_path(url)?;
            let size = s.size(&path).await?;
            let modified = s.modified(&path).await.unwrap_or(None);
            let rtt = started.elapsed();
            s.quit().await;
            if size.is_none() {
                return Err(SourceError::Refused(
                    "the server does not report the file's size".into(),
                ));
            }
            Ok((
                Facts {
                    size,
                    last_modified: modified,
                    ranges: true,
                    url: Some(url.clone()),
                    ..Facts::default()
                },
                rtt,
            ))
        }
        Protocol::Http | Protocol::Https => {
            let mut url = url.clone();
            for _ in 0..=MAX_REDIRECTS {
                let mut conn = HttpConn::connect(&url, &net.tls, net.timeout).await?;
                let resp = conn.request("HEAD", &url, None, net.timeout).await?;
                let rtt = started.elapsed();
                if matches!(resp.head.status, 301 | 302 | 303 | 307 | 308) {
                    let loc = resp.header("location").ok_or(SourceError::Status(resp.head.status))?;
                    url = url
                        .join(loc)
                        .map_err(|e| SourceError::BadUrl(format!("redirect to {loc}: {e}")))?;
                    Protocol::of(&url)?;
                    continue;
                }
                if resp.head.status != 200 {
                    return Err(SourceError::Status(resp.head.status));
                }
                let links: Vec<&[u8]> = resp.headers("link").collect();
                let sha256 = resp
                    .head
                    .header("repr-digest")
                    .and_then(parse_repr_digest)
                    .or_else(|| resp.head.header("digest").and_then(parse_legacy_digest));
                let etag = resp.header("etag").filter(|e| e.starts_with('"')).map(str::to_owned);
                let facts = Facts {
                    size: resp.head.content_length(),
                    sha256,
                    etag,
                    last_modified: resp.header("last-modified").map(str::to_owned),
                    ranges: resp
                        .header("accept-ranges")
                        .is_some_and(|v| v.eq_ignore_ascii_case("bytes")),
                    links: parse_links(&links),
                    url: Some(url.clone()),
                };
                return Ok((facts, rtt));
            }
            Err(SourceError::Refused(format!("more than {MAX_REDIRECTS} redirects")))
        }
    }
}

/// A connection that fetches ranges from one server, kept between ranges when it can be.
#[derive(Debug)]
pub enum Conn {
    Http(HttpConn),
    Ftp {
        session: FtpSession,
        data: Option<FtpData>,
        left: u64,
        to_end: bool,
    },
}

impl Conn {
    /// Opens a connection to the server of `url`.
    pub async fn open(url: &Url, net: &Net) -> Result<Conn, SourceError> {
        Ok(match Protocol::of(url)? {
            Protocol::Ftp => Conn::Ftp {
                session: FtpSession::connect(url, net.timeout).await?,
                data: None,
                left: 0,
                to_end: false,
            },
            _ => Conn::Http(HttpConn::connect(url, &net.tls, net.timeout).await?),
        })
    }

    /// Whether the connection can start another range now.
    pub fn reusable(&self, url: &Url) -> bool {
        match self {
            Conn::Http(c) => c.reusable_for(url),
            Conn::Ftp { data, .. } => data.is_none(),
        }
    }

    /// Starts fetching `[start, end)` of a file of `size` bytes. Refuses a response that is
    /// not exactly that range (a server that ignores Range is only usable from byte 0).
    pub async fn start(&mut self, url: &Url, start: u64, end: u64, size: u64, net: &Net) -> Result<(), SourceError> {
        match self {
            Conn::Http(c) => {
                let resp = c.request("GET", url, Some((start, end)), net.timeout).await?;
                match resp.head.status {
                    206 => {
                        let cr = resp.header("content-range").unwrap_or_default();
                        let want = format!("bytes {start}-{}/{size}", end - 1);
                        if cr != want || resp.remaining != Some(end - start) {
                            c.discard_body(net.timeout).await;
                            return Err(SourceError::Refused(format!(
                                "asked for {want}, got content-range {cr:?}"
                            )));
                        }
                        Ok(())
                    }
                    200 if start == 0 && resp.remaining == Some(size) => Ok(()),
                    200 => {
                        c.discard_body(net.timeout).await;
                        Err(SourceError::Refused("the server ignores byte ranges".into()))
                    }
                    s => {
                        c.discard_body(net.timeout).await;
                        Err(SourceError::Status(s))
                    }
                }
            }
            Conn::Ftp {
                session,
                data,
                left,
                to_end,
            } => {
                let path = ftp::url_path(url)?;
                *data = Some(session.retrieve(&path, start).await?);
                *left = end - start;
                *to_end = end == size;
                Ok(())
            }
        }
    }

    /// Reads the next bytes of the current range; 0 when the range (as requested) is done.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, SourceError> {
        use tokio::io::AsyncReadExt;
        match self {
            Conn::Http(c) => Ok(c.read_body(buf).await?),
            Conn::Ftp {
                data: Some(d), left, ..
            } => {
                if *left == 0 {
                    return Ok(0);
                }
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = d.read(&mut buf[..want]).await.map_err(|e| {
                    SourceError::Ftp(ftp::FtpError::Io {
                        step: "reading data",
                        source: e,
                    })
                })?;
                if n == 0 {
                    return Err(SourceError::Refused("the data connection closed early".into()));
                }
                *left -= n as u64;
                Ok(n)
            }
            Conn::Ftp { data: None, .. } => Ok(0),
        }
    }

    /// Ends the current range, early or not. Returns whether the connection is still usable.
    pub async fn end(&mut self, net: &Net) -> bool {
        match self {
            Conn::Http(c) => {
                // An HTTP range left unread cannot be skipped cheaply: the caller reconnects.
                c.idle()
            }
            Conn::Ftp {
                session,
                data,
                left,
                to_end,
            } => {
                let Some(d) = data.take() else { return true };
                let complete = *left == 0 && *to_end;
                tokio::time::timeout(net.timeout, session.finish(d, complete))
                    .await
                    .is_ok_and(|r| r.is_ok())
            }
        }
    }
}

/// Fetches `[start, end)` on a fresh connection into memory (the duplicate check's samples).
pub async fn fetch_small(url: &Url, start: u64, end: u64, size: u64, net: &Net) -> Result<Vec<u8>, SourceError> {
    let mut conn = Conn::open(url, net).await?;
    conn.start(url, start, end, size, net).await?;
    let mut out = vec![0u8; (end - start) as usize];
    let mut at = 0;
    while at < out.len() {
        let n = tokio::time::timeout(net.timeout, conn.read(&mut out[at..]))
            .await
            .map_err(|_| SourceError::Timeout("reading a sample"))??;
        if n == 0 {
            return Err(SourceError::Refused("the range ended early".into()));
        }
        at += n;
    }
    conn.end(net).await;
    Ok(out)
}
