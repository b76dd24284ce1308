//! The participant's peer cache settings: turns the config's `peer_cache:` section into a
//! [`PeerConfig`] for its member, reading the group secret file at start.
//!
//! The secret is refused, with the reason, when it is empty, longer than
//! [`MAX_PEER_SECRET_BYTES`], not a regular file, or readable or writable by others: a secret
//! others can read authenticates nothing. This module never logs the secret.

use std::net::{SocketAddr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use baton_io::peer::PeerConfig;
use baton_shared::config::{ParticipantConfig, MAX_PEER_SECRET_BYTES};

/// Permission bits that let others (not the owner or its group) read or write a file.
const OTHERS_ACCESS: u32 = 0o006;

/// Why the peer cache cannot start with the configured secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("peer_cache.secret_file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("peer_cache.secret_file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "peer_cache.secret_file {path} is accessible to others (mode {mode:04o}); \
         make it private, e.g. chmod 600 {path}"
    )]
    WorldAccessible { path: PathBuf, mode: u32 },
    #[error("peer_cache.secret_file {path} is empty")]
    Empty { path: PathBuf },
    #[error("peer_cache.secret_file {path} has {len} bytes; at most {MAX_PEER_SECRET_BYTES} are allowed")]
    TooLong { path: PathBuf, len: u64 },
}

/// Reads a peer-cache secret file, with the checks above.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, SecretError> {
    let read = |source| SecretError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(SecretError::NotAFile { path: path.to_owned() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & OTHERS_ACCESS != 0 {
        return Err(SecretError::WorldAccessible { path: path.to_owned(), mode });
    }
    let max = MAX_PEER_SECRET_BYTES as u64;
    if meta.len() > max {
        return Err(SecretError::TooLong { path: path.to_owned(), len: meta.len() });
    }
    let mut secret = Vec::new();
    // One byte more than allowed, in case the file grew since its metadata was read.
    std::io::Read::read_to_end(&mut std::io::Read::take(&file, max + 1), &mut secret).map_err(read)?;
    if secret.len() as u64 > max {
        return Err(SecretError::TooLong { path: path.to_owned(), len: secret.len() as u64 });
    }
    if secret.is_empty() {
        return Err(SecretError::Empty { path: path.to_owned() });
    }
    Ok(secret)
}

/// The member's settings for this participant; `None` when the peer cache is off.
pub fn peer_config(cfg: &ParticipantConfig) -> Result<Option<PeerConfig>, SecretError> {
    let p = &cfg.peer_cache;
    if !p.enabled {
        return Ok(None);
    }
    let mut out = PeerConfig::new(cfg.addr);
    out.http_port = p.port;
    out.discovery_port = p.discovery_port;
    out.group = p.multicast.then_some(p.group);
    out.ttl = p.ttl;
    out.broadcast = p.broadcast;
    out.hosts = p.peer_addrs();
    out.secret = p.secret_file.as_deref().map(read_secret).transpose()?;
    out.slots = p.slots;
    out.list = p.use_main_list.then(|| SocketAddr::V4(SocketAddrV4::new(cfg.main.addr, cfg.main.origin_port)));
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use baton_shared::config::{parse_participant, Override, DEFAULT_PEER_UPLOAD_SLOTS, PARTICIPANT_EXAMPLE};

    use super::*;

    #[test]
    fn default_slots_are_the_members() {
        assert_eq!(DEFAULT_PEER_UPLOAD_SLOTS, baton_io::peer::DEFAULT_UPLOAD_SLOTS);
    }

    #[test]
    fn off_by_default_and_mapped_when_on() {
        let off = parse_participant("p.yaml", PARTICIPANT_EXAMPLE, &[]).expect("example");
        assert!(peer_config(&off).expect("off").is_none());

        let mut on = parse_participant("p.yaml", PARTICIPANT_EXAMPLE, &[Override::new("--peer-cache", "peer_cache.enabled", "true")])
            .expect("config");
        on.peer_cache.broadcast = Some(Ipv4Addr::new(198, 18, 1, 255));
        on.peer_cache.peers = vec!["198.18.2.10".parse().expect("peer"), "198.18.3.10:9000".parse().expect("peer")];
        let c = peer_config(&on).expect("on").expect("enabled");
        assert_eq!(c.addr, Ipv4Addr::new(198, 18, 1, 10));
        assert_eq!((c.http_port, c.discovery_port, c.ttl, c.slots), (7480, 7481, 1, 4));
        assert_eq!(c.group, Some(Ipv4Addr::new(239, 255, 74, 80)));
        assert_eq!(c.broadcast, Some(Ipv4Addr::new(198, 18, 1, 255)));
        assert_eq!(
            c.hosts,
            vec![SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 10), 7481), SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 10), 9000)]
        );
        assert_eq!(c.list, Some(SocketAddr::from(([198, 18, 0, 1], 8081))));
        assert!(c.secret.is_none());

        let mut quiet = on.clone();
        quiet.peer_cache.multicast = false;
        quiet.peer_cache.use_main_list = false;
        let c = peer_config(&quiet).expect("on").expect("enabled");
        assert_eq!((c.group, c.list), (None, None));
    }

    fn secret_file(tag: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let p = std::env::temp_dir().join(format!("baton-secret-{tag}-{}", std::process::id()));
        std::fs::write(&p, bytes).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn secrets_are_checked() {
        let ok = secret_file("ok", b"group secret\n", 0o600);
        assert_eq!(read_secret(&ok).expect("private"), b"group secret\n");
        let group = secret_file("group", b"s", 0o640);
        assert_eq!(read_secret(&group).expect("group-readable is fine"), b"s");
        let longest = secret_file("longest", &[b'x'; MAX_PEER_SECRET_BYTES], 0o400);
        assert_eq!(read_secret(&longest).expect("at the limit").len(), MAX_PEER_SECRET_BYTES);

        let world = secret_file("world", b"s", 0o644);
        let e = read_secret(&world).expect_err("world-readable");
        assert!(matches!(e, SecretError::WorldAccessible { mode: 0o644, .. }), "{e}");
        assert!(e.to_string().contains("accessible to others (mode 0644)"), "{e}");
        let writable = secret_file("writable", b"s", 0o602);
        assert!(matches!(read_secret(&writable), Err(SecretError::WorldAccessible { .. })));
        let empty = secret_file("empty", b"", 0o600);
        assert!(matches!(read_secret(&empty), Err(SecretError::Empty { .. })));
        let long = secret_file("long", &[b'x'; MAX_PEER_SECRET_BYTES + 1], 0o600);
        assert!(matches!(read_secret(&long), Err(SecretError::TooLong { len: 4097, .. })));
        assert!(matches!(read_secret(&std::env::temp_dir()), Err(SecretError::NotAFile { .. })));
        let missing = std::env::temp_dir().join(format!("baton-secret-missing-{}", std::process::id()));
        let e = read_secret(&missing).expect_err("missing");
        assert!(e.to_string().starts_with("peer_cache.secret_file "), "{e}");
        for p in [ok, group, longest, world, writable, empty, long] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn the_secret_is_read_when_the_config_names_one() {
        let f = secret_file("cfg", b"k", 0o600);
        let mut cfg = parse_participant("p.yaml", PARTICIPANT_EXAMPLE, &[]).expect("example");
        cfg.peer_cache.enabled = true;
        cfg.peer_cache.secret_file = Some(f.clone());
        assert_eq!(peer_config(&cfg).expect("ok").expect("on").secret.as_deref(), Some(&b"k"[..]));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o604)).expect("chmod");
        assert!(peer_config(&cfg).is_err());
        let _ = std::fs::remove_file(f);
    }
}
