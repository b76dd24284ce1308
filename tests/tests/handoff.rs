//! The handoff cluster end to end, in labs of network namespaces, with curl as the client.
//!
//! Each test brings up its own lab (own name, own /21), so the tests run in parallel; every lab
//! is torn down when its test ends, also on failure.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use baton_tests::{curl_download, in_every_dataplane, pseudo_random, scrape_metrics, Cluster};
use sha2::Digest;

const OBJECT_BYTES: usize = 64 << 20;
/// Requests of the client that closes as soon as it has the whole response.
const CLOSE_FIRST_REQUESTS: usize = 50;

fn handoffs_now(c: &Cluster) -> u64 {
    let out = c.batonctl(&["--json", "stats"]).expect("batonctl");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats json");
    v["handoffs"].as_u64().expect("handoffs")
}

/// How long the handoff count may lag the client: the main counts a handoff after the
/// participant confirmed it, and a small object can be downloaded completely before that.
const COUNT_SETTLE: Duration = Duration::from_secs(2);

/// The main's handoff count once it reaches `want` (or, after [`COUNT_SETTLE`], whatever it
/// is), for asserting on: a count above `want` is returned at once.
fn handoffs_settled(c: &Cluster, want: u64) -> u64 {
    let deadline = Instant::now() + COUNT_SETTLE;
    loop {
        let n = handoffs_now(c);
        if n >= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The participant of the same region as `client` in the default topology (c-fra -> p-fra).
fn same_region(client: &str) -> String {
    client.replacen("c-", "p-", 1)
}

#[test]
fn each_client_is_served_by_its_nearest_participant_with_only_the_vip_as_source() {
    in_every_dataplane("tnear", "198.18.8.0/21", |mut opts| {
        opts.main_args = vec!["--metrics-addr".into(), "127.0.0.1:9470".into()];
        let c = Cluster::start(&opts).expect("cluster");
        let sha = c.write_object("big.bin", OBJECT_BYTES, 1).expect("object");
        let vip = c.lab.vip();
        for client in c.client_names() {
            let cap = c.capture(&client).expect("capture");
            let dl = curl_download(&c, &client, &c.vip_url("big.bin"), &[]).expect("curl");
            let packets = cap.finish().expect("pcap");
            let resets: Vec<_> = packets.iter().filter(|p| p.rst).collect();
            assert_eq!(dl.exit, 0, "{client}: curl failed: {}; resets captured: {resets:?}", dl.stderr);
            assert_eq!(dl.bytes, OBJECT_BYTES as u64, "{client}: size");
            assert_eq!(dl.sha256, sha, "{client}: digest");
            assert_eq!(dl.served_by(), Some(same_region(&client).as_str()), "{client}: not served by its nearest participant");
            let me = c.addr(&client).expect("addr");
            let to_me: Vec<_> = packets.iter().filter(|p| p.dst == me).collect();
            // GRO on the veth delivers up to 64 KiB per captured packet: 64 MiB is about 1024 of them.
            assert!(to_me.len() > 500, "{client}: capture saw only {} packets", to_me.len());
            let strangers: Vec<_> = to_me.iter().filter(|p| p.src != vip).collect();
            assert!(strangers.is_empty(), "{client}: packets from other sources than the VIP: {:?}", &strangers[..strangers.len().min(5)]);
            assert!(!packets.iter().any(|p| p.rst), "{client}: a reset was captured");
        }
        assert_eq!(handoffs_settled(&c, 3), 3);
        // The client's ACKs of three 64 MiB downloads went through this mode's data plane.
        let m = scrape_metrics(&c, "main", 9470);
        let forwarded = m.get("baton_dataplane_packets_total{reason=\"forward_ok\"}").copied().unwrap_or(0.0);
        assert!(forwarded > 1000.0, "--dataplane {}: only {forwarded} packets forwarded", opts.dataplane);
    });
}

#[test]
fn range_head_and_keep_alive_through_the_vip() {
    in_every_dataplane("trange", "198.18.16.0/21", |opts| {
        let c = Cluster::start(&opts).expect("cluster");
        let size = 1 << 20;
        let sha = c.write_object("r.bin", size, 2).expect("object");
        let data = pseudo_random(size, 2);
        let client = "c-fra";
        let dl = curl_download(&c, client, &c.vip_url("r.bin"), &["-r", "1000-1999"]).expect("range");
        assert_eq!(dl.exit, 0, "{}", dl.stderr);
        assert_eq!(dl.bytes, 1000);
        assert_eq!(dl.sha256, hex::encode(sha2::Sha256::digest(&data[1000..2000])), "206 body bytes");
        assert_eq!(dl.headers.get("content-range").map(String::as_str), Some("bytes 1000-1999/1048576"));
        assert_eq!(dl.served_by(), Some("p-fra"));

        let head = c.exec(client, &["curl", "-sS", "-I", &c.vip_url("r.bin")]).expect("head");
        let text = String::from_utf8_lossy(&head.stdout).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{text}");
        assert!(text.contains("content-length: 1048576"), "{text}");
        assert!(text.contains("accept-ranges: bytes"), "{text}");
        assert!(text.contains(&format!("etag: \"{}\"", &sha[..32])), "{text}");
        // A HEAD is mirror discovery: the main answers it itself, with the digests and the
        // participants' mirrors, the one it would hand this client to first.
        assert!(text.contains("x-served-by: main"), "{text}");
        assert!(text.contains("repr-digest: sha-256=:"), "{text}");
        let fra = c.addr("p-fra").expect("p-fra");
        assert!(text.contains(&format!("link: <http://{fra}/r.bin>; rel=duplicate; pri=1; geo=de")), "{text}");
        assert!(text.contains("rel=describedby; type=\"application/metalink4+xml\""), "{text}");

        // Two requests on one connection: curl reuses it, and the second is served by the participant.
        let url = c.vip_url("r.bin");
        let dir = c.lab.state_dir().display().to_string();
        let (o1, o2) = (format!("{dir}/ka1.bin"), format!("{dir}/ka2.bin"));
        let out = c
            .exec(client, &["curl", "-sS", "-v", "-o", &o1, &url, "--next", "-o", &o2, "-r", "0-99", &url])
            .expect("keep-alive");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains("Re-using existing connection") || err.contains("Reusing existing"), "second request did not reuse the connection:\n{err}");
        assert_eq!(err.matches("X-Served-By: p-fra").count(), 2, "{err}");
        assert_eq!(baton_tests::sha256_file(std::path::Path::new(&o1)).expect("o1"), sha);
        assert_eq!(std::fs::read(&o2).expect("o2"), &data[..100]);
        // One per connection that fetched bytes (the range and the keep-alive pair); the HEAD was
        // answered by the main.
        assert_eq!(handoffs_settled(&c, 2), 2, "one handoff per connection");

        // The same client port twice in a row: the second connection is a new handoff, not a packet
        // for the old flow. Whichever side closed first, the client may reuse the port at once, as a
        // busy client with tcp_tw_reuse does (otherwise its own TIME_WAIT could refuse the connect).
        let out = c.exec(client, &["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]).expect("sysctl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        for round in 0..2 {
            let dl = curl_download(&c, client, &c.vip_url("r.bin"), &["--local-port", "41234", "-H", "Connection: close"])
                .expect("curl");
            if dl.exit != 0 {
                let ss = c.exec(client, &["ss", "-tanoi"]).expect("ss");
                eprintln!("client sockets when the download failed:\n{}", String::from_utf8_lossy(&ss.stdout));
            }
            assert_eq!(dl.exit, 0, "round {round}: {}", dl.stderr);
            assert_eq!(dl.sha256, sha, "round {round}");
            assert_eq!(dl.served_by(), Some("p-fra"), "round {round}");
        }
        assert_eq!(handoffs_settled(&c, 4), 4);

        // A client that closes the moment it has the whole response (as wrk and many HTTP
        // libraries do): with Connection: close the FIN comes in the segment of the last byte,
        // so the client has seen it and closes passively, keeping no TIME_WAIT per request.
        let vip = SocketAddrV4::new(c.lab.vip(), 80);
        let time_waits = || {
            let out = c.exec(client, &["ss", "-Htan", "state", "time-wait", "dst", &vip.to_string()]).expect("ss");
            String::from_utf8_lossy(&out.stdout).lines().count()
        };
        let before = time_waits();
        let closed_early = c
            .in_node(client, move || {
                let mut complete = 0;
                for _ in 0..CLOSE_FIRST_REQUESTS {
                    let mut s = TcpStream::connect_timeout(&vip.into(), Duration::from_secs(2)).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
                    s.write_all(b"GET /r.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-999\r\nConnection: close\r\n\r\n").expect("request");
                    let mut got = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = s.read(&mut chunk) {
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&chunk[..n]);
                        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
                        if head_end.is_some_and(|h| got.len() >= h + 1000) {
                            complete += 1;
                            break;
                        }
                    }
                    drop(s);
                }
                complete
            })
            .expect("client");
        assert_eq!(closed_early, CLOSE_FIRST_REQUESTS, "every response arrived whole");
        let waiting = time_waits().saturating_sub(before);
        assert_eq!(waiting, 0, "the client holds {waiting} TIME_WAIT sockets to the VIP after closing first {CLOSE_FIRST_REQUESTS} times");
    });
}

#[test]
fn the_main_serves_when_no_participant_is_up() {
    in_every_dataplane("tnone", "198.18.24.0/21", |mut opts| {
        opts.participants = false;
        let c = Cluster::start(&opts).expect("cluster");
        let sha = c.write_object("x.bin", 8 << 20, 3).expect("object");
        for client in c.client_names() {
            let dl = curl_download(&c, &client, &c.vip_url("x.bin"), &[]).expect("curl");
            assert_eq!(dl.exit, 0, "{}", dl.stderr);
            assert_eq!(dl.sha256, sha);
            assert_eq!(dl.served_by(), Some("main"));
        }
        assert_eq!(handoffs_settled(&c, 0), 0);
    });
}

#[test]
fn stopped_participants_and_failed_restores_fall_back_to_the_main() {
    in_every_dataplane("tfail", "198.18.32.0/21", |opts| {
        let mut c = Cluster::start(&opts).expect("cluster");
        let sha = c.write_object("f.bin", 8 << 20, 4).expect("object");
        // The Frankfurt participant loses the VIP: its restore (bind to the VIP) fails for real.
        let vip = format!("{}/32", c.lab.vip());
        let out = c.exec("p-fra", &["ip", "addr", "del", &vip, "dev", "lo"]).expect("ip");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let dl = curl_download(&c, "c-fra", &c.vip_url("f.bin"), &[]).expect("curl");
        assert_eq!(dl.exit, 0, "{}", dl.stderr);
        assert_eq!(dl.sha256, sha);
        assert_eq!(dl.served_by(), Some("main"), "a failed restore must leave the request to the main");
        assert_eq!(handoffs_settled(&c, 0), 0);

        // All participants stopped: the main serves.
        for p in c.participant_names() {
            c.stop(&p, "baton-participant");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.participants().expect("list").iter().any(|r| r["connected"] == true) {
            assert!(Instant::now() < deadline, "participants still connected");
            std::thread::sleep(Duration::from_millis(50));
        }
        for client in c.client_names() {
            let dl = curl_download(&c, &client, &c.vip_url("f.bin"), &[]).expect("curl");
            assert_eq!(dl.exit, 0, "{}", dl.stderr);
            assert_eq!(dl.sha256, sha);
            assert_eq!(dl.served_by(), Some("main"));
        }
    });
}

/// Sends raw bytes to the VIP from a client and returns what came back before the close.
fn raw_exchange(c: &Cluster, client: &str, request: Vec<u8>, pause: Duration) -> (Vec<u8>, Duration) {
    let vip = SocketAddrV4::new(c.lab.vip(), 80);
    c.in_node(client, move || {
        let mut s = TcpStream::connect(vip).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let start = Instant::now();
        let _ = s.write_all(&request);
        std::thread::sleep(pause);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        (got, start.elapsed())
    })
    .expect("in client")
}

fn status_of(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(resp);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn bad_input_at_the_vip_is_answered_by_the_main_and_never_handed_off() {
    in_every_dataplane("tbad", "198.18.40.0/21", |mut opts| {
        opts.main_args = vec!["--head-timeout-ms".into(), "1500".into()];
        let c = Cluster::start(&opts).expect("cluster");
        c.write_object("ok.bin", 1000, 5).expect("object");
        // A secret next to (outside) the content root.
        std::fs::write(c.lab.state_dir().join("secret.txt"), b"TOP-SECRET").expect("secret");
        let client = "c-iad";

        let (resp, _) = raw_exchange(&c, client, b"GARBAGE\r\n\r\n".to_vec(), Duration::ZERO);
        assert_eq!(status_of(&resp), 400, "{}", String::from_utf8_lossy(&resp));

        let mut big = b"GET /ok.bin HTTP/1.1\r\nHost: x\r\n".to_vec();
        while big.len() < 20 * 1024 {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        big.extend_from_slice(b"\r\n");
        let (resp, _) = raw_exchange(&c, client, big, Duration::ZERO);
        assert_eq!(status_of(&resp), 431, "{}", String::from_utf8_lossy(&resp));

        // A head that never completes is closed after the 1.5 s deadline, not kept open.
        let (resp, took) = raw_exchange(&c, client, b"GET /ok.bin HTTP/1.1\r\nHost: x\r\n".to_vec(), Duration::ZERO);
        assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(6), "closed after {took:?}");
        assert!(resp.is_empty() || status_of(&resp) == 408, "{}", String::from_utf8_lossy(&resp));

        for target in [
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2e/secret.txt",
            "/..%2fsecret.txt",
            "/%2f..%2fsecret.txt",
            "/ok.bin%00",
            "/a/../../secret.txt",
            "/..\\secret.txt",
        ] {
            let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes();
            let (resp, _) = raw_exchange(&c, client, req, Duration::ZERO);
            let st = status_of(&resp);
            assert!(st == 400 || st == 404, "{target}: status {st}");
            assert!(!String::from_utf8_lossy(&resp).contains("TOP-SECRET"), "{target} leaked the secret");
        }
        let mut nul = b"GET /ok".to_vec();
        nul.push(0);
        nul.extend_from_slice(b".bin HTTP/1.1\r\nHost: x\r\n\r\n");
        let (resp, _) = raw_exchange(&c, client, nul, Duration::ZERO);
        assert_eq!(status_of(&resp), 400);
        let (resp, _) = raw_exchange(&c, client, b"POST /ok.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(), Duration::ZERO);
        assert_eq!(status_of(&resp), 405);
        assert_eq!(handoffs_settled(&c, 0), 0, "bad input must never be handed off");

        // And a good request on the same cluster is handed off.
        let dl = curl_download(&c, client, &c.vip_url("ok.bin"), &[]).expect("curl");
        assert_eq!(dl.served_by(), Some("p-iad"));
        assert_eq!(handoffs_settled(&c, 1), 1);
    });
}

#[test]
fn gue_encapsulation_carries_the_flow_too() {
    in_every_dataplane("tgue", "198.18.48.0/21", |mut opts| {
        opts.main_args = vec!["--encap".into(), "gue".into()];
        opts.participant_args = vec!["--encap".into(), "gue".into()];
        let c = Cluster::start(&opts).expect("cluster");
        let sha = c.write_object("g.bin", 16 << 20, 6).expect("object");
        let cap = c.capture("c-sin").expect("capture");
        let dl = curl_download(&c, "c-sin", &c.vip_url("g.bin"), &[]).expect("curl");
        let packets = cap.finish().expect("pcap");
        assert_eq!(dl.exit, 0, "{}", dl.stderr);
        assert_eq!(dl.sha256, sha);
        assert_eq!(dl.served_by(), Some("p-sin"));
        let me = c.addr("c-sin").expect("addr");
        assert!(packets.iter().filter(|p| p.dst == me).all(|p| p.src == c.lab.vip()), "only the VIP answers");
        assert!(!packets.iter().any(|p| p.rst));
        assert_eq!(handoffs_settled(&c, 1), 1);
    });
}
