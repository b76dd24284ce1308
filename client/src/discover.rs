//! Finding the servers of a download and proving they hold the same file.
//!
//! Sources: the URLs given, the mirrors the primary lists (RFC 6249 `Link: rel=duplicate`), and
//! the URLs of a Metalink 4 document (given, or the one the primary points to with
//! `rel=describedby`). Every candidate is probed, and it is used only when it is a duplicate of
//! the reference: the same length, and the same SHA-256 when both publish one; else the same
//! strong ETag or Last-Modified; else the same bytes in ranges sampled at random offsets.
//! A candidate that fails is left out with its reason; this module never lets one in on a guess.

use std::time::Duration;

use baton_shared::digest::Sha256;
use baton_shared::metalink::{self, MetaFile, Pieces};
use sha2::Digest as _;
use url::Url;

use crate::http::HttpConn;
use crate::source::{self, Facts, Net, Protocol, SourceError};

/// Most servers one download considers; more are listed as not used.
pub const MAX_SERVERS: usize = 64;
/// Ranges compared when nothing but the length is known about a candidate.
pub const SAMPLE_COUNT: u64 = 3;
/// Bytes per sampled range: small next to the file, large enough that equal samples of
/// different files are out of the question.
pub const SAMPLE_BYTES: u64 = 64 * 1024;

/// Why discovery failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("no url given")]
    NoUrl,
    #[error("metalink {0}: {1}")]
    Metalink(String, String),
    #[error("the primary {0} cannot be used: {1}")]
    Primary(String, String),
    #[error("the file's size is unknown (no Content-Length, SIZE or metalink size), so it cannot be split")]
    UnknownSize,
}

/// How a server came to be a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Found {
    /// Named on the command line.
    Given,
    /// Listed by the primary in a `Link: rel=duplicate` header.
    Link,
    /// Listed in the metalink.
    Metalink,
}

/// How a candidate was shown to be a duplicate, or why it was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The reference itself.
    Reference,
    Accepted(&'static str),
    Rejected(String),
    Unreachable(String),
}

/// A server of the download.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub url: Url,
    pub protocol: Protocol,
    pub found: Found,
    /// Its priority in the Link header or metalink (1 is best), if any.
    pub pri: Option<u32>,
    pub location: Option<String>,
    pub facts: Facts,
    /// Time to its answer to the probe.
    pub rtt: Option<Duration>,
    pub verdict: Verdict,
}

impl Candidate {
    pub fn usable(&self) -> bool {
        matches!(self.verdict, Verdict::Reference | Verdict::Accepted(_))
    }
}

/// What the file must be.
#[derive(Debug, Clone)]
pub struct Target {
    pub size: u64,
    pub sha256: Option<Sha256>,
    pub pieces: Option<Pieces>,
    /// A file name suggested by the metalink or the primary's path.
    pub name: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// What to look for.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    /// The URLs given, in order; the first is the primary.
    pub urls: Vec<Url>,
    /// A metalink file path or URL.
    pub metalink: Option<String>,
    /// A SHA-256 the user vouches for.
    pub checksum: Option<Sha256>,
    /// Whether to use mirrors the primary lists (Link headers and its metalink).
    pub mirrors: bool,
}

/// Largest metalink document read.
const MAX_METALINK_FETCH: u64 = metalink::MAX_METALINK_BYTES as u64;

async fn load_metalink(at: &str, net: &Net) -> Result<MetaFile, DiscoverError> {
    let err = |e: String| DiscoverError::Metalink(at.to_owned(), e);
    let bytes = if at.starts_with("http://") || at.starts_with("https://") {
        let url = Url::parse(at).map_err(|e| err(e.to_string()))?;
        let mut conn = HttpConn::connect(&url, &net.tls, net.timeout)
            .await
            .map_err(|e| err(e.to_string()))?;
        let resp = conn
            .request("GET", &url, None, net.timeout)
            .await
            .map_err(|e| err(e.to_string()))?;
        if resp.head.status != 200 {
            return Err(err(format!("http status {}", resp.head.status)));
        }
        conn.read_to_end(MAX_METALINK_FETCH, net.timeout)
            .await
            .map_err(|e| err(e.to_string()))?
    } else {
        let meta = std::fs::metadata(at).map_err(|e| err(e.to_string()))?;
        if meta.len() > MAX_METALINK_FETCH {
            return Err(err(format!("larger than {MAX_METALINK_FETCH} bytes")));
        }
        std::fs::read(at).map_err(|e| err(e.to_string()))?
    };
    let doc = metalink::parse(&bytes).map_err(|e| err(e.to_string()))?;
    doc.files
        .into_iter()
        .next()
        .ok_or_else(|| err("it describes no file".into()))
}

fn add(list: &mut Vec<Candidate>, url: Url, found: Found, pri: Option<u32>, location: Option<String>) {
    let Ok(protocol) = Protocol::of(&url) else {
        tracing::info!(%url, "skipping a mirror with an unsupported scheme");
        return;
    };
    if list.iter().any(|c| c.url == url) || list.len() >= MAX_SERVERS {
        return;
    }
    list.push(Candidate {
        url,
        protocol,
        found,
        pri,
        location,
        facts: Facts::default(),
        rtt: None,
        verdict: Verdict::Unreachable("not probed".into()),
    });
}

/// Adds a metalink's URLs, best priority first.
fn add_metalink_urls(list: &mut Vec<Candidate>, m: &MetaFile) {
    let mut urls = m.urls.clone();
    urls.sort_by_key(|u| u.priority.unwrap_or(u32::MAX));
    for u in urls {
        if let Ok(url) = Url::parse(&u.url) {
            add(list, url, Found::Metalink, u.priority, u.location.clone());
        }
    }
}

/// Finds the servers and the target. The returned candidates include those left out, with why.
pub async fn discover(wanted: &Wanted, net: &Net) -> Result<(Target, Vec<Candidate>), DiscoverError> {
    let mut meta = match &wanted.metalink {
        Some(at) => Some(load_metalink(at, net).await?),
        None => None,
    };
    let mut list = Vec::new();
    for u in &wanted.urls {
        add(&mut list, u.clone(), Found::Given, None, None);
    }
    if let Some(m) = &meta {
        add_metalink_urls(&mut list, m);
    }
    if list.is_empty() {
        return Err(DiscoverError::NoUrl);
    }

    // The primary: the first candidate that answers.
    let mut primary = None;
    for (i, c) in list.iter_mut().enumerate() {
        match source::probe(&c.url, net).await {
            Ok((facts, rtt)) => {
                c.facts = facts;
                c.rtt = Some(rtt);
                c.verdict = Verdict::Reference;
                primary = Some(i);
                break;
            }
            Err(e) => c.verdict = Verdict::Unreachable(e.to_string()),
        }
    }
    let Some(primary) = primary else {
        let c = &list[0];
        return Err(DiscoverError::Primary(c.url.to_string(), verdict_text(&c.verdict)));
    };

    if wanted.mirrors {
        let facts = list[primary].facts.clone();
        if meta.is_none() {
            if let Some(at) = facts.links.metalinks.first() {
                let base = facts.url.clone().unwrap_or_else(|| list[primary].url.clone());
                if let Ok(abs) = base.join(at) {
                    match load_metalink(abs.as_str(), net).await {
                        Ok(m) => meta = Some(m),
                        Err(e) => tracing::warn!(error = %e, "ignoring the primary's metalink"),
                    }
                }
            }
            if let Some(m) = &meta {
                add_metalink_urls(&mut list, m);
            }
        }
        for d in &facts.links.duplicates {
            let base = facts.url.clone().unwrap_or_else(|| list[primary].url.clone());
            if let Ok(url) = base.join(&d.url) {
                add(&mut list, url, Found::Link, d.pri, d.geo.clone());
            }
        }
    }

    let pf = list[primary].facts.clone();
    let size = meta
        .as_ref()
        .and_then(|m| m.size)
        .or(pf.size)
        .ok_or(DiscoverError::UnknownSize)?;
    let sha256 = wanted.checksum.or(meta.as_ref().and_then(|m| m.sha256)).or(pf.sha256);
    if let (Some(claimed), Some(own)) = (sha256, pf.sha256) {
        if claimed != own {
            return Err(DiscoverError::Primary(
                list[primary].url.to_string(),
                "its digest differs from the expected SHA-256".into(),
            ));
        }
    }
    if pf.size.is_some_and(|s| s != size) {
        return Err(DiscoverError::Primary(
            list[primary].url.to_string(),
            format!("its length differs from the metalink's {size}"),
        ));
    }
    let name = meta.as_ref().map(|m| m.name.clone()).or_else(|| {
        list[primary]
            .url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    });
    let target = Target {
        size,
        sha256,
        pieces: meta.as_ref().and_then(|m| m.pieces.clone()),
        name,
        etag: pf.etag.clone(),
        last_modified: pf.last_modified.clone(),
    };

    // Probe everyone else at once.
    let mut probes = tokio::task::JoinSet::new();
    for (i, c) in list.iter().enumerate() {
        // Those before the primary were tried as primary and did not answer.
        if i > primary {
            let (url, net) = (c.url.clone(), net.clone());
            probes.spawn(async move { (i, source::probe(&url, &net).await) });
        }
    }
    let mut need_samples = Vec::new();
    while let Some(joined) = probes.join_next().await {
        let Ok((i, result)) = joined else { continue };
        let c = &mut list[i];
        match result {
            Err(e) => c.verdict = Verdict::Unreachable(e.to_string()),
            Ok((facts, rtt)) => {
                c.rtt = Some(rtt);
                c.verdict = judge(&target, &pf, &facts);
                if c.verdict == Verdict::Accepted("sampled") {
                    need_samples.push(i);
                }
                c.facts = facts;
            }
        }
    }
    if !need_samples.is_empty() {
        let offsets = sample_offsets(size, seed());
        let reference = sample_hashes(&list[primary].url, &offsets, size, net).await;
        for i in need_samples {
            let verdict = match (&reference, sample_hashes(&list[i].url, &offsets, size, net).await) {
                (Err(e), _) => Verdict::Rejected(format!(
                    "the primary's samples failed ({e}), so nothing proves this is the same file"
                )),
                (_, Err(e)) => Verdict::Unreachable(format!("sampling failed: {e}")),
                (Ok(r), Ok(m)) if *r == m => Verdict::Accepted("sampled ranges"),
                (Ok(_), Ok(_)) => Verdict::Rejected("different bytes in a sampled range".into()),
            };
            list[i].verdict = verdict;
        }
    }
    Ok((target, list))
}

/// The verdict from what a candidate says about itself; `Accepted("sampled")` means samples
/// must decide.
fn judge(target: &Target, primary: &Facts, facts: &Facts) -> Verdict {
    match facts.size {
        Some(s) if s != target.size => return Verdict::Rejected(format!("length {s}, expected {}", target.size)),
        None => return Verdict::Rejected("it does not report a length".into()),
        _ => {}
    }
    if let (Some(want), Some(got)) = (target.sha256, facts.sha256) {
        return if want == got {
            Verdict::Accepted("sha-256")
        } else {
            Verdict::Rejected("different SHA-256".into())
        };
    }
    if primary.etag.is_some() && primary.etag == facts.etag {
        return Verdict::Accepted("etag");
    }
    if primary.last_modified.is_some() && primary.last_modified == facts.last_modified {
        return Verdict::Accepted("last-modified");
    }
    Verdict::Accepted("sampled")
}

/// A seed nobody outside this process can predict, so a mirror cannot serve right bytes only
/// where it expects samples.
fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

/// [`SAMPLE_COUNT`] ranges of [`SAMPLE_BYTES`] (fewer and shorter for a small file): the last
/// bytes of the file, and others at offsets drawn from `seed`.
pub fn sample_offsets(size: u64, seed: u64) -> Vec<(u64, u64)> {
    let len = SAMPLE_BYTES.min(size);
    if len == 0 {
        return Vec::new();
    }
    let span = size - len + 1;
    // splitmix64 of the seed: every seed its own xorshift state, never 0.
    let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x = (x ^ (x >> 31)).max(1);
    let mut out = vec![(size - len, size)];
    for _ in 1..SAMPLE_COUNT {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let start = x.wrapping_mul(0x2545_F491_4F6C_DD1D) % span;
        out.push((start, start + len));
    }
    out
}

async fn sample_hashes(url: &Url, offsets: &[(u64, u64)], size: u64, net: &Net) -> Result<Vec<Sha256>, SourceError> {
    let mut out = Vec::with_capacity(offsets.len());
    for &(s, e) in offsets {
        let bytes = source::fetch_small(url, s, e, size, net).await?;
        out.push(sha2::Sha256::digest(&bytes).into());
    }
    Ok(out)
}

/// A verdict as one line of text.
pub fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Reference => "reference".into(),
        Verdict::Accepted(how) => format!("same file ({how})"),
        Verdict::Rejected(why) => format!("not the same file: {why}"),
        Verdict::Unreachable(why) => format!("unreachable: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            size: 100,
            sha256: Some([1; 32]),
            pieces: None,
            name: None,
            etag: None,
            last_modified: None,
        }
    }

    #[test]
    fn judging_a_candidate() {
        let t = target();
        let p = Facts {
            size: Some(100),
            etag: Some("\"e\"".into()),
            ..Facts::default()
        };
        let f = |size, sha, etag: Option<&str>, lm: Option<&str>| Facts {
            size,
            sha256: sha,
            etag: etag.map(str::to_owned),
            last_modified: lm.map(str::to_owned),
            ..Facts::default()
        };
        assert_eq!(
            judge(&t, &p, &f(Some(99), Some([1; 32]), None, None)),
            Verdict::Rejected("length 99, expected 100".into())
        );
        assert_eq!(
            judge(&t, &p, &f(None, None, None, None)),
            Verdict::Rejected("it does not report a length".into())
        );
        assert_eq!(
            judge(&t, &p, &f(Some(100), Some([1; 32]), None, None)),
            Verdict::Accepted("sha-256")
        );
        assert_eq!(
            judge(&t, &p, &f(Some(100), Some([2; 32]), Some("\"e\""), None)),
            Verdict::Rejected("different SHA-256".into())
        );
        assert_eq!(
            judge(&t, &p, &f(Some(100), None, Some("\"e\""), None)),
            Verdict::Accepted("etag")
        );
        assert_eq!(
            judge(&t, &p, &f(Some(100), None, Some("\"x\""), None)),
            Verdict::Accepted("sampled")
        );
        let p2 = Facts {
            size: Some(100),
            last_modified: Some("Mon".into()),
            ..Facts::default()
        };
        assert_eq!(
            judge(&t, &p2, &f(Some(100), None, None, Some("Mon"))),
            Verdict::Accepted("last-modified")
        );
    }

    #[test]
    fn samples_cover_the_end_and_stay_inside_the_file() {
        let s = sample_offsets(10 << 20, 42);
        assert_eq!(s.len(), SAMPLE_COUNT as usize);
        assert_eq!(s[0], ((10 << 20) - SAMPLE_BYTES, 10 << 20));
        assert!(s.iter().all(|&(a, b)| b - a == SAMPLE_BYTES && b <= 10 << 20));
        assert_ne!(sample_offsets(10 << 20, 43), s);
        assert_eq!(sample_offsets(10, 7), vec![(0, 10), (0, 10), (0, 10)]);
        assert!(sample_offsets(0, 7).is_empty());
    }
}
