//! The FTP client against a real vsftpd on loopback: exact size and modification time, exact
//! bytes from any offset, early ends that leave the session usable for the next retrieval, and
//! the server's refusals as typed errors.
//!
//! vsftpd has to start as root (it chroots and drops to the `ftp` user): without root these
//! tests print a message and pass, except under CI (`CI=true`), where they fail.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context};
use baton_fetch::ftp::{url_path, FtpError, FtpSession};
use baton_tests::ftp::{Vsftpd, VSFTPD};
use tokio::io::AsyncReadExt;
use url::Url;

/// The served file: 3 MiB of pseudo-random bytes.
const FILE: &str = "big.bin";
const FILE_SIZE: usize = 3 * 1024 * 1024;
const SEED: u64 = 0xf7f7;
/// A sparse file of zeros, far larger than the loopback socket buffers, so a retrieval of it is
/// still running when the client ends it early.
const SPARSE: &str = "sparse.bin";
const SPARSE_SIZE: u64 = 256 * 1024 * 1024;
/// Every network step's bound; loopback answers in microseconds.
const TIMEOUT: Duration = Duration::from_secs(10);
/// What an early-ended retrieval reads before it stops.
const PARTIAL: usize = 64 * 1024;
/// Passive ports per server.
const PASV_PORTS: u16 = 8;
/// Ports handed to servers start here, above Linux's ephemeral range (32768-60999), so no
/// outgoing connection takes one between the check that it is free and vsftpd's bind.
const PORT_BASE: u16 = 61000;
/// Size of the area [`free_ports`] picks blocks from.
const PORT_SPAN: u16 = 4000;

/// A vsftpd serving [`FILE`] from a fresh directory; both go away on drop (server first).
struct Server {
    vsftpd: Vsftpd,
    content: Vec<u8>,
    dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Server {
    fn url(&self, rel: &str) -> anyhow::Result<Url> {
        Ok(Url::parse(&self.vsftpd.url(rel))?)
    }

    async fn session(&self) -> anyhow::Result<FtpSession> {
        Ok(FtpSession::connect(&self.url(FILE)?, TIMEOUT).await?)
    }
}

/// Starts a server, or `None` (after saying so) when this process may not.
fn server() -> anyhow::Result<Option<Server>> {
    if !baton_tests::require_root() {
        return Ok(None);
    }
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = TempDir(std::env::temp_dir().join(format!("baton-ftp-{}-{n}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let root = dir.0.join("root");
    let state = dir.0.join("state");
    std::fs::create_dir_all(&root)?;
    std::fs::create_dir_all(&state)?;
    for path in [&dir.0, &root] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    }
    let content = baton_tests::pseudo_random(FILE_SIZE, SEED);
    let file = root.join(FILE);
    std::fs::write(&file, &content)?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
    let sparse = std::fs::File::create(root.join(SPARSE))?;
    sparse.set_len(SPARSE_SIZE)?;
    sparse.set_permissions(std::fs::Permissions::from_mode(0o644))?;

    let (port, pasv) = free_ports(n)?;
    let vsftpd = Vsftpd::start(
        Command::new(VSFTPD),
        &state,
        &root,
        Ipv4Addr::LOCALHOST,
        port,
        pasv,
    )?;
    Ok(Some(Server {
        vsftpd,
        content,
        dir,
    }))
}

/// A control port and the passive range after it, all free on 127.0.0.1 now: the first such
/// block from a start that differs between processes and between the servers of one process.
fn free_ports(n: u16) -> anyhow::Result<(u16, (u16, u16))> {
    let block = PASV_PORTS + 1;
    let slots = PORT_SPAN / block;
    let first = (std::process::id() as u16)
        .wrapping_mul(7)
        .wrapping_add(n.wrapping_mul(13));
    for i in 0..slots {
        let start = PORT_BASE + (first.wrapping_add(i) % slots) * block;
        if (start..start + block).all(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok()) {
            return Ok((start, (start + 1, start + PASV_PORTS)));
        }
    }
    bail!(
        "no {block} consecutive free ports in {PORT_BASE}..{}",
        PORT_BASE + PORT_SPAN
    )
}

/// `YYYYMMDDHHMMSS` in UTC, as MDTM states a time.
fn mdtm_stamp(path: &Path) -> anyhow::Result<String> {
    let secs = std::fs::metadata(path)?
        .modified()?
        .duration_since(UNIX_EPOCH)?
        .as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Ok(format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    ))
}

/// From vsftpd's protocol log: the (up to) three replies after each "150" that opened a
/// transfer of `file`.
fn replies_after_retr(log: &str, file: &str) -> Vec<Vec<String>> {
    let replies: Vec<&str> = log
        .lines()
        .filter_map(|line| {
            line.split_once("FTP response: Client \"")?
                .1
                .split_once("\", \"")?
                .1
                .strip_suffix('"')
        })
        .collect();
    let opened = format!("150 Opening BINARY mode data connection for {file} (");
    (0..replies.len())
        .filter(|&i| replies[i].starts_with(&opened))
        .map(|i| {
            replies[i + 1..]
                .iter()
                .take(3)
                .map(|r| r.to_string())
                .collect()
        })
        .collect()
}

/// Asserts that `result` is the server's refusal of `command` with `code`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, FtpError>, command: &str, code: u16) {
    match result {
        Err(FtpError::Reply {
            command: c,
            code: k,
            ..
        }) if c == command && k == code => {}
        other => panic!("expected {command} refused with {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn size_and_modification_time_are_exact() -> anyhow::Result<()> {
    let Some(server) = server()? else {
        return Ok(());
    };
    let mut session = server.session().await?;
    let path = url_path(&server.url(FILE)?)?;
    assert_eq!(path, FILE);
    assert_eq!(session.size(&path).await?, Some(FILE_SIZE as u64));
    let file = server.dir.0.join("root").join(FILE);
    assert_eq!(session.modified(&path).await?, Some(mdtm_stamp(&file)?));
    assert_eq!(session.size("missing.bin").await?, None);
    assert_eq!(session.modified("missing.bin").await?, None);
    session.quit().await;
    Ok(())
}

#[tokio::test]
async fn retrievals_from_any_offset_give_the_exact_bytes() -> anyhow::Result<()> {
    let Some(server) = server()? else {
        return Ok(());
    };
    let mut session = server.session().await?;
    for offset in [0, 1, 1_000_000, FILE_SIZE - 1] {
        let mut data = session.retrieve(FILE, offset as u64).await?;
        let mut got = Vec::new();
        data.read_to_end(&mut got)
            .await
            .with_context(|| format!("reading from {offset}"))?;
        assert_eq!(got.len(), FILE_SIZE - offset, "length from offset {offset}");
        assert!(
            got == server.content[offset..],
            "bytes from offset {offset} differ"
        );
        session.finish(data, true).await?;
    }
    session.quit().await;
    Ok(())
}

#[tokio::test]
async fn early_finish_leaves_the_session_usable() -> anyhow::Result<()> {
    let Some(server) = server()? else {
        return Ok(());
    };
    let mut session = server.session().await?;
    for offset in [0, 1_000_000, 2_000_000] {
        let mut data = session.retrieve(FILE, offset as u64).await?;
        let mut got = vec![0u8; PARTIAL];
        data.read_exact(&mut got).await?;
        assert!(
            got == server.content[offset..offset + PARTIAL],
            "bytes from offset {offset} differ"
        );
        session
            .finish(data, false)
            .await
            .with_context(|| format!("early finish at {offset}"))?;
    }
    // Still in step: a command and a whole retrieval after the three early ends.
    assert_eq!(session.size(FILE).await?, Some(FILE_SIZE as u64));
    let mut data = session.retrieve(FILE, (FILE_SIZE - 1) as u64).await?;
    let mut got = Vec::new();
    data.read_to_end(&mut got).await?;
    assert_eq!(got, server.content[FILE_SIZE - 1..]);
    session.finish(data, true).await?;
    session.quit().await;
    // The rest of a 3 MiB file may already sit in the loopback socket buffers when the client
    // stops reading (226 before the ABOR), or not (426): both are answered, and PWD follows.
    let log = server.vsftpd.protocol_log()?;
    let after = replies_after_retr(&log, FILE);
    assert_eq!(after.len(), 4, "{log}");
    for early in &after[..3] {
        assert!(
            matches!(
                early[0].as_str(),
                "226 Transfer complete." | "426 Failure writing network stream."
            ),
            "{log}"
        );
        assert_eq!(
            early[1..],
            [
                "225 No transfer to ABOR.",
                "257 \"/\" is the current directory"
            ],
            "{log}"
        );
    }
    assert_eq!(
        after[3][..2],
        ["226 Transfer complete.", "221 Goodbye."],
        "{log}"
    );
    Ok(())
}

#[tokio::test]
async fn ending_a_running_transfer_early_leaves_the_session_usable() -> anyhow::Result<()> {
    let Some(server) = server()? else {
        return Ok(());
    };
    let mut session = server.session().await?;
    for offset in [0, SPARSE_SIZE / 2] {
        let mut data = session.retrieve(SPARSE, offset).await?;
        let mut got = vec![0xffu8; PARTIAL];
        data.read_exact(&mut got).await?;
        assert!(
            got.iter().all(|&b| b == 0),
            "sparse bytes from offset {offset}"
        );
        session
            .finish(data, false)
            .await
            .with_context(|| format!("early finish at {offset}"))?;
    }
    let mut data = session.retrieve(FILE, 1_000_000).await?;
    let mut got = Vec::new();
    data.read_to_end(&mut got).await?;
    assert!(
        got == server.content[1_000_000..],
        "bytes after the aborted transfers differ"
    );
    session.finish(data, true).await?;
    session.quit().await;
    // What vsftpd saw: each transfer failed on the reset data connection (426), then the ABOR
    // found nothing to abort (225, vsftpd reads the control connection only between transfers)
    // and PWD marked the end.
    let log = server.vsftpd.protocol_log()?;
    let after = replies_after_retr(&log, SPARSE);
    let expected = [
        "426 Failure writing network stream.",
        "225 No transfer to ABOR.",
        "257 \"/\" is the current directory",
    ];
    assert_eq!(after, vec![expected.map(String::from).to_vec(); 2], "{log}");
    Ok(())
}

#[tokio::test]
async fn a_missing_file_is_refused_with_550() -> anyhow::Result<()> {
    let Some(server) = server()? else {
        return Ok(());
    };
    let mut session = server.session().await?;
    assert_refused(session.retrieve("missing.bin", 0).await, "RETR", 550);
    assert_refused(session.retrieve("missing.bin", 10).await, "RETR", 550);
    // The refusal leaves the session in step.
    assert_eq!(session.size(FILE).await?, Some(FILE_SIZE as u64));
    session.quit().await;
    Ok(())
}

#[tokio::test]
async fn a_bad_login_is_refused() -> anyhow::Result<()> {
    let Some(server) = server()? else {
        return Ok(());
    };
    let mut url = server.url(FILE)?;
    url.set_username("baton")
        .map_err(|()| anyhow::anyhow!("set_username"))?;
    url.set_password(Some("wrong"))
        .map_err(|()| anyhow::anyhow!("set_password"))?;
    // This vsftpd is anonymous-only: it refuses any other user at USER (530), before a password.
    assert_refused(FtpSession::connect(&url, TIMEOUT).await, "USER", 530);
    Ok(())
}
