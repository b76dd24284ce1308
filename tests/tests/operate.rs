//! Operating a cluster: the authenticated control channel refuses outsiders while the cluster's
//! flows go on; every batonctl subcommand against a running main (socket and HTTP), with the
//! registry kept across a restart; the health probe through the VIP path.
//!
//! Each test has its own lab name and /21, so they run in parallel with the rest of the suite.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_io::control::{write_message, FrameReader};
use baton_shared::control::{decode_frame, encode_frame, Load, Message};
use baton_shared::geo::Coord;
use baton_shared::handoff::{BodyPart, Handoff, ObjectPlan, RepairWindow, Response, TcpState};
use baton_tests::{bin_dir, curl_download, require_root, scrape_metrics, spawn_curl, Cluster, ClusterOptions, CONTROL_PORT};
use serde_json::Value;

/// How long the tests wait for the main to notice something (a registration, a refusal, a
/// health change).
const NOTICE: Duration = Duration::from_secs(15);

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "batonctl failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("--json output does not parse ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn ctl(c: &Cluster, args: &[&str]) -> Output {
    c.batonctl(args).expect("batonctl runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn participant<'a>(rows: &'a [Value], name: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r.get("name").and_then(Value::as_str) == Some(name))
}

fn state_of(c: &Cluster, name: &str) -> Option<String> {
    let rows = c.participants().expect("participant list");
    participant(&rows, name).and_then(|r| r.get("state")).and_then(Value::as_str).map(str::to_owned)
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A sample of the main's /metrics (0 when absent).
fn metric(c: &Cluster, series: &str) -> f64 {
    scrape_metrics(c, "main", 9470).get(series).copied().unwrap_or(0.0)
}

/// A TCP relay in the main's namespace from `listen` to the main's control port that records
/// what the client sent, so a participant's registration can be replayed byte for byte.
fn recording_relay(c: &Cluster, listen: SocketAddrV4, upstream: SocketAddrV4) -> Arc<Mutex<Vec<u8>>> {
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let rec = recorded.clone();
    c.in_node("main", move || {
        let listener = TcpListener::bind(listen).expect("relay binds");
        // Threads spawned here stay in the main's namespace.
        std::thread::spawn(move || {
            if let Ok((mut client, _)) = listener.accept() {
                let Ok(mut server) = TcpStream::connect(upstream) else { return };
                let (mut c2, mut s2) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                });
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = client.read(&mut buf) {
                    if n == 0 || server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    rec.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(&buf[..n]);
                }
                // The participant is gone: so is its connection to the main.
                let _ = server.shutdown(std::net::Shutdown::Both);
            }
        });
    })
    .expect("relay starts");
    recorded
}

#[test]
fn outsiders_are_refused_and_the_cluster_serves_on() {
    if !require_root() {
        return;
    }
    let mut opts = ClusterOptions::new("tauth", "198.18.112.0/21");
    opts.participants = false;
    let mut c = Cluster::start(&opts).expect("cluster");
    for p in ["p-fra", "p-iad"] {
        c.start_participant(p, &[]).expect("participant");
    }
    c.wait_registered(2).expect("registered");
    let sha = c.write_object("long.bin", 48 << 20, 31).expect("object");
    let dl = spawn_curl(&c, "c-fra", &c.vip_url("long.bin"), &["--limit-rate", "6M"]).expect("download");
    let main_addr = c.addr("main").expect("main addr");
    let main_ctl = format!("{main_addr}:{CONTROL_PORT}");
    let refused = |c: &Cluster, reason: &str| metric(c, &format!("baton_control_refused_total{{reason=\"{reason}\"}}"));

    // A participant whose certificate comes from another CA.
    let other = c.lab.state_dir().join("other-ca");
    baton_io::tls::init_ca(&other, "Some other CA", 30, true).expect("other CA");
    baton_io::tls::issue(&other, "p-sin", baton_io::tls::Role::Participant, 30, &other, true).expect("other cert");
    let mut args = c.participant_args("p-sin").expect("args");
    let f = |name: &str| other.join(name).display().to_string();
    args.extend(["--tls-ca".into(), c.tls_dir.join("ca.pem").display().to_string(), "--tls-cert".into(), f("p-sin.pem"), "--tls-key".into(), f("p-sin.key")]);
    c.start_process("p-sin", "baton-participant", &args).expect("foreign participant starts");
    wait_until("the foreign certificate to be refused", NOTICE, || refused(&c, "tls") >= 1.0);
    assert!(participant(&c.participants().expect("list"), "p-sin").is_none(), "a foreign participant must not register");
    c.kill("p-sin", "baton-participant");

    // A valid certificate of another participant, used to claim a name it was not issued to.
    let mut args = c.participant_args("p-sin").expect("args");
    args.extend(c.tls_args("p-iad"));
    c.start_process("p-sin", "baton-participant", &args).expect("impostor starts");
    wait_until("the impostor to be refused", NOTICE, || refused(&c, "identity") >= 1.0);
    assert!(participant(&c.participants().expect("list"), "p-sin").is_none(), "a name the certificate does not prove must not register");
    c.kill("p-sin", "baton-participant");

    // No credentials: TLS without a client certificate, and plain text.
    let before = refused(&c, "tls");
    let out = c.exec("c-iad", &["curl", "-sSk", "--max-time", "5", &format!("https://{main_ctl}/")]).expect("curl");
    assert!(!out.status.success(), "TLS without a client certificate must fail");
    let out = c.exec("c-iad", &["curl", "-sS", "--max-time", "5", &format!("http://{main_ctl}/")]).expect("curl");
    assert!(!out.status.success(), "plain text must fail");
    wait_until("both credential-less attempts to be counted", NOTICE, || refused(&c, "tls") >= before + 2.0);

    // A recorded registration, replayed byte for byte on a new connection.
    let relay = SocketAddrV4::new(main_addr, 7101);
    let recorded = recording_relay(&c, relay, SocketAddrV4::new(main_addr, CONTROL_PORT));
    c.start_participant("p-sin", &["--control-port", "7101"]).expect("p-sin through the relay");
    wait_until("p-sin to register through the relay", NOTICE, || state_of(&c, "p-sin").as_deref() == Some("healthy"));
    c.kill("p-sin", "baton-participant");
    wait_until("p-sin to be gone", NOTICE, || state_of(&c, "p-sin").is_none());
    let bytes = recorded.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(bytes.len() > 200, "the relay recorded the handshake and registration ({} bytes)", bytes.len());
    let before = refused(&c, "tls");
    let answer = c
        .in_node("p-sin", move || -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect(SocketAddrV4::new(main_addr, CONTROL_PORT))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(&bytes)?;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            Ok(out)
        })
        .expect("replay runs")
        .expect("replay connects");
    wait_until("the replay to be refused", NOTICE, || refused(&c, "tls") > before);
    std::thread::sleep(Duration::from_millis(300));
    assert!(state_of(&c, "p-sin").is_none(), "a replayed registration must not register ({} bytes came back)", answer.len());

    // The cluster served on: the download is whole, and the real participants are connected.
    let d = dl.finish().expect("download finishes");
    assert_eq!(d.exit, 0, "download failed: {}", d.stderr);
    assert_eq!(d.sha256, sha);
    assert_eq!(d.served_by(), Some("p-fra"));
    for p in ["p-fra", "p-iad"] {
        assert_eq!(state_of(&c, p).as_deref(), Some("healthy"), "{p} stays connected");
    }
}

#[test]
fn batonctl_operates_the_cluster() {
    if !require_root() {
        return;
    }
    let block = "198.18.120.0/21";
    let token_file = std::env::temp_dir().join(format!("baton-tctl-token-{}", std::process::id()));
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef0123\n").expect("token");
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let mut opts = ClusterOptions::new("tctl", block);
    opts.main_args = vec![
        "--admin-listen".into(),
        "198.18.120.2:9480".into(),
        "--admin-token-file".into(),
        token_file.display().to_string(),
    ];
    let mut c = Cluster::start(&opts).expect("cluster");
    let sha = c.write_object("big.bin", 64 << 20, 7).expect("object");

    // participant list / show
    let rows = json(&ctl(&c, &["--json", "participant", "list"]));
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    for r in rows {
        assert_eq!(r.get("state").and_then(Value::as_str), Some("healthy"), "{r}");
        assert_eq!(r.get("connected").and_then(Value::as_bool), Some(true));
    }
    let table = stdout(&ctl(&c, &["participant", "list"]));
    assert!(table.starts_with("NAME") && table.contains("p-sin") && table.contains("healthy"), "{table}");
    let show = json(&ctl(&c, &["--json", "participant", "show", "p-fra"]));
    assert_eq!(show["participant"]["name"], "p-fra");
    assert!(show["participant"]["load"]["load_avg_milli"].is_u64(), "heartbeats carry load figures: {show}");
    assert!(stdout(&ctl(&c, &["participant", "show", "p-fra"])).contains("load average"));
    let missing = ctl(&c, &["participant", "show", "p-nowhere"]);
    assert_eq!(missing.status.code(), Some(1), "an unknown participant is a refusal");

    // explain ranks the lab's clients: each region's client gets its region's participant.
    for (client, want) in [("c-fra", "p-fra"), ("c-iad", "p-iad"), ("c-sin", "p-sin")] {
        let ip = c.addr(client).expect("client").to_string();
        let e = json(&ctl(&c, &["--json", "explain", &ip, "/big.bin"]));
        assert_eq!(e["ranking"]["winner"], want, "{client}: {e}");
        let ranked = e["ranking"]["ranked"].as_array().expect("ranked");
        assert_eq!(ranked.len(), 3);
        assert_eq!(ranked[0]["name"], want);
        let d: Vec<f64> = ranked.iter().map(|r| r["distance_km"].as_f64().expect("distance")).collect();
        assert!(d[0] < d[1] && d[0] < d[2], "{client}: the winner is the nearest here: {d:?}");
        let human = stdout(&ctl(&c, &["explain", &ip]));
        assert!(human.contains(&format!("{want} wins")), "{human}");
    }
    // geo
    let ip = c.addr("c-fra").expect("c-fra").to_string();
    let g = json(&ctl(&c, &["--json", "geo", &ip]));
    assert_eq!(g["found"], true);
    assert_eq!(g["city"], "Mainz");
    assert!((g["lat"].as_f64().expect("lat") - 50.0).abs() < 0.5, "{g}");
    assert!(stdout(&ctl(&c, &["geo", "198.51.100.1"])).contains("not in the GeoIP database"));

    // add / drain, then a restart of the main keeps both
    let extra_ip = "198.18.127.9";
    let out = ctl(&c, &["participant", "add", "p-par", "--addr", extra_ip, "--lat", "48.85", "--lon", "2.35", "--capacity", "50"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(state_of(&c, "p-par").as_deref(), Some("down"));
    assert!(ctl(&c, &["participant", "drain", "p-iad"]).status.success());
    assert_eq!(state_of(&c, "p-iad").as_deref(), Some("draining"));
    let iad_client = c.addr("c-iad").expect("c-iad").to_string();
    let e = json(&ctl(&c, &["--json", "explain", &iad_client]));
    assert_eq!(e["ranking"]["winner"], "p-fra", "a drained participant gets no new flows: {e}");
    c.restart_main(Duration::from_millis(200)).expect("main restarts");
    wait_until("the participants to reconnect", NOTICE, || {
        c.participants().map(|r| r.iter().filter(|p| p["connected"] == true).count() == 3).unwrap_or(false)
    });
    assert_eq!(state_of(&c, "p-par").as_deref(), Some("down"), "an added participant survives a restart");
    assert_eq!(state_of(&c, "p-iad").as_deref(), Some("draining"), "a drain survives a restart");
    assert!(ctl(&c, &["participant", "undrain", "p-iad"]).status.success());
    assert_eq!(state_of(&c, "p-iad").as_deref(), Some("healthy"));
    assert!(ctl(&c, &["participant", "remove", "p-par"]).status.success());
    assert!(state_of(&c, "p-par").is_none());
    assert_eq!(ctl(&c, &["participant", "remove", "p-par"]).status.code(), Some(1));

    // flow list / show / move during a download
    let dl = spawn_curl(&c, "c-fra", &c.vip_url("big.bin"), &["--limit-rate", "8M"]).expect("download");
    let mut id = None;
    wait_until("the download's flow", NOTICE, || {
        let rows = json(&ctl(&c, &["--json", "flow", "list"]));
        id = rows.as_array().and_then(|r| r.first()).and_then(|r| r["id"].as_u64());
        id.is_some()
    });
    let id = id.expect("flow id").to_string();
    // A flow still being handed off cannot move yet; wait until bytes flow.
    wait_until("the flow to be served", NOTICE, || {
        json(&ctl(&c, &["--json", "flow", "show", &id]))["handing_off"] == false
    });
    assert!(stdout(&ctl(&c, &["flow", "list"])).contains("p-fra"));
    let f = json(&ctl(&c, &["--json", "flow", "show", &id]));
    assert_eq!(f["flow"]["participant"], "p-fra");
    assert!(stdout(&ctl(&c, &["flow", "show", &id])).contains("participant   p-fra"));
    assert_eq!(ctl(&c, &["flow", "show", "999999"]).status.code(), Some(1));
    let m = json(&ctl(&c, &["--json", "flow", "move", &id, "--to", "p-iad"]));
    assert_eq!(m["moving"][0]["to"], "p-iad");
    wait_until("the flow to move", NOTICE, || {
        let f = json(&ctl(&c, &["--json", "flow", "show", &id]));
        f["flow"]["participant"] == "p-iad" && f["flow"]["phase"] == "active"
    });
    let d = dl.finish().expect("download finishes");
    assert_eq!(d.exit, 0, "{}", d.stderr);
    assert_eq!(d.sha256, sha);

    // stats
    let s = json(&ctl(&c, &["--json", "stats"]));
    assert!(s["handoffs"].as_u64().expect("handoffs") >= 1);
    assert!(s["moves_done"].as_u64().expect("moves") >= 1);
    assert_eq!(s["participants"], 3);
    assert!(stdout(&ctl(&c, &["stats"])).contains("handoffs"));

    // the HTTP admin API needs the token
    let batonctl = bin_dir().join("batonctl").display().to_string();
    let url = "http://198.18.120.2:9480";
    let tf = token_file.display().to_string();
    let out = c.exec("main", &[&batonctl, "--admin", url, "--token-file", &tf, "--json", "participant", "list"]).expect("exec");
    assert_eq!(json(&out).as_array().map(Vec::len), Some(3));
    let out = c.exec("main", &[&batonctl, "--admin", url, "participant", "list"]).expect("exec");
    assert_eq!(out.status.code(), Some(1), "no token: refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
    let wrong = c.lab.state_dir().join("wrong-token");
    std::fs::write(&wrong, "ffffffffffffffffffffffffffffffffffff\n").expect("wrong token");
    let out = c.exec("main", &[&batonctl, "--admin", url, "--token-file", &wrong.display().to_string(), "stats"]).expect("exec");
    assert_eq!(out.status.code(), Some(1), "wrong token: refused");
    assert!(metric(&c, "baton_admin_refused_total") >= 2.0);
    // unreachable
    let out = std::process::Command::new(bin_dir().join("batonctl")).args(["--admin", "/nonexistent/baton.sock", "stats"]).output().expect("run");
    assert_eq!(out.status.code(), Some(3));

    // config check, and the cluster's certificates
    let dir = c.lab.state_dir().join("ctl-files");
    std::fs::create_dir_all(&dir).expect("dir");
    let good = write(&dir, "good.yaml", "local_addr: 198.18.0.2\norigin_dir: /srv/origin\nselection:\n  mode: filter\n");
    let out = ctl(&c, &["config", "check", &good]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = write(&dir, "bad.yaml", "local_addr: 198.18.0.2\norigin_dir: /srv/origin\ncontrol:\n  prot: 7100\n");
    let out = ctl(&c, &["config", "check", &bad]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:4") && err.contains("control.prot"), "the error names the file, line and field: {err}");
    let v = json(&std::process::Command::new(bin_dir().join("batonctl")).args(["--json", "config", "check", &good]).output().expect("run"));
    assert_eq!(v["role"], "main");
    let part = write(&dir, "p.yaml", "name: p-x\naddr: 198.18.1.2\nlat: 50\nlon: 8\ncache_dir: /var/cache/baton\nmain:\n  addr: 198.18.0.2\n");
    assert!(ctl(&c, &["config", "check", &part]).status.success());
    let ca = dir.join("ca");
    let ca_s = ca.display().to_string();
    assert!(ctl(&c, &["cluster", "init", &ca_s]).status.success());
    assert!(ca.join("ca.pem").exists() && ca.join("ca.key").exists());
    assert_eq!(ctl(&c, &["cluster", "init", &ca_s]).status.code(), Some(5), "init never overwrites a CA");
    assert!(ctl(&c, &["cluster", "issue", "p-new", "--ca-dir", &ca_s]).status.success());
    assert!(ctl(&c, &["cluster", "issue", "main", "--ca-dir", &ca_s, "--main", "--ip", "198.18.0.2"]).status.success());
    assert!(ca.join("p-new.pem").exists() && ca.join("main.key").exists());
    assert_eq!(ctl(&c, &["cluster", "issue", "Bad_Name", "--ca-dir", &ca_s]).status.code(), Some(5));
    let _ = std::fs::remove_file(&token_file);
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p: PathBuf = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

#[test]
fn the_probe_catches_a_participant_without_the_vip() {
    if !require_root() {
        return;
    }
    let mut opts = ClusterOptions::new("tprobe", "198.18.128.0/21");
    opts.main_args = vec!["--probe-interval-ms".into(), "300".into()];
    let c = Cluster::start(&opts).expect("cluster");
    let sha = c.write_object("small.bin", 256 << 10, 5).expect("object");
    wait_until("a first good probe of p-fra", NOTICE, || metric(&c, "baton_probes_total{result=\"ok\"}") >= 3.0);
    let d = curl_download(&c, "c-fra", &c.vip_url("small.bin"), &[]).expect("download");
    assert_eq!((d.sha256.as_str(), d.served_by()), (sha.as_str(), Some("p-fra")));

    // The process lives, but the VIP is gone from its lo: restores fail or answers never arrive.
    let vip = format!("{}/32", c.lab.vip());
    let out = c.exec("p-fra", &["ip", "addr", "del", &vip, "dev", "lo"]).expect("ip");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("p-fra to be found unhealthy", NOTICE, || state_of(&c, "p-fra").as_deref() == Some("unhealthy"));
    let show = json(&ctl(&c, &["--json", "participant", "show", "p-fra"]));
    assert_eq!(show["health"]["healthy"], false, "{show}");
    assert_eq!(show["health"]["last_probe"]["ok"], false, "{show}");
    assert_eq!(show["participant"]["connected"], true, "the process still lives: {show}");
    assert!(metric(&c, "baton_probes_total{result=\"failed\"}") >= 2.0);
    let ip = c.addr("c-fra").expect("c-fra").to_string();
    let e = json(&ctl(&c, &["--json", "explain", &ip]));
    assert_ne!(e["ranking"]["winner"], "p-fra", "{e}");
    for _ in 0..3 {
        let d = curl_download(&c, "c-fra", &c.vip_url("small.bin"), &[]).expect("download");
        assert_eq!(d.sha256, sha);
        assert_eq!(d.served_by(), Some("p-iad"), "the next nearest healthy participant serves");
    }

    // The VIP is back: it serves again.
    let out = c.exec("p-fra", &["ip", "addr", "add", &vip, "dev", "lo"]).expect("ip");
    assert!(out.status.success());
    wait_until("p-fra to be healthy again", NOTICE, || state_of(&c, "p-fra").as_deref() == Some("healthy"));
    let d = curl_download(&c, "c-fra", &c.vip_url("small.bin"), &[]).expect("download");
    assert_eq!((d.sha256.as_str(), d.served_by()), (sha.as_str(), Some("p-fra")));
}

/// The main's `baton_control_refused_total`, by reason.
fn refusals(c: &Cluster) -> BTreeMap<String, f64> {
    let prefix = "baton_control_refused_total{reason=\"";
    scrape_metrics(c, "main", 9470)
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.strip_suffix("\"}")?.to_owned(), v)))
        .collect()
}

/// Each reason's growth from `base` to `now` (reasons that did not grow are left out).
fn growth(base: &BTreeMap<String, f64>, now: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    now.iter()
        .map(|(k, v)| (k.clone(), v - base.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

/// Whether `fd` has something to read (data or an end) within `wait`.
fn readable(fd: std::os::fd::RawFd, wait: Duration) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// A connection record as a participant would release it, for `flow` between `client` and `vip`.
fn made_up_handoff(flow: u64, client: SocketAddrV4, vip: SocketAddrV4) -> Handoff {
    let tcp = TcpState {
        local: vip,
        remote: client,
        snd_seq: 0x1000_0000,
        rcv_seq: 0x2000_0000,
        mss: 1448,
        snd_wscale: 7,
        rcv_wscale: 7,
        sack: true,
        timestamps: true,
        ts_val: 12345,
        window: RepairWindow { snd_wl1: 0x2000_0000, snd_wnd: 64_000, max_window: 64_000, rcv_wnd: 65_000, rcv_wup: 0x2000_0000 },
    };
    Handoff { flow_id: flow, tcp, request: Vec::new(), object: None, snd_offset: 0, in_flight: 0, pending: Vec::new() }
}

#[test]
fn an_authenticated_participant_cannot_steer_flows_it_does_not_own() {
    if !require_root() {
        return;
    }
    let c = Cluster::start(&ClusterOptions::new("tforge", "198.19.40.0/21")).expect("cluster");
    // Only objects over the probe limit: no probe hands the rogue a connection of its own.
    let size = 64usize << 20;
    let sha = c.write_object("big.bin", size, 43).expect("object");
    let mut dl = spawn_curl(&c, "c-fra", &c.vip_url("big.bin"), &["--limit-rate", "8M"]).expect("download");
    // The flow as its owner serves it: restored, its response reported (and its standby chosen,
    // before the rogue exists).
    let mut row = Value::Null;
    wait_until("the download to be served", NOTICE, || {
        let rows = c.flows().expect("flows");
        row = rows.first().cloned().unwrap_or(Value::Null);
        rows.len() == 1 && row["phase"] == "active" && row["object"].is_string() && dl.received() >= 1 << 20
    });
    let flow = row["id"].as_u64().expect("flow id");
    let owner = row["participant"].as_str().expect("owner").to_owned();
    let object = row["object"].clone();
    assert_eq!(owner, "p-fra", "the nearest participant serves: {row}");
    let client: SocketAddrV4 = row["client"].as_str().and_then(|s| s.parse().ok()).expect("client address");
    let vip = SocketAddrV4::new(c.lab.vip(), 80);
    let nowhere = flow ^ 0x5eed_0000_0000;

    // p-rogue: a certificate from the lab CA, so it passes TLS and registers like any participant.
    let rogue = "p-rogue";
    let dir = c.tls_dir.clone();
    baton_io::tls::issue(&dir, rogue, baton_io::tls::Role::Participant, baton_io::tls::DEFAULT_VALIDITY_DAYS, &dir, false).expect("rogue certificate");
    let cfg = baton_io::tls::client_config(&dir.join(baton_io::tls::CA_CERT_FILE), &dir.join(format!("{rogue}.pem")), &dir.join(format!("{rogue}.key")))
        .expect("rogue client config");
    let main_addr = c.addr("main").expect("main addr");
    let rogue_addr = c.addr("c-sin").expect("c-sin addr");
    let tcp = c
        .in_node("c-sin", move || std::net::TcpStream::connect(SocketAddrV4::new(main_addr, CONTROL_PORT)))
        .expect("in c-sin")
        .expect("connects to the control port");
    tcp.set_nonblocking(true).expect("nonblocking");
    let rt = baton_io::cli::runtime(1).expect("runtime");
    let mut tls = rt
        .block_on(async move { baton_io::tls::connect(cfg, tcp.try_into()?, Duration::from_secs(5)).await.map_err(std::io::Error::other) })
        .expect("TLS handshake");
    // Far from every client, so nothing would choose it anyway.
    let register = Message::Register {
        name: rogue.to_owned(),
        addr: rogue_addr,
        coord: Coord::new(-41.29, 174.78).expect("coord"),
        capacity: baton_shared::config::DEFAULT_CAPACITY,
        mirror_port: 0,
    };
    let answer = rt
        .block_on(async {
            write_message(&mut tls, &register).await?;
            FrameReader::new(&mut tls).next().await
        })
        .expect("registration answer");
    assert!(matches!(answer, Some(Message::Registered { .. })), "the rogue registers: {answer:?}");
    wait_until("p-rogue to be listed", NOTICE, || {
        participant(&c.participants().expect("list"), rogue).is_some_and(|r| r["connected"] == true)
    });

    // What it forges, and the reason the main must count each under (every one is refused).
    let response = Response {
        start: 0,
        request_end: 1,
        keep_alive: true,
        head: b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec(),
        body: Some(BodyPart { object: ObjectPlan { path: "evil.bin".to_owned(), size: 1 << 20, sha256: [0xee; 32] }, offset: 0, len: 1 << 20 }),
    };
    let elsewhere = SocketAddrV4::new(c.addr("c-iad").expect("c-iad"), client.port());
    let released = Message::Released(made_up_handoff(flow, client, vip));
    let owner_addr = c.addr(&owner).expect("owner addr");
    let forged: Vec<(&str, Message, &str)> = vec![
        ("a close report of the download", Message::FlowClosed { flow_id: flow, bytes_sent: size as u64 }, "not_owner"),
        ("a made-up response on the download", Message::Serving { flow_id: flow, response: response.clone() }, "not_owner"),
        ("a refused release of the download", Message::ReleaseFailed { flow_id: flow, reason: "kept".into() }, "not_owner"),
        ("the download released toward another client", Message::Released(made_up_handoff(flow, elsewhere, vip)), "not_owner"),
        ("the download released with its own addresses", released.clone(), "not_owner"),
        ("a restore nobody awaits", Message::Restored { flow_id: flow }, "not_owner"),
        ("a failed restore nobody awaits", Message::RestoreFailed { flow_id: flow, reason: "no".into() }, "not_owner"),
        ("a prepare nobody asked for", Message::Prepared { flow_id: flow }, "not_asked"),
        ("a failed prepare nobody asked for", Message::PrepareFailed { flow_id: flow, reason: "no".into() }, "not_asked"),
        ("a release order", Message::Release { flow_id: flow }, "unexpected_kind"),
        ("a handoff of the download", Message::Handoff(made_up_handoff(flow, client, vip)), "unexpected_kind"),
        ("a prepare order", Message::Prepare { flow_id: flow, objects: vec![response.body.clone().expect("body").object] }, "unexpected_kind"),
        ("a registration answer", Message::Registered { participant_id: 1 }, "unexpected_kind"),
        ("a rejection", Message::Rejected { reason: "go away".into() }, "unexpected_kind"),
        ("a second registration", register.clone(), "unexpected_kind"),
        (
            "a second registration as the owner",
            Message::Register { name: owner.clone(), addr: owner_addr, coord: Coord::new(50.11, 8.68).expect("coord"), capacity: 1, mirror_port: 0 },
            "unexpected_kind",
        ),
        ("a close report of no flow", Message::FlowClosed { flow_id: nowhere, bytes_sent: 1 }, "not_owner"),
        ("a response on no flow", Message::Serving { flow_id: nowhere, response }, "not_owner"),
        ("a release of no flow", Message::Released(made_up_handoff(nowhere, client, vip)), "not_owner"),
        ("a refused release of no flow", Message::ReleaseFailed { flow_id: nowhere, reason: "kept".into() }, "not_owner"),
        ("a restore of no flow", Message::Restored { flow_id: nowhere }, "not_owner"),
        ("a prepare of no flow", Message::Prepared { flow_id: nowhere }, "not_asked"),
        ("the release again (replay)", released, "not_owner"),
        ("the close report again (replay)", Message::FlowClosed { flow_id: flow, bytes_sent: size as u64 }, "not_owner"),
        ("the prepare again (replay)", Message::Prepared { flow_id: flow }, "not_asked"),
        ("the release order again (replay)", Message::Release { flow_id: flow }, "unexpected_kind"),
    ];
    let mut expected: BTreeMap<String, f64> = BTreeMap::new();
    for (_, _, reason) in &forged {
        *expected.entry((*reason).to_owned()).or_default() += 1.0;
    }
    assert_eq!(
        expected,
        BTreeMap::from([("not_asked".to_owned(), 4.0), ("not_owner".to_owned(), 14.0), ("unexpected_kind".to_owned(), 8.0)]),
        "the forged messages, counted by hand"
    );

    let base = refusals(&c);
    let mut so_far: BTreeMap<String, f64> = BTreeMap::new();
    for (what, msg, reason) in &forged {
        // Each frame decodes to exactly what was meant: the main reads it, nothing closes.
        let mut frame = Vec::new();
        encode_frame(msg, &mut frame);
        assert_eq!(decode_frame(&frame), Ok(Some((msg.clone(), frame.len()))), "{what} is a well-formed frame");
        // A heartbeat first: accepted, it keeps the rogue a live participant and counts nothing.
        rt.block_on(async {
            write_message(&mut tls, &Message::Heartbeat(Load::default())).await?;
            write_message(&mut tls, msg).await
        })
        .unwrap_or_else(|e| panic!("sending {what}: {e}"));
        *so_far.entry((*reason).to_owned()).or_default() += 1.0;
        let mut seen = BTreeMap::new();
        wait_until(&format!("{what} to be refused as {reason}"), NOTICE, || {
            seen = growth(&base, &refusals(&c));
            seen.get(*reason) >= so_far.get(*reason)
        });
        assert_eq!(seen, so_far, "after {what}: refusals by reason");
        let rows = c.flows().expect("flows");
        assert_eq!(rows.len(), 1, "after {what}: {rows:?}");
        let r = &rows[0];
        assert_eq!(
            (r["id"].as_u64(), r["participant"].as_str(), r["phase"].as_str(), &r["object"], r["moves"].as_u64()),
            (Some(flow), Some(owner.as_str()), Some("active"), &object, Some(0)),
            "after {what}: the flow stays its owner's, untouched: {r}"
        );
    }
    assert!(dl.running(), "the forging ran while the download did ({} bytes arrived)", dl.received());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(growth(&base, &refusals(&c)), expected, "refusals by reason");

    // Refusals close nothing: the rogue is still a connected participant, and the main sent it
    // nothing (no handoff, no prepare) after its registration.
    let fd = std::os::fd::AsRawFd::as_raw_fd(tls.get_ref().0);
    assert!(!readable(fd, Duration::from_millis(300)), "the main sent the rogue something, or closed its connection");
    assert_eq!(participant(&c.participants().expect("list"), rogue).map(|r| r["connected"].clone()), Some(Value::Bool(true)));

    // A frame the main cannot decode (a release with MSS 0) ends the connection; it is not a
    // refusal of a message, so no counter moves.
    let mut broken = made_up_handoff(flow, client, vip);
    broken.tcp.mss = 0;
    let broken = Message::Released(broken);
    let mut frame = Vec::new();
    encode_frame(&broken, &mut frame);
    assert!(decode_frame(&frame).is_err(), "an MSS of 0 does not decode");
    rt.block_on(write_message(&mut tls, &broken)).expect("sending the broken frame");
    assert!(readable(fd, NOTICE), "the main closes the connection");
    let end = rt.block_on(async { FrameReader::new(&mut tls).next().await });
    assert!(!matches!(end, Ok(Some(_))), "nothing but the end arrives: {end:?}");
    wait_until("p-rogue to be gone", NOTICE, || participant(&c.participants().expect("list"), rogue).is_none());
    drop(tls);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(growth(&base, &refusals(&c)), expected, "refusals by reason after the close");
    eprintln!("forged {} messages; refusals by reason: {:?}", forged.len(), growth(&base, &refusals(&c)));

    // The download is whole and was its owner's to the end; the cluster serves on.
    let d = dl.finish().expect("download finishes");
    assert_eq!(d.exit, 0, "download failed: {}", d.stderr);
    assert_eq!(d.sha256, sha);
    assert_eq!(d.served_by(), Some(owner.as_str()));
    for p in ["p-fra", "p-iad", "p-sin"] {
        assert_eq!(state_of(&c, p).as_deref(), Some("healthy"), "{p} stays connected");
    }
    let sha2 = c.write_object("after.bin", 4 << 20, 44).expect("object");
    let d = curl_download(&c, "c-fra", &c.vip_url("after.bin"), &[]).expect("download");
    assert_eq!((d.exit, d.sha256.as_str(), d.served_by()), (0, sha2.as_str(), Some("p-fra")), "{}", d.stderr);
}
