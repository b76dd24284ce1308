//! Operating a cluster: the authenticated control channel refuses outsiders while the cluster's
//! flows go on; every batonctl subcommand against a running main (socket and HTTP), with the
//! registry kept across a restart; the health probe through the VIP path.
//!
//! Each test has its own lab name and /21, so they run in parallel with the rest of the suite.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
