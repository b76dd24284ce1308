//! The participant's peer cache settings: turns the config's `peer_cache:` section into a
//! [`PeerConfig`] for its member, reading the group secret file at start with
//! [`baton_io::peer::secret`] (the same rules, and the same key from the same file, as
//! baton-fetch). This module never logs the secret.

use std::net::{SocketAddr, SocketAddrV4};

use baton_io::peer::secret::{read_secret, SecretError};
use baton_io::peer::PeerConfig;
use baton_shared::config::ParticipantConfig;

/// Why the peer cache cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PeerSettingsError {
    #[error("peer_cache.secret_file {0}")]
    Secret(#[from] SecretError),
}

/// The member's settings for this participant; `None` when the peer cache is off.
pub fn peer_config(cfg: &ParticipantConfig) -> Result<Option<PeerConfig>, PeerSettingsError> {
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

    fn secret_file(tag: &str, bytes: &[u8], mode: u32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = std::env::temp_dir().join(format!("baton-secret-{tag}-{}", std::process::id()));
        std::fs::write(&p, bytes).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn the_secret_is_read_when_the_config_names_one() {
        let f = secret_file("cfg", b"k", 0o600);
        let mut cfg = parse_participant("p.yaml", PARTICIPANT_EXAMPLE, &[]).expect("example");
        cfg.peer_cache.enabled = true;
        cfg.peer_cache.secret_file = Some(f.clone());
        assert_eq!(peer_config(&cfg).expect("ok").expect("on").secret.as_deref(), Some(&b"k"[..]));
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o604)).expect("chmod");
        let e = peer_config(&cfg).expect_err("world-readable");
        assert!(e.to_string().starts_with("peer_cache.secret_file /"), "{e}");
        let _ = std::fs::remove_file(f);
    }
}
