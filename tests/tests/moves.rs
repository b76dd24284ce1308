//! Live connections moving between participants, in a lab with a 40 ms round trip and rate-
//! limited links (so megabytes are in flight): operator moves, drain, participant crashes, a
//! restart of the main, a slow reader and a client whose window is zero during a move.
//!
//! Every download is checked by SHA-256 of what the client received; captures on the client
//! check that no reset ever reached it. The tests share the machine's two cores with user-space
//! delay lines, so they run one at a time.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baton_tests::{in_every_dataplane, spawn_curl, Background, Cluster, ClusterOptions};
use sha2::Digest;

/// One test at a time (see the module docs).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn cluster(mut opts: ClusterOptions) -> Cluster {
    opts.topology_yaml = Some(baton_tests::wan_topology());
    Cluster::start(&opts).expect("cluster starts")
}

fn flow_rows(c: &Cluster) -> Vec<serde_json::Value> {
    c.flows().expect("flow list")
}

fn field<'a>(row: &'a serde_json::Value, k: &str) -> &'a serde_json::Value {
    row.get(k).unwrap_or(&serde_json::Value::Null)
}

/// Waits until `pred` holds for the flow list, or fails after `limit`.
fn wait_flows(c: &Cluster, limit: Duration, what: &str, mut pred: impl FnMut(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + limit;
    loop {
        let rows = flow_rows(c);
        if pred(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; flows: {rows:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The single flow's id and owner.
fn the_flow(c: &Cluster) -> (u64, String) {
    let rows = wait_flows(c, Duration::from_secs(10), "the download's flow", |rows| {
        rows.len() == 1 && field(&rows[0], "phase") == "active"
    });
    (field(&rows[0], "id").as_u64().expect("id"), field(&rows[0], "participant").as_str().unwrap_or_default().to_owned())
}

fn wait_received(dl: &mut Background, bytes: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while dl.received() < bytes {
        assert!(dl.running(), "the download ended early at {} bytes", dl.received());
        assert!(Instant::now() < deadline, "the download stalled at {} bytes", dl.received());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn batonctl_ok(c: &Cluster, args: &[&str]) -> String {
    let out = c.batonctl(args).expect("batonctl runs");
    assert!(out.status.success(), "batonctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn assert_no_reset(packets: &[baton_tests::Packet], vip: std::net::Ipv4Addr) {
    let resets: Vec<_> = packets.iter().filter(|p| p.rst).collect();
    assert!(resets.is_empty(), "resets captured at the client: {resets:?}");
    let foreign: Vec<_> = packets.iter().filter(|p| p.src_port == 80 && p.src != vip).collect();
    assert!(foreign.is_empty(), "segments from an address other than the VIP: {foreign:?}");
}

#[test]
fn three_graceful_moves_during_a_256_mib_download() {
    in_every_dataplane("tmove", "198.18.56.0/21", |opts| {
        let _serial = serial();
        let c = cluster(opts);
        let size = 256u64 << 20;
        let sha = c.write_object("big.bin", size as usize, 31).expect("object");
        c.provision("big.bin").expect("provisioned");
        let cap = c.capture("c-fra").expect("capture");
        let mut dl = spawn_curl(&c, "c-fra", &c.vip_url("/big.bin"), &[]).expect("curl");
        let (id, first) = the_flow(&c);
        assert_eq!(first, "p-fra", "the nearest participant serves first");
        let id_s = id.to_string();
        for (n, (to, fraction)) in [("p-iad", 0.15), ("p-sin", 0.40), ("p-fra", 0.65)].into_iter().enumerate() {
            wait_received(&mut dl, (size as f64 * fraction) as u64, Duration::from_secs(60));
            let out = batonctl_ok(&c, &["flow", "move", &id_s, "--to", to]);
            assert!(out.contains(to), "{out}");
            wait_flows(&c, Duration::from_secs(10), &format!("flow {id} on {to}"), |rows| {
                rows.iter().any(|r| field(r, "id") == id && field(r, "participant") == to && field(r, "phase") == "active" && field(r, "moves").as_u64() == Some(n as u64 + 1))
            });
        }
        let d = dl.finish().expect("download");
        assert_eq!(d.exit, 0, "curl: {}", d.stderr);
        assert_eq!(d.bytes, size);
        assert_eq!(d.sha256, sha);
        assert_eq!(d.served_by(), Some("p-fra"), "the head came from the first participant");
        assert_no_reset(&cap.finish().expect("capture"), c.lab.vip());
    });
}

#[test]
fn killed_participants_are_replaced_mid_download() {
    in_every_dataplane("tcrash", "198.18.64.0/21", |opts| {
        let _serial = serial();
        let mut c = cluster(opts);
        let size = 128u64 << 20;
        let sha = c.write_object("big.bin", size as usize, 32).expect("object");
        c.provision("big.bin").expect("provisioned");
        let cap = c.capture("c-fra").expect("capture");
        // At 16 MB/s the transfer lasts long enough for three kills and recoveries.
        let mut dl = spawn_curl(&c, "c-fra", &c.vip_url("/big.bin"), &["--limit-rate", "16M"]).expect("curl");
        let (id, mut owner) = the_flow(&c);
        for fraction in [0.1, 0.4, 0.7] {
            wait_received(&mut dl, (size as f64 * fraction) as u64, Duration::from_secs(60));
            let before = dl.received();
            let killed_at = Instant::now();
            c.kill(&owner, "baton-participant");
            // The main notices (the control connection closes) and rebuilds the flow elsewhere.
            let rows = wait_flows(&c, Duration::from_secs(5), "the flow on a new participant", |rows| {
                rows.iter().any(|r| field(r, "id") == id && field(r, "participant") != owner.as_str() && field(r, "phase") == "active")
            });
            let new_owner = rows.iter().find(|r| field(r, "id") == id).and_then(|r| field(r, "participant").as_str()).unwrap_or_default().to_owned();
            wait_received(&mut dl, before + (1 << 20), Duration::from_secs(10));
            eprintln!("killed {owner} at {before} bytes; {new_owner} took over, data again after {:?}", killed_at.elapsed());
            c.restart_participant(&owner).expect("participant restarts");
            c.wait_registered(3).expect("registered again");
            owner = new_owner;
        }
        let d = dl.finish().expect("download");
        assert_eq!(d.exit, 0, "curl: {}", d.stderr);
        assert_eq!(d.bytes, size);
        assert_eq!(d.sha256, sha);
        assert_no_reset(&cap.finish().expect("capture"), c.lab.vip());
    });
}

#[test]
fn a_stopped_participant_is_found_by_its_silence_and_replaced() {
    in_every_dataplane("tstop", "198.18.96.0/21", |opts| {
        let _serial = serial();
        let c = cluster(opts);
        let size = 64u64 << 20;
        let sha = c.write_object("big.bin", size as usize, 36).expect("object");
        c.provision("big.bin").expect("provisioned");
        let cap = c.capture("c-fra").expect("capture");
        let mut dl = spawn_curl(&c, "c-fra", &c.vip_url("/big.bin"), &["--limit-rate", "16M"]).expect("curl");
        let (id, owner) = the_flow(&c);
        wait_received(&mut dl, size / 4, Duration::from_secs(30));
        // SIGSTOP: its control connection stays open and its kernel keeps the connection going;
        // only its heartbeats stop. The main must notice the silence (500 ms by default).
        c.signal(&owner, "baton-participant", libc::SIGSTOP);
        let stopped = Instant::now();
        wait_flows(&c, Duration::from_secs(5), "the flow on another participant", |rows| {
            rows.iter().any(|r| field(r, "id") == id && field(r, "participant") != owner.as_str() && field(r, "phase") == "active")
        });
        let detected = stopped.elapsed();
        let d = dl.finish().expect("download");
        c.signal(&owner, "baton-participant", libc::SIGCONT);
        assert_eq!(d.exit, 0, "curl: {}", d.stderr);
        assert_eq!(d.sha256, sha);
        assert!(detected < Duration::from_secs(3), "moved {detected:?} after the stop");
        assert_no_reset(&cap.finish().expect("capture"), c.lab.vip());
    });
}

#[test]
fn drain_moves_twenty_downloads_and_undrain_takes_traffic_again() {
    in_every_dataplane("tdrain", "198.18.72.0/21", |opts| {
        let _serial = serial();
        let c = cluster(opts);
        let size = 6u64 << 20;
        let sha = c.write_object("d.bin", size as usize, 33).expect("object");
        let url = c.vip_url("/d.bin");
        let mut dls: Vec<Background> =
            (0..20).map(|_| spawn_curl(&c, "c-fra", &url, &["--limit-rate", "1M"]).expect("curl")).collect();
        wait_flows(&c, Duration::from_secs(20), "20 flows on p-fra", |rows| {
            rows.iter().filter(|r| field(r, "participant") == "p-fra" && field(r, "phase") == "active").count() == 20
        });
        for dl in &mut dls {
            wait_received(dl, 256 << 10, Duration::from_secs(20));
        }
        let out = batonctl_ok(&c, &["participant", "drain", "p-fra"]);
        assert!(out.contains("20"), "{out}");
        wait_flows(&c, Duration::from_secs(20), "no flow left on p-fra", |rows| {
            !rows.is_empty() && rows.iter().all(|r| field(r, "participant") != "p-fra" && field(r, "phase") == "active")
        });
        for dl in dls {
            let d = dl.finish().expect("download");
            assert_eq!(d.exit, 0, "curl: {}", d.stderr);
            assert_eq!(d.sha256, sha);
        }
        let d = baton_tests::curl_download(&c, "c-fra", &url, &[]).expect("download");
        assert_eq!(d.sha256, sha);
        assert_ne!(d.served_by(), Some("p-fra"), "a draining participant gets nothing new");
        batonctl_ok(&c, &["participant", "undrain", "p-fra"]);
        let d = baton_tests::curl_download(&c, "c-fra", &url, &[]).expect("download");
        assert_eq!(d.served_by(), Some("p-fra"));
    });
}

#[test]
fn main_restart_mid_download_keeps_the_flow_and_manages_it_again() {
    in_every_dataplane("trestart", "198.18.80.0/21", |opts| {
        let _serial = serial();
        let mode = opts.dataplane;
        let mut c = cluster(opts);
        let size = 128u64 << 20;
        let sha = c.write_object("big.bin", size as usize, 34).expect("object");
        c.provision("big.bin").expect("provisioned");
        let cap = c.capture("c-fra").expect("capture");
        // At 12 MB/s the download outlasts the restart and the move after it (at full speed it
        // could end while the main is down, leaving nothing to move).
        let mut dl = spawn_curl(&c, "c-fra", &c.vip_url("/big.bin"), &["--limit-rate", "12M"]).expect("curl");
        let (id, owner) = the_flow(&c);
        wait_received(&mut dl, size / 4, Duration::from_secs(60));
        // Let the flow table be saved with the response report, then kill the main.
        std::thread::sleep(Duration::from_millis(500));
        let before = dl.received();
        c.restart_main(Duration::from_secs(1)).expect("main restarts");
        // The BPF program forwards while baton-main is down; the userspace data plane is part of
        // baton-main, so there the flow is only held (no reset) until the main is back.
        if mode != "userspace" {
            assert!(dl.received() > before, "the download kept flowing while the main was down");
        }
        c.wait_registered(3).expect("participants reconnect");
        let rows = wait_flows(&c, Duration::from_secs(5), "the reloaded flow", |rows| rows.iter().any(|r| field(r, "id") == id));
        assert!(rows.iter().any(|r| field(r, "participant") == owner.as_str()), "{rows:?}");
        // Managed again: an operator move works.
        batonctl_ok(&c, &["flow", "move", &id.to_string(), "--to", "p-iad"]);
        wait_flows(&c, Duration::from_secs(10), "the flow on p-iad", |rows| {
            rows.iter().any(|r| field(r, "id") == id && field(r, "participant") == "p-iad" && field(r, "phase") == "active")
        });
        let d = dl.finish().expect("download");
        assert_eq!(d.exit, 0, "curl: {}", d.stderr);
        assert_eq!(d.sha256, sha);
        assert_no_reset(&cap.finish().expect("capture"), c.lab.vip());
    });
}

#[test]
fn slow_reader_and_zero_window_moves() {
    in_every_dataplane("tslow", "198.18.88.0/21", |opts| {
        let _serial = serial();
        let c = cluster(opts);
        let size = 8u64 << 20;
        let sha = c.write_object("s.bin", size as usize, 35).expect("object");

        // A slow reader: curl reading at 2 MB/s while the flow moves twice.
        let mut dl = spawn_curl(&c, "c-fra", &c.vip_url("/s.bin"), &["--limit-rate", "2M"]).expect("curl");
        let (id, _) = the_flow(&c);
        let id_s = id.to_string();
        wait_received(&mut dl, size / 4, Duration::from_secs(20));
        batonctl_ok(&c, &["flow", "move", &id_s, "--to", "p-iad"]);
        wait_flows(&c, Duration::from_secs(10), "the slow reader's flow on p-iad", |rows| {
            rows.iter().any(|r| field(r, "id") == id && field(r, "participant") == "p-iad" && field(r, "phase") == "active")
        });
        wait_received(&mut dl, size / 2, Duration::from_secs(20));
        batonctl_ok(&c, &["flow", "move", &id_s]);
        let d = dl.finish().expect("download");
        assert_eq!(d.exit, 0, "curl: {}", d.stderr);
        assert_eq!(d.sha256, sha);

        // A reader that stops: its window closes, the flow moves while it is zero, then it reads on.
        let vip = SocketAddrV4::new(c.lab.vip(), 80);
        let reader = std::thread::scope(|s| {
            let client = s.spawn(|| {
                c.in_node("c-fra", move || -> Result<(Vec<u8>, usize), String> {
                    let mut sock = TcpStream::connect(vip).map_err(|e| e.to_string())?;
                    sock.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
                    sock.write_all(b"GET /s.bin HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
                    let mut got = vec![0u8; 128 << 10];
                    sock.read_exact(&mut got).map_err(|e| e.to_string())?;
                    // Stop reading: the receive buffer fills and the window goes to zero.
                    std::thread::sleep(Duration::from_secs(4));
                    sock.read_to_end(&mut got).map_err(|e| e.to_string())?;
                    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no head")? + 4;
                    Ok((got[head_end..].to_vec(), head_end))
                })
            });
            let rows = wait_flows(&c, Duration::from_secs(10), "the zero-window client's flow", |rows| {
                rows.iter().any(|r| field(r, "id") != id && field(r, "phase") == "active")
            });
            let id = rows.iter().map(|r| field(r, "id").as_u64().unwrap_or(0)).max().unwrap_or(0);
            std::thread::sleep(Duration::from_millis(1500));
            batonctl_ok(&c, &["flow", "move", &id.to_string(), "--to", "p-sin"]);
            wait_flows(&c, Duration::from_secs(10), "the zero-window flow on p-sin", |rows| {
                rows.iter().any(|r| field(r, "id") == id && field(r, "participant") == "p-sin" && field(r, "phase") == "active")
            });
            client.join().expect("client thread")
        });
        let (body, _) = reader.expect("in node").expect("zero-window client");
        assert_eq!(body.len() as u64, size);
        assert_eq!(hex::encode(sha2::Sha256::digest(&body)), sha);
    });
}
