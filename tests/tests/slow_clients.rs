//! Slow and idle clients against a cluster with short timeouts: slowloris heads at the VIP,
//! clients that request a large object and never read it, and thousands of idle connections.
//! Every such connection must be closed by its timeout (plus [`SLACK`]), the main's memory must
//! stay bounded, and a legitimate download running meanwhile must arrive intact.
//!
//! The three tests share one lab name and block ([`LAB`], [`BLOCK`]), so they take turns
//! ([`ONE_LAB`]). tc mode only: what is tested is the servers' own I/O, not the data plane.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use baton_tests::{in_dataplanes, scrape_metrics, spawn_curl, Cluster, ClusterOptions};

const LAB: &str = "tslowc";
const BLOCK: &str = "198.19.24.0/21";
/// The labs of this file use one name and block: one at a time.
static ONE_LAB: Mutex<()> = Mutex::new(());

/// `--head-timeout-ms` of the main and the participants: between the one-byte-per-second
/// dribble's third and fourth byte, so the close never races a byte.
const HEAD_TIMEOUT: Duration = Duration::from_millis(2500);
/// `--send-timeout-ms` of the main and the participants.
const SEND_TIMEOUT: Duration = Duration::from_millis(2000);
/// How much later than its timeout a connection may be seen closed: scheduling, the poll
/// interval of the clients below, and a loaded host.
const SLACK: Duration = Duration::from_secs(2);
/// How often the clients below look at their sockets.
const POLL: Duration = Duration::from_millis(20);

const SLOWLORIS_CONNECTIONS: usize = 200;
const SLOW_READERS: usize = 20;
const IDLE_CONNECTIONS: usize = 2000;
/// Most the main's resident memory may grow while it holds [`IDLE_CONNECTIONS`] idle
/// connections: 32 KiB each, several times what a waiting connection needs.
const IDLE_RSS_BOUND_BYTES: u64 = 64 << 20;

/// The legitimate download's object.
const OBJECT: &str = "big.bin";
const OBJECT_BYTES: usize = 64 << 20;
/// What the slowloris clients dribble.
const SLOW_HEAD: &[u8] = b"GET /big.bin HTTP/1.1\r\nHost: vip\r\n\r\n";

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

/// Runs `scenario` on a cluster of the default topology whose main and participants have the
/// short timeouts above, with the object written to the origin and provisioned everywhere.
fn with_cluster(scenario: impl Fn(&Cluster, &str)) {
    let _turn = ONE_LAB.lock().unwrap_or_else(|p| p.into_inner());
    raise_nofile();
    in_dataplanes(&["tc"], LAB, BLOCK, |mut opts: ClusterOptions| {
        let timeouts = vec!["--head-timeout-ms".to_owned(), ms(HEAD_TIMEOUT), "--send-timeout-ms".to_owned(), ms(SEND_TIMEOUT)];
        opts.main_args = timeouts.clone();
        opts.participant_args = timeouts;
        let c = Cluster::start(&opts).expect("cluster");
        let sha = c.write_object(OBJECT, OBJECT_BYTES, 24).expect("object");
        c.provision(OBJECT).expect("provision");
        scenario(&c, &sha);
    });
}

/// Lifts the soft descriptor limit to the hard one, for this process and the servers it starts
/// (the idle test holds thousands of sockets on both ends).
fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid rlimit struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0, "getrlimit");
        assert!(lim.rlim_max >= (IDLE_CONNECTIONS + 1024) as libc::rlim_t, "RLIMIT_NOFILE hard limit {} is too low", lim.rlim_max);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0, "setrlimit");
    }
}

/// How a client's connection ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Eof,
    Reset,
    Other(ErrorKind),
}

/// A client connection being watched for its end.
#[derive(Debug)]
struct Watched {
    stream: TcpStream,
    opened: Instant,
    /// Bytes written.
    sent: usize,
    got: Vec<u8>,
    /// When it ended (since `opened`) and how.
    ended: Option<(Duration, End)>,
}

impl Watched {
    fn open(to: SocketAddrV4) -> Watched {
        let stream = TcpStream::connect(to).expect("connect");
        let opened = Instant::now();
        stream.set_nonblocking(true).expect("nonblocking");
        Watched { stream, opened, sent: 0, got: Vec::new(), ended: None }
    }

    /// Reads what is there without blocking; notes the end when it came.
    fn poll(&mut self) {
        let mut buf = [0u8; 64 * 1024];
        while self.ended.is_none() {
            match self.stream.read(&mut buf) {
                Ok(0) => self.ended = Some((self.opened.elapsed(), End::Eof)),
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => self.ended = Some((self.opened.elapsed(), End::Reset)),
                Err(e) => self.ended = Some((self.opened.elapsed(), End::Other(e.kind()))),
            }
        }
    }
}

/// Polls `conns` (calling `each` on every open one after its poll) until all ended or `limit`
/// passed.
fn watch_until_all_end(conns: &mut [Watched], limit: Duration, mut each: impl FnMut(&mut Watched)) {
    let start = Instant::now();
    while start.elapsed() < limit && conns.iter().any(|w| w.ended.is_none()) {
        for w in conns.iter_mut().filter(|w| w.ended.is_none()) {
            w.poll();
            if w.ended.is_none() {
                each(w);
            }
        }
        std::thread::sleep(POLL);
    }
}

/// The spread of the end times of `conns`: (earliest, latest).
fn spread(conns: &[Watched]) -> (Duration, Duration) {
    let times = conns.iter().filter_map(|w| w.ended.map(|(t, _)| t));
    (times.clone().min().unwrap_or_default(), times.max().unwrap_or_default())
}

/// Resident and peak memory of `node`'s baton-main, in bytes (its /proc status).
fn main_memory(c: &Cluster) -> (u64, u64) {
    let ns = c.lab.node("main").expect("main node").ns.clone();
    let out = std::process::Command::new("ip").args(["netns", "pids", &ns]).output().expect("ip netns pids");
    let pids = String::from_utf8_lossy(&out.stdout).to_string();
    let pid = pids
        .split_whitespace()
        .find(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "baton-main"))
        .unwrap_or_else(|| panic!("no baton-main among the pids of {ns}: {pids}"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in the status"));
        line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("kB value") * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// Prometheus sample `name` of `node`; fails when the page lacks it.
fn counter(c: &Cluster, node: &str, port: u16, name: &str) -> f64 {
    scrape_metrics(c, node, port).get(name).copied().unwrap_or_else(|| panic!("{node} exports no {name}"))
}

#[test]
fn slowloris_heads_are_closed_at_the_head_deadline() {
    with_cluster(|c, sha| {
        let vip = SocketAddrV4::new(c.lab.vip(), 80);
        // Rate-limited so that it runs through the whole slowloris phase.
        let legit = spawn_curl(c, "c-iad", &c.vip_url(OBJECT), &["--limit-rate", "20M"]).expect("curl");
        let conns = c
            .in_node("c-fra", move || {
                let mut conns: Vec<Watched> = (0..SLOWLORIS_CONNECTIONS).map(|_| Watched::open(vip)).collect();
                // One byte of the head per second each, from the moment it connected.
                watch_until_all_end(&mut conns, HEAD_TIMEOUT + SLACK * 3, |w| {
                    if w.opened.elapsed() >= Duration::from_secs(w.sent as u64) && w.sent < SLOW_HEAD.len() {
                        match w.stream.write_all(&SLOW_HEAD[w.sent..=w.sent]) {
                            Ok(()) => w.sent += 1,
                            Err(e) => w.ended = Some((w.opened.elapsed(), End::Other(e.kind()))),
                        }
                    }
                });
                conns
            })
            .expect("in c-fra");
        let dl = legit.finish().expect("curl");
        let (first, last) = spread(&conns);
        eprintln!("slowloris: {} connections closed between {first:?} and {last:?} after connecting", conns.len());
        for w in &conns {
            let (at, end) = w.ended.unwrap_or_else(|| panic!("a slowloris connection was still open after {:?}", w.opened.elapsed()));
            assert!(at >= HEAD_TIMEOUT - POLL && at < HEAD_TIMEOUT + SLACK, "closed after {at:?}");
            assert_eq!(end, End::Eof, "closed after {at:?}");
            assert!(w.sent >= 3, "{} bytes dribbled before the close", w.sent);
            assert!(w.got.starts_with(b"HTTP/1.1 408 "), "answer {:?}", String::from_utf8_lossy(&w.got));
        }
        assert_eq!(dl.exit, 0, "{}", dl.stderr);
        assert_eq!((dl.bytes, dl.sha256.as_str()), (OBJECT_BYTES as u64, sha));
        assert_eq!(dl.served_by(), Some("p-iad"));
    });
}

#[test]
fn clients_that_stop_reading_are_cut_off_after_the_send_timeout() {
    with_cluster(|c, sha| {
        let vip = SocketAddrV4::new(c.lab.vip(), 80);
        let p_timeouts = || counter(c, "p-fra", 9471, "baton_send_timeouts_total{participant=\"p-fra\"}");
        assert_eq!(p_timeouts(), 0.0);
        let client = c.addr("c-fra").expect("addr").to_string();
        let request = format!("GET /{OBJECT} HTTP/1.1\r\nHost: vip\r\n\r\n").into_bytes();
        let started = Instant::now();
        let mut readers = c
            .in_node("c-fra", move || {
                (0..SLOW_READERS)
                    .map(|_| {
                        let mut w = Watched::open(vip);
                        w.stream.write_all(&request).expect("request");
                        w
                    })
                    .collect::<Vec<_>>()
            })
            .expect("in c-fra");
        // A legitimate download from the same client, through the same participant, meanwhile.
        let dl = spawn_curl(c, "c-fra", &c.vip_url(OBJECT), &[]).expect("curl").finish().expect("curl");
        assert_eq!(dl.exit, 0, "{}", dl.stderr);
        assert_eq!((dl.bytes, dl.sha256.as_str()), (OBJECT_BYTES as u64, sha));
        assert_eq!(dl.served_by(), Some("p-fra"));

        // The participant serves each stalled connection (the handoff happened) and closes
        // it once no byte has left for the send timeout.
        let deadline = started + SEND_TIMEOUT + SLACK * 3;
        while p_timeouts() < SLOW_READERS as f64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let cut_after = started.elapsed();
        eprintln!("slow readers: {SLOW_READERS} send timeouts on p-fra {cut_after:?} after the first connect");
        assert_eq!(p_timeouts(), SLOW_READERS as f64, "p-fra's send timeouts after {cut_after:?}");
        assert!(cut_after >= SEND_TIMEOUT, "cut off after {cut_after:?}");
        assert_eq!(counter(c, "main", 9470, "baton_send_timeouts_total"), 0.0, "the main served none of them");
        let p_metrics = scrape_metrics(c, "p-fra", 9471);
        assert_eq!(p_metrics.get("baton_participant_active_flows{participant=\"p-fra\"}"), Some(&0.0));

        // Every client connection ends in a reset once the bytes that made it are read, and
        // long before the whole object.
        watch_until_all_end(&mut readers, SLACK * 3, |_| {});
        for w in &readers {
            let (at, end) = w.ended.unwrap_or_else(|| panic!("a slow reader's connection never ended"));
            assert_eq!(end, End::Reset, "ended after {at:?} with {} bytes", w.got.len());
            assert!(w.got.starts_with(b"HTTP/1.1 200 ") && w.got.len() < OBJECT_BYTES, "{} bytes arrived", w.got.len());
        }
        let most = readers.iter().map(|w| w.got.len()).max().unwrap_or(0);
        eprintln!("slow readers: at most {most} bytes arrived before the reset");
        // And the main forgets their flows (the participant reported each closed).
        let prefix = format!("{client}:");
        let flows_of_client = || {
            let flows = c.flows().expect("flows");
            flows.iter().filter(|f| f["client"].as_str().is_some_and(|a| a.starts_with(&prefix))).count()
        };
        let deadline = Instant::now() + SLACK * 3;
        while flows_of_client() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(flows_of_client(), 0, "flows of {client} left: {:?}", c.flows().expect("flows"));
    });
}

#[test]
fn thousands_of_idle_connections_keep_the_main_small_and_all_close_at_the_deadline() {
    with_cluster(|c, sha| {
        let vip = SocketAddrV4::new(c.lab.vip(), 80);
        let (rss_before, _) = main_memory(c);
        let opening = Instant::now();
        let mut idle = c.in_node("c-sin", move || (0..IDLE_CONNECTIONS).map(|_| Watched::open(vip)).collect::<Vec<_>>()).expect("in c-sin");
        let opened = opening.elapsed();
        assert!(opened < HEAD_TIMEOUT, "opening took {opened:?}: the first would close before the last opened");
        let (rss_held, _) = main_memory(c);
        // A legitimate download meanwhile, while all are held.
        let dl = spawn_curl(c, "c-fra", &c.vip_url(OBJECT), &[]).expect("curl").finish().expect("curl");
        let (rss_after_download, peak) = main_memory(c);
        let growth = rss_held.max(rss_after_download).saturating_sub(rss_before);
        eprintln!(
            "idle: {IDLE_CONNECTIONS} connections opened in {opened:?}; main RSS {:.1} MiB before, {:.1} MiB holding them, {:.1} MiB after a download (peak {:.1} MiB): growth {:.1} MiB",
            mib(rss_before),
            mib(rss_held),
            mib(rss_after_download),
            mib(peak),
            mib(growth)
        );
        assert_eq!(dl.exit, 0, "{}", dl.stderr);
        assert_eq!((dl.bytes, dl.sha256.as_str()), (OBJECT_BYTES as u64, sha));
        assert_eq!(dl.served_by(), Some("p-fra"));
        assert!(growth < IDLE_RSS_BOUND_BYTES, "the main grew by {:.1} MiB for {IDLE_CONNECTIONS} idle connections", mib(growth));

        watch_until_all_end(&mut idle, HEAD_TIMEOUT + SLACK * 3, |_| {});
        let (first, last) = spread(&idle);
        eprintln!("idle: closed between {first:?} and {last:?} after connecting");
        for w in &idle {
            let (at, end) = w.ended.unwrap_or_else(|| panic!("an idle connection was still open after {:?}", w.opened.elapsed()));
            assert!(at >= HEAD_TIMEOUT - POLL && at < HEAD_TIMEOUT + SLACK, "closed after {at:?}");
            assert_eq!((end, w.got.len()), (End::Eof, 0), "closed after {at:?}: nothing is said to a client that said nothing");
        }
        let (rss_end, _) = main_memory(c);
        eprintln!("idle: main RSS {:.1} MiB once all closed", mib(rss_end));
    });
}
