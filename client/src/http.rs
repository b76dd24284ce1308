//! A small HTTP/1.1 client for what a multi-source download needs: HEAD and GET with one
//! `Range`, over plain TCP or TLS, with keep-alive, and nothing read that the caller did not ask
//! for.
//!
//! Response heads are parsed by `baton_shared::http` (bounded, never panics). Bodies must carry a
//! Content-Length (range responses always do); a body without one is read to the connection's
//! end, bounded by the caller. It never follows redirects on its own (see
//! [`crate::discover`]) and never sends a request line built from unchecked input: URLs come from
//! the `url` crate, which percent-encodes.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use baton_shared::http::{parse_response_head, ResponseHead};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use url::Url;

/// Read size for heads and bodies.
const READ_BYTES: usize = 64 * 1024;
/// Bytes of an unwanted body (an error page) read so the connection can be reused; beyond it the
/// connection is closed instead.
const MAX_DRAIN_BYTES: u64 = 64 * 1024;

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("bad response: {0}")]
    Protocol(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("unsupported url {0}")]
    BadUrl(String),
}

trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// TLS settings for HTTPS servers.
#[derive(Clone)]
pub struct TlsClient(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClient")
    }
}

impl TlsClient {
    /// Trusts the system's roots plus the certificates in `extra_ca` (PEM).
    pub fn new(extra_ca: Option<&std::path::Path>) -> Result<TlsClient, HttpError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = extra_ca {
            let pem = std::fs::read(path).map_err(|e| HttpError::Tls(format!("reading {}: {e}", path.display())))?;
            let mut added = 0;
            for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                let cert: rustls::pki_types::CertificateDer<'static> =
                    cert.map_err(|e| HttpError::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| HttpError::Tls(format!("{}: {e}", path.display())))?;
                added += 1;
            }
            if added == 0 {
                return Err(HttpError::Tls(format!("{} holds no certificate", path.display())));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClient(Arc::new(config)))
    }
}

/// The scheme, host and port a connection is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Origin {
    pub fn of(url: &Url) -> Result<Origin, HttpError> {
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(HttpError::BadUrl(format!("{url}: scheme {other} is not http or https"))),
        };
        let host = url
            .host_str()
            .ok_or_else(|| HttpError::BadUrl(format!("{url}: no host")))?
            .to_owned();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| HttpError::BadUrl(format!("{url}: no port")))?;
        Ok(Origin { tls, host, port })
    }
}

/// A response head and what is left of its body.
#[derive(Debug)]
pub struct Response {
    pub head: ResponseHead,
    /// Body bytes still to read; `None` when the body runs to the connection's end.
    pub remaining: Option<u64>,
}

impl Response {
    /// The value of a header as text, when it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All values of a header.
    pub fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.head
            .headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
    }
}

/// One HTTP/1.1 connection.
pub struct HttpConn {
    origin: Origin,
    io: Box<dyn Duplex>,
    /// Bytes read past the current head, not yet handed out.
    buf: Vec<u8>,
    /// Body bytes of the current response still unread (`None`: until close).
    body_left: Option<u64>,
    /// Whether the server lets the connection carry another request.
    keep_alive: bool,
}

impl std::fmt::Debug for HttpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConn")
            .field("origin", &self.origin)
            .field("body_left", &self.body_left)
            .finish()
    }
}

impl HttpConn {
    /// Connects to the origin of `url` within `timeout` (TCP connect plus TLS handshake).
    pub async fn connect(url: &Url, tls: &TlsClient, timeout: Duration) -> Result<HttpConn, HttpError> {
        let origin = Origin::of(url)?;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect((origin.host.as_str(), origin.port)))
            .await
            .map_err(|_| HttpError::Timeout("connecting"))??;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Duplex> = if origin.tls {
            let name = rustls::pki_types::ServerName::try_from(origin.host.clone())
                .map_err(|e| HttpError::BadUrl(format!("{url}: {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(tls.0.clone());
            let stream = tokio::time::timeout(timeout, connector.connect(name, tcp))
                .await
                .map_err(|_| HttpError::Timeout("in the TLS handshake"))?
                .map_err(|e| HttpError::Tls(e.to_string()))?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        Ok(HttpConn {
            origin,
            io,
            buf: Vec::new(),
            body_left: Some(0),
            keep_alive: true,
        })
    }

    /// Whether the current response is completely read and the server keeps the connection.
    pub fn idle(&self) -> bool {
        self.keep_alive && self.body_left == Some(0)
    }

    /// Whether this connection can carry a request for `url` now.
    pub fn reusable_for(&self, url: &Url) -> bool {
        self.keep_alive && self.body_left == Some(0) && Origin::of(url).is_ok_and(|o| o == self.origin)
    }

    /// Sends `method` for `url` (with `Range: bytes=start-(end-1)` when `range` is given) and
    /// reads the response head within `timeout`. Interim 1xx responses are skipped.
    pub async fn request(
        &mut self,
        method: &str,
        url: &Url,
        range: Option<(u64, u64)>,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let mut target = url.path().to_owned();
        if let Some(q) = url.query() {
            target.push('?');
            target.push_str(q);
        }
        let host = match url.port() {
            Some(p) => format!("{}:{p}", self.origin.host),
            None => self.origin.host.clone(),
        };
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: baton-fetch/{}\r\nAccept: */*\r\nWant-Repr-Digest: sha-256=9\r\n",
            env!("CARGO_PKG_VERSION")
        );
        if let Some((start, end)) = range {
            req.push_str(&format!("Range: bytes={start}-{}\r\n", end.saturating_sub(1)));
        }
        req.push_str("\r\n");
        self.body_left = None;
        tokio::time::timeout(timeout, self.io.write_all(req.as_bytes()))
            .await
            .map_err(|_| HttpError::Timeout("sending a request"))??;
        loop {
            let head = tokio::time::timeout(timeout, self.read_head())
                .await
                .map_err(|_| HttpError::Timeout("waiting for a response"))??;
            if (100..200).contains(&head.status) {
                continue;
            }
            let close = head.minor_version == 0
                || head
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                    .any(|h| {
                        h.value
                            .split(|&b| b == b',')
                            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
                    });
            self.keep_alive = !close;
            let bodiless = method == "HEAD" || head.status == 204 || head.status == 304;
            let remaining = if bodiless {
                Some(0)
            } else if head.header("transfer-encoding").is_some() {
                return Err(HttpError::Protocol("chunked bodies are not supported".into()));
            } else {
                head.content_length()
            };
            if remaining.is_none() {
                self.keep_alive = false;
            }
            self.body_left = remaining;
            return Ok(Response { head, remaining });
        }
    }

    async fn read_head(&mut self) -> Result<ResponseHead, HttpError> {
        loop {
            match parse_response_head(&self.buf) {
                Ok(Some((head, len))) => {
                    self.buf.drain(..len);
                    return Ok(head);
                }
                Ok(None) => {}
                Err(e) => return Err(HttpError::Protocol(e.to_string())),
            }
            let mut chunk = vec![0u8; READ_BYTES];
            let n = self.io.read(&mut chunk).await?;
            if n == 0 {
                return Err(HttpError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                )));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads body bytes of the current response into `out`; 0 at the body's end.
    pub async fn read_body(&mut self, out: &mut [u8]) -> Result<usize, HttpError> {
        let want = match self.body_left {
            Some(0) => return Ok(0),
            Some(n) => out.len().min(usize::try_from(n).unwrap_or(usize::MAX)),
            None => out.len(),
        };
        let n = if !self.buf.is_empty() {
            let n = want.min(self.buf.len());
            out[..n].copy_from_slice(&self.buf[..n]);
            self.buf.drain(..n);
            n
        } else {
            let n = self.io.read(&mut out[..want]).await?;
            if n == 0 && self.body_left.is_some() {
                return Err(HttpError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a body",
                )));
            }
            n
        };
        if let Some(left) = self.body_left.as_mut() {
            *left -= n as u64;
        }
        Ok(n)
    }

    /// Reads the rest of a small body (at most `limit` bytes) into memory.
    pub async fn read_to_end(&mut self, limit: u64, timeout: Duration) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; READ_BYTES];
        loop {
            let n = tokio::time::timeout(timeout, self.read_body(&mut chunk))
                .await
                .map_err(|_| HttpError::Timeout("reading a body"))??;
            if n == 0 {
                return Ok(out);
            }
            if out.len() as u64 + n as u64 > limit {
                return Err(HttpError::Protocol(format!("body larger than {limit} bytes")));
            }
            out.extend_from_slice(&chunk[..n]);
        }
    }

    /// Skips a short unwanted body so the connection can be reused; marks it unusable when
    /// the body is long or unbounded.
    pub async fn discard_body(&mut self, timeout: Duration) {
        match self.body_left {
            Some(n) if n <= MAX_DRAIN_BYTES => {
                if self.read_to_end(MAX_DRAIN_BYTES, timeout).await.is_err() {
                    self.keep_alive = false;
                }
            }
            _ => self.keep_alive = false,
        }
    }
}
