use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::*;
use crate::health::HealthPolicy;
use crate::select::Policy;

/// The required fields of a main file, with the example's values; two lines.
const MAIN_MIN: &str = "local_addr: 198.18.0.1\norigin_dir: /srv/baton/origin\n";

/// The required fields of a participant file, with the example's values; seven lines.
const PARTICIPANT_MIN: &str =
    "name: fra-1\naddr: 198.18.1.10\nlat: 50.11\nlon: 8.68\ncache_dir: /var/cache/baton\nmain:\n  addr: 198.18.0.1\n";

/// Every default written out, with the required fields of [`MAIN_MIN`].
fn main_defaults() -> MainConfig {
    MainConfig {
        vip: Ipv4Addr::new(203, 0, 113, 10),
        port: 80,
        local_addr: Ipv4Addr::new(198, 18, 0, 1),
        iface: "eth0".into(),
        path_mtu: 1500,
        origin_dir: "/srv/baton/origin".into(),
        origin_port: 8081,
        geoip: None,
        pin_dir: "/sys/fs/bpf/baton/main".into(),
        state_dir: "/var/lib/baton/main".into(),
        metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9470)),
        threads: 1,
        head_timeout_ms: 10_000,
        send_timeout_ms: 60_000,
        dataplane: DataplaneConfig { mode: DataplaneMode::Tc, encap: EncapKind::Ipip, gue_port: 6080 },
        log: LogConfig { format: LogFormat::Text },
        control: ControlConfig {
            port: 7100,
            tls: TlsConfig {
                ca: "/etc/baton/tls/ca.pem".into(),
                cert: "/etc/baton/tls/main.pem".into(),
                key: "/etc/baton/tls/main.key".into(),
            },
            participant_timeout_ms: 500,
            restore_timeout_ms: 10_000,
            release_timeout_ms: 5_000,
            prepare_timeout_ms: 60_000,
            standby: true,
        },
        admin: AdminConfig { socket: "/run/baton/main.sock".into(), listen: None, token_file: None },
        health: HealthPolicy::default(),
        selection: Policy::default(),
        participants: vec![],
    }
}

/// Every default written out, with the required fields of [`PARTICIPANT_MIN`].
fn participant_defaults() -> ParticipantConfig {
    ParticipantConfig {
        name: "fra-1".into(),
        addr: Ipv4Addr::new(198, 18, 1, 10),
        vip: Ipv4Addr::new(203, 0, 113, 10),
        lat: 50.11,
        lon: 8.68,
        capacity: 1000,
        cache_dir: "/var/cache/baton".into(),
        iface: "eth0".into(),
        pin_dir: "/sys/fs/bpf/baton/participant".into(),
        mirror_port: 80,
        metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9471)),
        threads: 1,
        head_timeout_ms: 10_000,
        send_timeout_ms: 60_000,
        dataplane: DataplaneConfig { mode: DataplaneMode::Tc, encap: EncapKind::Ipip, gue_port: 6080 },
        log: LogConfig { format: LogFormat::Text },
        main: MainLinkConfig { addr: Ipv4Addr::new(198, 18, 0, 1), control_port: 7100, origin_port: 8081 },
        tls: TlsConfig {
            ca: "/etc/baton/tls/ca.pem".into(),
            cert: "/etc/baton/tls/participant.pem".into(),
            key: "/etc/baton/tls/participant.key".into(),
        },
        peer_cache: PeerCacheConfig {
            enabled: false,
            port: 7480,
            discovery_port: 7481,
            multicast: true,
            group: Ipv4Addr::new(239, 255, 74, 80),
            ttl: 1,
            broadcast: None,
            peers: vec![],
            secret_file: None,
            slots: 4,
            use_main_list: true,
        },
    }
}

fn flag(flag: &str, path: &str, raw: &str) -> Override {
    Override::new(flag, path, raw)
}

fn main_ok(text: &str, overrides: &[Override]) -> MainConfig {
    match parse_main("main.yaml", text, overrides) {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    }
}

fn main_err(text: &str, overrides: &[Override]) -> ConfigError {
    match parse_main("main.yaml", text, overrides) {
        Ok(config) => panic!("parsed: {config:?}"),
        Err(e) => e,
    }
}

fn participant_ok(text: &str, overrides: &[Override]) -> ParticipantConfig {
    match parse_participant("participant.yaml", text, overrides) {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    }
}

fn participant_err(text: &str, overrides: &[Override]) -> ConfigError {
    match parse_participant("participant.yaml", text, overrides) {
        Ok(config) => panic!("parsed: {config:?}"),
        Err(e) => e,
    }
}

/// (file, field, kind, line, column) of an error, for compact assertions.
fn summary(e: &ConfigError) -> (&str, &str, ConfigErrorKind, Option<usize>, Option<usize>) {
    (e.file.as_str(), e.field.as_str(), e.kind, e.line, e.column)
}

// ---------------------------------------------------------------------------------------------
// Defaults and examples

#[test]
fn main_example_is_the_defaults() {
    assert_eq!(main_ok(MAIN_EXAMPLE, &[]), main_defaults());
}

#[test]
fn minimal_main_file_gets_every_default() {
    assert_eq!(main_ok(MAIN_MIN, &[]), main_defaults());
}

#[test]
fn participant_example_is_the_defaults() {
    assert_eq!(participant_ok(PARTICIPANT_EXAMPLE, &[]), participant_defaults());
}

#[test]
fn minimal_participant_file_gets_every_default() {
    assert_eq!(participant_ok(PARTICIPANT_MIN, &[]), participant_defaults());
}

#[test]
fn main_example_commented_participants_block_parses() {
    // The example's commented-out `participants:` block, uncommented in place of `participants: []`.
    let block: String = MAIN_EXAMPLE.lines().filter_map(|l| l.strip_prefix("#   ")).map(|l| format!("{l}\n")).collect();
    assert!(block.starts_with("participants:\n"), "{block}");
    let text = MAIN_EXAMPLE.replace("participants: []\n", &block);
    assert_eq!(
        main_ok(&text, &[]).participants,
        vec![StaticParticipant {
            name: "fra-1".into(),
            addr: Ipv4Addr::new(198, 18, 1, 10),
            lat: 50.11,
            lon: 8.68,
            capacity: 1000
        }]
    );
}

#[test]
fn static_participant_capacity_defaults() {
    let text =
        format!("{MAIN_MIN}participants:\n  - name: ams-1\n    addr: 198.18.1.20\n    lat: 52.37\n    lon: 4.9\n");
    assert_eq!(main_ok(&text, &[]).participants[0].capacity, 1000);
}

#[test]
fn serialized_configs_read_back_equal() {
    let mut main = main_defaults();
    main.geoip = Some("/usr/share/GeoIP/lab.mmdb".into());
    main.admin.listen = Some(SocketAddr::from(([198, 18, 0, 1], 8443)));
    main.admin.token_file = Some("/etc/baton/admin.token".into());
    main.participants = vec![StaticParticipant {
        name: "fra-1".into(),
        addr: Ipv4Addr::new(198, 18, 1, 10),
        lat: 50.11,
        lon: 8.68,
        capacity: 7,
    }];
    let text = serde_yaml::to_string(&main).expect("serializes");
    assert_eq!(main_ok(&text, &[]), main);

    let mut participant = participant_defaults();
    let text = serde_yaml::to_string(&participant).expect("serializes");
    assert_eq!(participant_ok(&text, &[]), participant);
    participant.peer_cache.enabled = true;
    participant.peer_cache.broadcast = Some(Ipv4Addr::new(198, 18, 1, 255));
    participant.peer_cache.peers = vec![
        PeerHost { ip: Ipv4Addr::new(198, 18, 2, 10), port: None },
        PeerHost { ip: Ipv4Addr::new(198, 18, 3, 10), port: Some(9000) },
    ];
    participant.peer_cache.secret_file = Some("/etc/baton/peer.secret".into());
    let text = serde_yaml::to_string(&participant).expect("serializes");
    assert_eq!(participant_ok(&text, &[]), participant);
}

#[test]
fn tls_keys_left_out_take_the_role_defaults() {
    let main = main_ok(&format!("{MAIN_MIN}control:\n  tls:\n    cert: /lab/main.pem\n"), &[]);
    assert_eq!(
        main.control.tls,
        TlsConfig {
            ca: "/etc/baton/tls/ca.pem".into(),
            cert: "/lab/main.pem".into(),
            key: "/etc/baton/tls/main.key".into()
        }
    );
    let participant = participant_ok(&format!("{PARTICIPANT_MIN}tls:\n  key: /lab/p.key\n"), &[]);
    assert_eq!(
        participant.tls,
        TlsConfig {
            ca: "/etc/baton/tls/ca.pem".into(),
            cert: "/etc/baton/tls/participant.pem".into(),
            key: "/lab/p.key".into()
        }
    );
    let e = main_err(&format!("{MAIN_MIN}control:\n  tls:\n    crt: /x\n"), &[]);
    assert_eq!(summary(&e), ("main.yaml", "control.tls.crt", ConfigErrorKind::UnknownField, Some(5), Some(5)));
}

#[test]
fn settings_other_than_defaults_are_read() {
    let text = format!(
        "{MAIN_MIN}dataplane:\n  mode: xdp\n  encap: gue\n  gue_port: 6081\nlog:\n  format: json\n\
         control:\n  standby: false\nselection:\n  mode: filter\n  filter_radius_km: 250\nthreads: 256\npath_mtu: 576\n"
    );
    let c = main_ok(&text, &[]);
    assert_eq!(c.dataplane, DataplaneConfig { mode: DataplaneMode::Xdp, encap: EncapKind::Gue, gue_port: 6081 });
    assert_eq!(c.log.format, LogFormat::Json);
    assert!(!c.control.standby);
    assert_eq!(c.selection.mode, crate::select::GeoMode::Filter);
    assert_eq!(c.selection.filter_radius_km, 250.0);
    assert_eq!((c.threads, c.path_mtu), (256, 576));
}

// ---------------------------------------------------------------------------------------------
// Errors of the file

#[test]
fn wrong_type_names_field_line_and_column() {
    let e = main_err(&format!("{MAIN_MIN}port: abc\n"), &[]);
    assert_eq!(summary(&e), ("main.yaml", "port", ConfigErrorKind::WrongType, Some(3), Some(7)));
    assert_eq!(
        e.to_string(),
        "main.yaml:3:7: port: invalid type: string \"abc\", expected a port number from 1 to 65535"
    );
}

#[test]
fn wrong_type_of_a_section() {
    let e = main_err(&format!("{MAIN_MIN}control: 5\n"), &[]);
    assert_eq!(summary(&e), ("main.yaml", "control", ConfigErrorKind::WrongType, Some(3), Some(10)));
    assert_eq!(e.message, "invalid type: integer `5`, expected struct ControlConfig");
}

#[test]
fn unknown_nested_field_names_the_key() {
    let e = main_err(&format!("control:\n  prot: 1\n{MAIN_MIN}"), &[]);
    assert_eq!(summary(&e), ("main.yaml", "control.prot", ConfigErrorKind::UnknownField, Some(2), Some(3)));
    assert!(e.message.starts_with("unknown field `prot`, expected one of `port`, `tls`,"), "{}", e.message);
    assert!(e.to_string().starts_with("main.yaml:2:3: control.prot: unknown field `prot`"), "{e}");
}

#[test]
fn unknown_top_level_field() {
    let e = main_err(&format!("{MAIN_MIN}\nvips: 198.18.0.9\n"), &[]);
    assert_eq!(summary(&e), ("main.yaml", "vips", ConfigErrorKind::UnknownField, Some(4), Some(1)));
}

#[test]
fn missing_field_in_a_section_names_the_section_key() {
    let text = "name: fra-1\naddr: 198.18.1.10\nlat: 50.11\nlon: 8.68\ncache_dir: /c\nmain:\n  control_port: 7100\n";
    let e = participant_err(text, &[]);
    assert_eq!(summary(&e), ("participant.yaml", "main.addr", ConfigErrorKind::MissingField, Some(6), Some(1)));
    assert_eq!(e.to_string(), "participant.yaml:6:1: main.addr: missing field `addr`");
}

#[test]
fn missing_required_section() {
    let e = participant_err("name: fra-1\naddr: 198.18.1.10\nlat: 50.11\nlon: 8.68\ncache_dir: /c\n", &[]);
    assert_eq!(summary(&e), ("participant.yaml", "main", ConfigErrorKind::MissingField, None, None));
}

#[test]
fn missing_top_level_field() {
    let e =
        participant_err("name: fra-1\naddr: 198.18.1.10\nlon: 8.68\ncache_dir: /c\nmain:\n  addr: 198.18.0.1\n", &[]);
    assert_eq!(summary(&e), ("participant.yaml", "lat", ConfigErrorKind::MissingField, None, None));
    assert_eq!(e.to_string(), "participant.yaml: lat: missing field `lat`");
}

#[test]
fn bad_address_is_a_bad_value_at_its_position() {
    let e = main_err("local_addr: 198.18.0.300\norigin_dir: /o\n", &[]);
    assert_eq!(summary(&e), ("main.yaml", "local_addr", ConfigErrorKind::BadValue, Some(1), Some(13)));
    assert_eq!(
        e.to_string(),
        "main.yaml:1:13: local_addr: invalid value: string \"198.18.0.300\", expected an IPv4 address such as 198.18.0.1"
    );
}

/// Values that are rejected (field, line, column of the value), each appended to [`MAIN_MIN`]
/// so that its first line is line 3.
#[test]
fn out_of_range_values_are_bad_values_at_their_position() {
    let cases: &[(&str, &str, usize, usize)] = &[
        ("path_mtu: 100\n", "path_mtu", 3, 11),
        ("path_mtu: 575\n", "path_mtu", 3, 11),
        ("port: 0\n", "port", 3, 7),
        ("port: -1\n", "port", 3, 7),
        ("port: 65536\n", "port", 3, 7),
        ("origin_port: 0\n", "origin_port", 3, 14),
        ("threads: 0\n", "threads", 3, 10),
        ("threads: 257\n", "threads", 3, 10),
        ("head_timeout_ms: 0\n", "head_timeout_ms", 3, 18),
        ("send_timeout_ms: 0\n", "send_timeout_ms", 3, 18),
        ("iface: \"\"\n", "iface", 3, 8),
        ("iface: abcdefghijklmnop\n", "iface", 3, 8),
        ("iface: a/b\n", "iface", 3, 8),
        ("vip: 203.0.113\n", "vip", 3, 6),
        ("metrics_addr: 127.0.0.1\n", "metrics_addr", 3, 15),
        ("dataplane:\n  mode: bpf\n", "dataplane.mode", 4, 9),
        ("dataplane:\n  gue_port: 0\n", "dataplane.gue_port", 4, 13),
        ("control:\n  port: 7100\n  restore_timeout_ms: 0\n", "control.restore_timeout_ms", 5, 23),
        ("admin:\n  listen: 198.18.0.1\n", "admin.listen", 4, 11),
        (
            "participants:\n  - name: Fra_1\n    addr: 198.18.1.1\n    lat: 0\n    lon: 0\n",
            "participants[0].name",
            4,
            11,
        ),
        ("participants:\n  - name: a\n    addr: 198.18.1.1\n    lat: 90.5\n    lon: 0\n", "participants[0].lat", 6, 10),
        ("participants:\n  - name: a\n    addr: 198.18.1.1\n    lat: -91\n    lon: 0\n", "participants[0].lat", 6, 10),
        ("participants:\n  - name: a\n    addr: 198.18.1.1\n    lat: .nan\n    lon: 0\n", "participants[0].lat", 6, 10),
        ("participants:\n  - name: a\n    addr: 198.18.1.1\n    lat: 0\n    lon: -181\n", "participants[0].lon", 7, 10),
        (
            "participants:\n  - name: a\n    addr: 198.18.1.1\n    lat: 0\n    lon: 0\n    capacity: 0\n",
            "participants[0].capacity",
            8,
            15,
        ),
    ];
    for &(snippet, field, line, column) in cases {
        let e = main_err(&format!("{MAIN_MIN}{snippet}"), &[]);
        assert_eq!(
            summary(&e),
            ("main.yaml", field, ConfigErrorKind::BadValue, Some(line), Some(column)),
            "{snippet:?}: {e}"
        );
        assert!(e.message.starts_with("invalid value: ") || e.message.starts_with("unknown variant "), "{e}");
    }
}

#[test]
fn values_at_the_limits_are_accepted() {
    let text = format!(
        "{MAIN_MIN}path_mtu: 576\nport: 65535\nthreads: 256\niface: abcdefghijklmno\nhead_timeout_ms: 1\nsend_timeout_ms: 1\n\
         participants:\n  - name: a\n    addr: 198.18.1.1\n    lat: -90\n    lon: 180\n    capacity: 1\n"
    );
    let c = main_ok(&text, &[]);
    assert_eq!(
        (c.path_mtu, c.port, c.threads, c.iface.as_str(), c.head_timeout_ms, c.send_timeout_ms),
        (576, 65535, 256, "abcdefghijklmno", 1, 1)
    );
    assert_eq!((c.participants[0].lat, c.participants[0].lon, c.participants[0].capacity), (-90.0, 180.0, 1));
}

#[test]
fn participant_values_are_checked() {
    let e = participant_err(&PARTICIPANT_MIN.replace("name: fra-1", "name: Fra_1"), &[]);
    assert_eq!(summary(&e), ("participant.yaml", "name", ConfigErrorKind::BadValue, Some(1), Some(7)));
    assert_eq!(e.message, "invalid value: string \"Fra_1\", expected a name of 1 to 64 bytes of [a-z0-9-]");
    let e = participant_err(&PARTICIPANT_MIN.replace("lat: 50.11", "lat: 90.5"), &[]);
    assert_eq!(summary(&e), ("participant.yaml", "lat", ConfigErrorKind::BadValue, Some(3), Some(6)));
    let e = participant_err(&format!("{PARTICIPANT_MIN}mirror_port: 65536\n"), &[]);
    assert_eq!(summary(&e), ("participant.yaml", "mirror_port", ConfigErrorKind::BadValue, Some(8), Some(14)));
    let e = participant_err(&PARTICIPANT_MIN.replace("  addr: 198.18.0.1", "  addr: main"), &[]);
    assert_eq!(summary(&e), ("participant.yaml", "main.addr", ConfigErrorKind::BadValue, Some(7), Some(9)));
    // 0 turns the mirror off.
    assert_eq!(participant_ok(&format!("{PARTICIPANT_MIN}mirror_port: 0\n"), &[]).mirror_port, 0);
}

#[test]
fn peer_cache_settings_are_read() {
    let text = format!(
        "{PARTICIPANT_MIN}peer_cache:\n  enabled: true\n  port: 9480\n  discovery_port: 9481\n  multicast: false\n\
         \x20 group: 239.1.2.3\n  ttl: 255\n  broadcast: 198.18.1.255\n  peers: [198.18.2.10, \"198.18.3.10:9000\"]\n\
         \x20 secret_file: /etc/baton/peer.secret\n  slots: 1\n  use_main_list: false\n"
    );
    let c = participant_ok(&text, &[]).peer_cache;
    assert_eq!(
        c,
        PeerCacheConfig {
            enabled: true,
            port: 9480,
            discovery_port: 9481,
            multicast: false,
            group: Ipv4Addr::new(239, 1, 2, 3),
            ttl: 255,
            broadcast: Some(Ipv4Addr::new(198, 18, 1, 255)),
            peers: vec![
                PeerHost { ip: Ipv4Addr::new(198, 18, 2, 10), port: None },
                PeerHost { ip: Ipv4Addr::new(198, 18, 3, 10), port: Some(9000) },
            ],
            secret_file: Some("/etc/baton/peer.secret".into()),
            slots: 1,
            use_main_list: false,
        }
    );
    // A peer without a port is polled on the section's discovery port.
    assert_eq!(
        c.peer_addrs(),
        vec![
            std::net::SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 10), 9481),
            std::net::SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 10), 9000),
        ]
    );
    // The one flag.
    let c = participant_ok(PARTICIPANT_MIN, &[flag("--peer-cache", "peer_cache.enabled", "true")]);
    assert!(c.peer_cache.enabled);
    assert_eq!(c.peer_cache, PeerCacheConfig { enabled: true, ..PeerCacheConfig::default() });
}

#[test]
fn peer_cache_values_are_checked() {
    // (section body, field, line, column); the section starts on line 8.
    let cases = [
        ("  ttl: 0\n", "peer_cache.ttl", 9, 8),
        ("  ttl: 256\n", "peer_cache.ttl", 9, 8),
        ("  slots: 0\n", "peer_cache.slots", 9, 10),
        ("  slots: 1025\n", "peer_cache.slots", 9, 10),
        ("  port: 0\n", "peer_cache.port", 9, 9),
        ("  discovery_port: 70000\n", "peer_cache.discovery_port", 9, 19),
        ("  group: 198.18.0.1\n", "peer_cache.group", 9, 10),
        ("  broadcast: 198.18.1.x\n", "peer_cache.broadcast", 9, 14),
        ("  peers:\n    - 198.18.2.10\n    - 198.18.2.11:0\n", "peer_cache.peers[1]", 11, 7),
        ("  peers:\n    - 198.18.2.10:99999\n", "peer_cache.peers[0]", 10, 7),
        ("  peers:\n    - peer-b\n", "peer_cache.peers[0]", 10, 7),
    ];
    for (body, field, line, column) in cases {
        let e = participant_err(&format!("{PARTICIPANT_MIN}peer_cache:\n{body}"), &[]);
        assert_eq!(
            summary(&e),
            ("participant.yaml", field, ConfigErrorKind::BadValue, Some(line), Some(column)),
            "{body}: {e}"
        );
    }
    let e = participant_err(&format!("{PARTICIPANT_MIN}peer_cache:\n  group: 10.0.0.1\n"), &[]);
    assert_eq!(
        e.to_string(),
        "participant.yaml:9:10: peer_cache.group: invalid value: string \"10.0.0.1\", expected an IPv4 multicast group \
         (224.0.0.0 to 239.255.255.255) such as 239.255.74.80"
    );
    let e = participant_err(&format!("{PARTICIPANT_MIN}peer_cache:\n  enable: true\n"), &[]);
    assert_eq!(summary(&e), ("participant.yaml", "peer_cache.enable", ConfigErrorKind::UnknownField, Some(9), Some(3)));
    let e = participant_err(&format!("{PARTICIPANT_MIN}peer_cache:\n  enabled: yes please\n"), &[]);
    assert_eq!(summary(&e), ("participant.yaml", "peer_cache.enabled", ConfigErrorKind::WrongType, Some(9), Some(12)));
    let e = participant_err(PARTICIPANT_MIN, &[flag("--peer-cache", "peer_cache.slots", "0")]);
    assert_eq!(summary(&e), ("--peer-cache", "peer_cache.slots", ConfigErrorKind::BadValue, None, None));
    // The limits themselves are accepted.
    let c = participant_ok(&format!("{PARTICIPANT_MIN}peer_cache:\n  ttl: 1\n  slots: 1024\n  group: 224.0.0.1\n"), &[]);
    assert_eq!((c.peer_cache.ttl, c.peer_cache.slots, c.peer_cache.group), (1, 1024, Ipv4Addr::new(224, 0, 0, 1)));
}

#[test]
fn list_element_errors_name_the_index() {
    let text = format!(
        "{MAIN_MIN}participants:\n  - name: fra-1\n    addr: 198.18.1.10\n    lat: 50.11\n    lon: 8.68\n\
         \x20 - name: ams-1\n    addr: 198.18.1.x\n    lat: 52.37\n    lon: 4.9\n"
    );
    let e = main_err(&text, &[]);
    assert_eq!(summary(&e), ("main.yaml", "participants[1].addr", ConfigErrorKind::BadValue, Some(9), Some(11)));
    assert_eq!(
        e.to_string(),
        "main.yaml:9:11: participants[1].addr: invalid value: string \"198.18.1.x\", expected an IPv4 address such as 198.18.0.1"
    );
}

#[test]
fn list_element_missing_field_points_at_the_element() {
    let text = format!(
        "{MAIN_MIN}participants:\n  - name: fra-1\n    addr: 198.18.1.10\n    lat: 50.11\n    lon: 8.68\n\
         \x20 - name: ams-1\n    addr: 198.18.1.20\n    lat: 52.37\n"
    );
    let e = main_err(&text, &[]);
    assert_eq!(summary(&e), ("main.yaml", "participants[1].lon", ConfigErrorKind::MissingField, Some(8), Some(3)));
}

#[test]
fn duplicate_static_participants_are_refused() {
    let entry = |name: &str, addr: &str| format!("  - name: {name}\n    addr: {addr}\n    lat: 0\n    lon: 0\n");
    let text = format!("{MAIN_MIN}participants:\n{}{}", entry("fra-1", "198.18.1.10"), entry("fra-1", "198.18.1.11"));
    let e = main_err(&text, &[]);
    assert_eq!(summary(&e), ("main.yaml", "participants[1].name", ConfigErrorKind::BadValue, Some(8), Some(5)));
    assert_eq!(e.message, "\"fra-1\" is already the name of participants[0]");
    let text = format!("{MAIN_MIN}participants:\n{}{}", entry("fra-1", "198.18.1.10"), entry("fra-2", "198.18.1.10"));
    let e = main_err(&text, &[]);
    assert_eq!(summary(&e), ("main.yaml", "participants[1].addr", ConfigErrorKind::BadValue, Some(9), Some(5)));
}

#[test]
fn admin_listen_requires_token_file() {
    let e = main_err(&format!("{MAIN_MIN}admin:\n  socket: /run/baton/main.sock\n  listen: 198.18.0.1:8443\n"), &[]);
    assert_eq!(summary(&e), ("main.yaml", "admin.token_file", ConfigErrorKind::MissingField, Some(5), Some(3)));
    assert_eq!(
        e.to_string(),
        "main.yaml:5:3: admin.token_file: required when admin.listen is set (the TCP admin API needs a bearer token)"
    );
    let c =
        main_ok(&format!("{MAIN_MIN}admin:\n  listen: 198.18.0.1:8443\n  token_file: /etc/baton/admin.token\n"), &[]);
    assert_eq!(c.admin.listen, Some(SocketAddr::from(([198, 18, 0, 1], 8443))));
    assert_eq!(c.admin.token_file, Some(PathBuf::from("/etc/baton/admin.token")));
}

#[test]
fn health_policy_is_checked() {
    // (snippet under `health:` starting on line 4, field, line of its key)
    let cases: &[(&str, &str, usize, usize)] = &[
        ("  fall: 0\n", "health.fall", 4, 3),
        ("  interval_ms: 1000\n  rise: 0\n", "health.rise", 5, 3),
        ("  interval_ms: 0\n", "health.interval_ms", 4, 3),
        ("  timeout_ms: 0\n", "health.timeout_ms", 4, 3),
        ("  probe_path: big.iso\n", "health.probe_path", 4, 3),
        ("  damping:\n    reuse: 2500\n", "health.damping.reuse", 5, 5),
        ("  damping:\n    suppress: 700\n", "health.damping.reuse", 4, 3),
        ("  damping:\n    penalty: -1\n", "health.damping.penalty", 5, 5),
        ("  damping:\n    half_life_ms: 0\n", "health.damping.half_life_ms", 5, 5),
    ];
    for &(snippet, field, line, column) in cases {
        let e = main_err(&format!("{MAIN_MIN}health:\n{snippet}"), &[]);
        assert_eq!(
            summary(&e),
            ("main.yaml", field, ConfigErrorKind::BadValue, Some(line), Some(column)),
            "{snippet:?}: {e}"
        );
    }
    let e = main_err(&format!("{MAIN_MIN}health:\n  damping:\n    reuse: 2500\n"), &[]);
    assert_eq!(e.message, "must be less than damping.suppress (2500), not 2500");
    let c = main_ok(&format!("{MAIN_MIN}health:\n  probe_path: /small.bin\n"), &[]);
    assert_eq!(c.health.probe_path.as_deref(), Some("/small.bin"));
}

#[test]
fn selection_policy_is_checked() {
    let cases: &[(&str, &str, usize, usize)] = &[
        ("  weights:\n    load: -0.5\n", "selection.weights.load", 5, 5),
        ("  weights:\n    distance: .nan\n", "selection.weights.distance", 5, 5),
        ("  weights:\n    object: .inf\n", "selection.weights.object", 5, 5),
        ("  mode: filter\n  filter_radius_km: -1\n", "selection.filter_radius_km", 5, 3),
        ("  filter_radius_km: .inf\n", "selection.filter_radius_km", 4, 3),
    ];
    for &(snippet, field, line, column) in cases {
        let e = main_err(&format!("{MAIN_MIN}selection:\n{snippet}"), &[]);
        assert_eq!(
            summary(&e),
            ("main.yaml", field, ConfigErrorKind::BadValue, Some(line), Some(column)),
            "{snippet:?}: {e}"
        );
    }
    let e = main_err(&format!("{MAIN_MIN}selection:\n  weights:\n    load: -0.5\n"), &[]);
    assert_eq!(e.to_string(), "main.yaml:5:5: selection.weights.load: must be a finite number of at least 0, not -0.5");
}

#[test]
fn syntax_errors_have_a_line() {
    let e = main_err("local_addr: 198.18.0.1\nport: [\n", &[]);
    assert_eq!(summary(&e), ("main.yaml", "", ConfigErrorKind::Syntax, Some(3), Some(1)));
    assert_eq!(e.to_string(), "main.yaml:3:1: did not find expected node content, while parsing a flow node");
    // Reported before the unknown key `a` that a streaming parse would meet first.
    let e = main_err("a: b: c\n", &[]);
    assert_eq!(summary(&e), ("main.yaml", "", ConfigErrorKind::Syntax, Some(1), Some(5)));
    assert_eq!(e.message, "mapping values are not allowed in this context");
    let e = main_err(&format!("{MAIN_MIN}port: 1\nport: 2\n"), &[]);
    assert_eq!((e.kind, e.message.as_str()), (ConfigErrorKind::Syntax, "duplicate entry with key \"port\""));
}

#[test]
fn empty_file_lacks_the_required_fields() {
    for text in ["", "\n", "# nothing set\n", "~\n"] {
        let e = main_err(text, &[]);
        assert_eq!(summary(&e), ("main.yaml", "local_addr", ConfigErrorKind::MissingField, None, None), "{text:?}");
        assert_eq!(e.to_string(), "main.yaml: local_addr: missing field `local_addr`");
    }
    let e = participant_err("", &[]);
    assert_eq!(summary(&e), ("participant.yaml", "name", ConfigErrorKind::MissingField, None, None));
}

#[test]
fn file_that_is_not_a_mapping() {
    let e = main_err("- local_addr: 198.18.0.1\n", &[]);
    assert_eq!(summary(&e), ("main.yaml", "", ConfigErrorKind::WrongType, Some(1), Some(1)));
    assert_eq!(
        e.to_string(),
        "main.yaml:1:1: invalid type: a sequence, expected a mapping of settings (key: value) at the top level"
    );
    let e = main_err("# a comment\n\n42\n", &[]);
    assert_eq!(summary(&e), ("main.yaml", "", ConfigErrorKind::WrongType, Some(3), Some(1)));
    assert!(e.message.starts_with("invalid type: a number,"), "{e}");
}

#[test]
fn display_leaves_out_what_is_unknown() {
    let mut e = ConfigError {
        file: "f.yaml".into(),
        field: "x.y".into(),
        line: Some(3),
        column: None,
        kind: ConfigErrorKind::Other,
        message: "m".into(),
    };
    assert_eq!(e.to_string(), "f.yaml:3: x.y: m");
    e.line = None;
    e.column = Some(4);
    assert_eq!(e.to_string(), "f.yaml: x.y: m");
    e.field.clear();
    assert_eq!(e.to_string(), "f.yaml: m");
}

// ---------------------------------------------------------------------------------------------
// Overrides

#[test]
fn flag_overrides_the_file() {
    let text = format!("{MAIN_MIN}control:\n  restore_timeout_ms: 10000\n  port: 7200\n");
    let c = main_ok(&text, &[flag("--restore-timeout-ms", "control.restore_timeout_ms", "250")]);
    assert_eq!(c.control.restore_timeout_ms, 250);
    // The rest of the file still counts.
    assert_eq!(c.control.port, 7200);
    assert_eq!(c.control.tls, TlsConfig::main_default());
}

#[test]
fn later_flag_for_the_same_path_wins() {
    let c = main_ok(MAIN_MIN, &[flag("--port", "port", "8080"), flag("--port", "port", "8081")]);
    assert_eq!(c.port, 8081);
}

#[test]
fn flag_supplies_a_required_field_the_file_lacks() {
    let text = "name: fra-1\naddr: 198.18.1.10\nlat: 50.11\nlon: 8.68\ncache_dir: /var/cache/baton\n";
    assert_eq!(participant_ok(text, &[flag("--main-addr", "main.addr", "198.18.0.1")]), participant_defaults());
    let text = "name: fra-1\naddr: 198.18.1.10\nlat: 50.11\nlon: 8.68\ncache_dir: /var/cache/baton\nmain:\n  control_port: 7100\n";
    assert_eq!(participant_ok(text, &[flag("--main-addr", "main.addr", "198.18.0.1")]), participant_defaults());
    let c = main_ok("origin_dir: /srv/baton/origin\n", &[flag("--local-addr", "local_addr", "198.18.0.1")]);
    assert_eq!(c, main_defaults());
}

#[test]
fn every_setting_may_come_from_flags() {
    let flags =
        [flag("--local-addr", "local_addr", "198.18.0.1"), flag("--origin-dir", "origin_dir", "/srv/baton/origin")];
    assert_eq!(main_ok("", &flags), main_defaults());
    let flags = [
        flag("--name", "name", "fra-1"),
        flag("--addr", "addr", "198.18.1.10"),
        flag("--lat", "lat", "50.11"),
        flag("--lon", "lon", "8.68"),
        flag("--cache-dir", "cache_dir", "/var/cache/baton"),
        flag("--main-addr", "main.addr", "198.18.0.1"),
    ];
    assert_eq!(participant_ok("", &flags), participant_defaults());
}

#[test]
fn bad_flag_value_names_the_flag() {
    let e = main_err(MAIN_MIN, &[flag("--restore-timeout-ms", "control.restore_timeout_ms", "abc")]);
    assert_eq!(
        summary(&e),
        ("--restore-timeout-ms", "control.restore_timeout_ms", ConfigErrorKind::WrongType, None, None)
    );
    assert_eq!(
        e.to_string(),
        "--restore-timeout-ms: control.restore_timeout_ms: invalid type: string \"abc\", expected a timeout in milliseconds of at least 1"
    );
    let e = main_err(MAIN_MIN, &[flag("--path-mtu", "path_mtu", "100")]);
    assert_eq!(summary(&e), ("--path-mtu", "path_mtu", ConfigErrorKind::BadValue, None, None));
    let e = main_err(MAIN_MIN, &[flag("--local-addr", "local_addr", "198.18.0.300")]);
    assert_eq!(summary(&e), ("--local-addr", "local_addr", ConfigErrorKind::BadValue, None, None));
    // A required field the flag was to supply.
    let e = main_err("origin_dir: /o\n", &[flag("--local-addr", "local_addr", "nowhere")]);
    assert_eq!(summary(&e), ("--local-addr", "local_addr", ConfigErrorKind::BadValue, None, None));
}

#[test]
fn flag_failing_a_check_names_the_flag() {
    let e = main_err(MAIN_MIN, &[flag("--health-fall", "health.fall", "0")]);
    assert_eq!(summary(&e), ("--health-fall", "health.fall", ConfigErrorKind::BadValue, None, None));
    assert_eq!(e.to_string(), "--health-fall: health.fall: must be at least 1, not 0");
}

#[test]
fn string_fields_take_flag_text_that_looks_like_a_number() {
    let c = main_ok(
        MAIN_MIN,
        &[flag("--iface", "iface", "123"), flag("--origin-dir", "origin_dir", "42"), flag("--geoip", "geoip", "true")],
    );
    assert_eq!(c.iface, "123");
    assert_eq!(c.origin_dir, PathBuf::from("42"));
    assert_eq!(c.geoip, Some(PathBuf::from("true")));
    assert_eq!(participant_ok(PARTICIPANT_MIN, &[flag("--name", "name", "123")]).name, "123");
    // ... but a number field does not take a string.
    let e = main_err(MAIN_MIN, &[flag("--threads", "threads", "four")]);
    assert_eq!(summary(&e), ("--threads", "threads", ConfigErrorKind::WrongType, None, None));
}

#[test]
fn empty_flag_value_is_null() {
    let c = main_ok(&format!("{MAIN_MIN}geoip: /usr/share/GeoIP/lab.mmdb\n"), &[flag("--geoip", "geoip", "")]);
    assert_eq!(c.geoip, None);
    let e = main_err(MAIN_MIN, &[flag("--iface", "iface", "")]);
    assert_eq!(summary(&e), ("--iface", "iface", ConfigErrorKind::BadValue, None, None));
}

#[test]
fn flag_replaces_a_bad_value_of_the_file() {
    let c = main_ok(&format!("{MAIN_MIN}port: abc\n"), &[flag("--port", "port", "8080")]);
    assert_eq!(c.port, 8080);
}

#[test]
fn file_errors_the_flags_do_not_cure_keep_their_line() {
    // The file lacks `main.addr` (supplied by the flag) and has a bad `threads` after the
    // `main:` section: the file alone stops at the missing field, the merged config finds
    // `threads`, and it is still the file's error, on its line.
    let text = "name: fra-1\naddr: 198.18.1.10\nlat: 50.11\nlon: 8.68\ncache_dir: /c\nmain:\n  control_port: 7100\nthreads: 0\n";
    let e = participant_err(text, &[flag("--main-addr", "main.addr", "198.18.0.1")]);
    assert_eq!(summary(&e), ("participant.yaml", "threads", ConfigErrorKind::BadValue, Some(8), Some(1)));
    // A missing field the flags do not supply.
    let e = participant_err(
        "name: fra-1\naddr: 198.18.1.10\nlon: 8.68\ncache_dir: /c\n",
        &[flag("--main-addr", "main.addr", "198.18.0.1")],
    );
    assert_eq!(summary(&e), ("participant.yaml", "lat", ConfigErrorKind::MissingField, None, None));
    // A bad value the flags do not touch.
    let e = main_err(&format!("{MAIN_MIN}port: abc\n"), &[flag("--threads", "threads", "2")]);
    assert_eq!(summary(&e), ("main.yaml", "port", ConfigErrorKind::WrongType, Some(3), Some(7)));
}

#[test]
fn unknown_override_path_names_the_flag() {
    let e = main_err(MAIN_MIN, &[flag("--foo", "foo.bar", "1")]);
    assert_eq!(summary(&e), ("--foo", "foo.bar", ConfigErrorKind::UnknownField, None, None));
    assert_eq!(e.to_string(), "--foo: foo.bar: no such config field");
    let e = main_err(MAIN_MIN, &[flag("--control-prot", "control.prot", "1")]);
    assert_eq!(summary(&e), ("--control-prot", "control.prot", ConfigErrorKind::UnknownField, None, None));
    // Through a value, whether the file sets it or not.
    let e = main_err(&format!("{MAIN_MIN}port: 80\n"), &[flag("--port-x", "port.x", "1")]);
    assert_eq!(e.to_string(), "--port-x: port.x: no such config field (port is a value, not a section)");
    let e = main_err(MAIN_MIN, &[flag("--port-x", "port.x", "1")]);
    assert_eq!(summary(&e), ("--port-x", "port.x", ConfigErrorKind::UnknownField, None, None));
    let e = main_err(MAIN_MIN, &[flag("--bad", "control..port", "1")]);
    assert_eq!(summary(&e), ("--bad", "control..port", ConfigErrorKind::UnknownField, None, None));
    // Participant's own sections.
    let e = participant_err(PARTICIPANT_MIN, &[flag("--main-host", "main.host", "x")]);
    assert_eq!(summary(&e), ("--main-host", "main.host", ConfigErrorKind::UnknownField, None, None));
}

#[test]
fn flag_setting_listen_still_needs_token_file() {
    let e = main_err(MAIN_MIN, &[flag("--admin-listen", "admin.listen", "198.18.0.1:8443")]);
    assert_eq!(summary(&e), ("main.yaml", "admin.token_file", ConfigErrorKind::MissingField, None, None));
    let c = main_ok(
        MAIN_MIN,
        &[flag("--admin-listen", "admin.listen", "198.18.0.1:8443"), flag("--admin-token", "admin.token_file", "/t")],
    );
    assert_eq!(c.admin.token_file, Some(PathBuf::from("/t")));
}

// ---------------------------------------------------------------------------------------------
// Roles

#[test]
fn detect_role_by_top_level_name() {
    assert_eq!(detect_role(MAIN_EXAMPLE), ConfigRole::Main);
    assert_eq!(detect_role(PARTICIPANT_EXAMPLE), ConfigRole::Participant);
    assert_eq!(detect_role(PARTICIPANT_MIN), ConfigRole::Participant);
    // A `name:` inside the main's participant list is not top-level.
    assert_eq!(detect_role("participants:\n  - name: fra-1\n"), ConfigRole::Main);
    assert_eq!(detect_role(""), ConfigRole::Main);
    assert_eq!(detect_role("- name\n"), ConfigRole::Main);
    // Broken YAML is looked at line by line.
    assert_eq!(detect_role("name: fra-1\nlat: [\n"), ConfigRole::Participant);
    assert_eq!(detect_role("names: fra-1\nlat: [\n"), ConfigRole::Main);
}

// ---------------------------------------------------------------------------------------------
// Fuzzing

/// Override paths for the fuzzer: real fields at every depth, sections, lists and paths that
/// name nothing.
const FUZZ_PATHS: &[&str] = &[
    "port", "control.port", "control.tls.ca", "health.damping.reuse", "admin.listen", "participants", "name",
    "main.addr", "peer_cache.peers", "peer_cache.slots", "lat", "log.format.x", "a..b", "", "participants[0].name",
];

/// Override values for the fuzzer: numbers at limits, null, sections and text.
const FUZZ_RAWS: &[&str] =
    &["1", "0", "-1", "", "~", "x", "198.18.0.1:1", "[1]", "{a: 1}", "\"q", "1e400", "18446744073709551616"];

/// What a config parse must do with any text: accept it, or give an error that says something
/// and points inside the text; an accepted config serializes and reads back equal.
fn fuzz_config<T: Serialize + PartialEq + std::fmt::Debug>(
    name: &str,
    corpus: &[&[u8]],
    parse: fn(&str, &str, &[Override]) -> Result<T, ConfigError>,
) {
    use rand::Rng;
    crate::fuzz::run(
        name,
        |rng| {
            let text = crate::fuzz::bytes(rng, corpus);
            let count = if rng.gen_ratio(1, 3) { rng.gen_range(1..=2) } else { 0 };
            let overrides: Vec<Override> = (0..count)
                .map(|_| {
                    let path = FUZZ_PATHS[rng.gen_range(0..FUZZ_PATHS.len())];
                    flag("--fuzz", path, FUZZ_RAWS[rng.gen_range(0..FUZZ_RAWS.len())])
                })
                .collect();
            (String::from_utf8_lossy(&text).into_owned(), overrides)
        },
        |(text, overrides)| format!("text hex {}, overrides {overrides:?}", hex::encode(text)),
        |(text, overrides)| match parse("fuzz.yaml", text, overrides) {
            Ok(config) => {
                let written = serde_yaml::to_string(&config).expect("serializes");
                assert_eq!(parse("fuzz.yaml", &written, &[]).as_ref(), Ok(&config), "read back from {written}");
            }
            Err(e) => {
                assert!(!e.message.is_empty() && !e.to_string().is_empty(), "{e:?}");
                // Lines as YAML counts them (CR, LF, CRLF, NEL, LS and PS each end one), and one
                // more: libyaml places an end of file after an unterminated last line on the next.
                let breaks = text.replace("\r\n", "\n").matches(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']).count();
                let lines = breaks + 2;
                assert!(e.line.is_none_or(|l| (1..=lines).contains(&l)), "{e:?} in {lines} lines");
                assert!(e.column.is_none_or(|c| c >= 1), "{e:?}");
            }
        },
    );
}

#[test]
fn fuzz_main_config() {
    let listed = format!(
        "{MAIN_MIN}participants:\n  - name: fra-1\n    addr: 198.18.1.10\n    lat: 50.11\n    lon: 8.68\n\
         admin: {{listen: '198.18.0.1:8443', token_file: /t}}\nhealth:\n  probe_path: \"/p\"\n"
    );
    fuzz_config("main_config", &[MAIN_EXAMPLE.as_bytes(), MAIN_MIN.as_bytes(), listed.as_bytes()], parse_main);
}

#[test]
fn fuzz_participant_config() {
    let peers = format!(
        "{PARTICIPANT_MIN}peer_cache:\n  enabled: true\n  peers: [198.18.2.10, '198.18.3.10:9000']\n  broadcast: ~\n"
    );
    fuzz_config(
        "participant_config",
        &[PARTICIPANT_EXAMPLE.as_bytes(), PARTICIPANT_MIN.as_bytes(), peers.as_bytes()],
        parse_participant,
    );
}

/// Every mapping of `value` (sections and list entries), by config path.
fn sections(value: &serde_yaml::Value, path: String, out: &mut Vec<String>) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (key, child) in map {
                if let Some(key) = key.as_str() {
                    sections(child, join(&path, key), out);
                }
            }
            out.push(path);
        }
        serde_yaml::Value::Sequence(items) => {
            for (i, child) in items.iter().enumerate() {
                sections(child, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Every struct denies unknown fields: a key added to any section of a complete file is
/// refused as unknown, named by its path.
#[test]
fn unknown_keys_are_refused_in_every_section() {
    fn check<T: std::fmt::Debug>(text: &str, parse: fn(&str, &str, &[Override]) -> Result<T, ConfigError>) {
        let document: serde_yaml::Value = serde_yaml::from_str(text).expect("yaml");
        let mut paths = Vec::new();
        sections(&document, String::new(), &mut paths);
        assert!(paths.len() >= 5, "{paths:?}");
        for path in paths {
            let mut doc = document.clone();
            let mut node = &mut doc;
            for step in path.split('.').filter(|s| !s.is_empty()) {
                let (key, index) = match step.split_once('[') {
                    Some((key, i)) => (key, i.trim_end_matches(']').parse::<usize>().ok()),
                    None => (step, None),
                };
                node = &mut node[key];
                if let Some(i) = index {
                    node = &mut node[i];
                }
            }
            let Some(map) = node.as_mapping_mut() else { panic!("{path} is not a mapping") };
            map.insert("zz_unknown".into(), 1.into());
            let written = serde_yaml::to_string(&doc).expect("serializes");
            match parse("f.yaml", &written, &[]) {
                Err(e) => {
                    let want = join(&path, "zz_unknown");
                    assert_eq!((e.kind, e.field.as_str()), (ConfigErrorKind::UnknownField, want.as_str()));
                }
                Ok(c) => panic!("unknown key in {path:?} accepted: {c:?}"),
            }
        }
    }
    let participants = "participants:\n  - name: fra-1\n    addr: 198.18.1.10\n    lat: 50.11\n    lon: 8.68\n";
    check(&MAIN_EXAMPLE.replace("participants: []\n", participants), parse_main);
    check(PARTICIPANT_EXAMPLE, parse_participant);
}
