//! A bounded soak: downloads run without pause from two client sites while the cluster is
//! moved about under them: operator moves, drains, participant processes killed (and
//! restarted) mid-download, and one restart of the main. Every download is checked by SHA-256,
//! captures on the clients count resets and segments from any address but the VIP, and the
//! time from each kill to its flows running elsewhere is measured.
//!
//! `BATON_SOAK_SECS` sets the length (default [`DEFAULT_SOAK`]), `BATON_SOAK_SEED` the event
//! schedule's seed, `BATON_SOAK_REPORT` the file the report is written to (markdown; by default
//! `soak-report.md` in cargo's test scratch directory, `target/tmp`);
//! `cargo xtask soak` sets them and keeps the report in `results/`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use baton_tests::{in_dataplanes, spawn_curl, Cluster, ClusterOptions};

/// The soak's length in CI.
const DEFAULT_SOAK: Duration = Duration::from_secs(600);
/// Downloads each client site keeps running at once.
const DOWNLOADS_PER_SITE: usize = 2;
/// Object sizes (MiB) the clients pick from.
const SIZES_MIB: [usize; 4] = [4, 16, 32, 64];
/// Rates (curl `--limit-rate`) the clients pick from.
const RATES: [&str; 3] = ["8M", "16M", "32M"];
/// Time between two events: at least the first, at most first + second.
const EVENT_GAP: (Duration, Duration) = (Duration::from_secs(4), Duration::from_secs(6));
/// A killed participant's flows must run elsewhere within this.
const RECOVERY_LIMIT: Duration = Duration::from_secs(10);
/// Time between the last download start and the restart of the main (see [`event`]).
const QUIET_BEFORE_RESTART: Duration = Duration::from_secs(2);
const SITES: [&str; 2] = ["c-fra", "c-iad"];
const PARTICIPANTS: [&str; 3] = ["p-fra", "p-iad", "p-sin"];

/// xorshift64*: the event schedule is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.trim().parse().unwrap_or_else(|_| panic!("{name}: {v:?} is not a whole number")))
}

/// Download counts, shared by the client threads.
#[derive(Default)]
struct Tally {
    downloads: AtomicU64,
    bytes: AtomicU64,
    sha_failures: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// What the event loop did.
#[derive(Default)]
struct Events {
    moves: u32,
    moves_refused: u32,
    drains: u32,
    kills: u32,
    main_restarts: u32,
    recoveries: Vec<Duration>,
    main_recovery: Option<Duration>,
}

fn active_flows(c: &Cluster) -> Vec<(u64, String)> {
    c.flows()
        .unwrap_or_default()
        .iter()
        .filter(|r| r.get("phase").and_then(|p| p.as_str()) == Some("active"))
        .filter_map(|r| Some((r.get("id")?.as_u64()?, r.get("participant")?.as_str()?.to_owned())))
        .collect()
}

fn ctl(c: &Cluster, args: &[&str]) -> bool {
    c.batonctl(args).is_ok_and(|o| o.status.success())
}

fn client_site(cluster: &Mutex<Cluster>, site: &str, objects: &[(String, String)], seed: u64, end: Instant, stop: &AtomicBool, tally: &Tally) {
    let mut rng = Rng(seed | 1);
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        let (path, sha) = &objects[rng.below(objects.len())];
        let rate = RATES[rng.below(RATES.len())];
        let dl = {
            let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
            spawn_curl(&c, site, &c.vip_url(path), &["--limit-rate", rate])
        };
        let result = dl.and_then(|dl| dl.finish());
        match result {
            Ok(d) if d.exit != 0 => tally.failures.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{site} {path}: curl {}: {}", d.exit, d.stderr.trim())),
            Ok(d) => {
                tally.downloads.fetch_add(1, Ordering::Relaxed);
                tally.bytes.fetch_add(d.bytes, Ordering::Relaxed);
                if &d.sha256 != sha {
                    tally.sha_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => tally.failures.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{site} {path}: {e:#}")),
        }
    }
}

/// One event; the cluster is held meanwhile, so no download starts during a restart of the main.
fn event(c: &mut Cluster, rng: &mut Rng, restart_main: bool, ev: &mut Events) {
    if restart_main {
        // A connection the main has accepted but not handed off yet dies with it, as with any
        // server that is killed, and a SYN while it is down is refused: no download may be
        // starting. None starts while the cluster is held; the one just started is handed off
        // within this.
        std::thread::sleep(QUIET_BEFORE_RESTART);
        let t0 = Instant::now();
        c.restart_main(Duration::from_secs(1)).expect("main restarts");
        c.wait_registered(PARTICIPANTS.len()).expect("participants reconnect to the restarted main");
        ev.main_restarts += 1;
        ev.main_recovery = Some(t0.elapsed());
        return;
    }
    let flows = active_flows(c);
    match rng.below(10) {
        0..=3 if !flows.is_empty() => {
            let (id, owner) = &flows[rng.below(flows.len())];
            let to = PARTICIPANTS[rng.below(PARTICIPANTS.len())];
            let id = id.to_string();
            let ok = if to == owner || rng.below(2) == 0 { ctl(c, &["flow", "move", &id]) } else { ctl(c, &["flow", "move", &id, "--to", to]) };
            // A flow may end, or already be moving, between the list and the command.
            if ok { ev.moves += 1 } else { ev.moves_refused += 1 }
        }
        4..=5 => {
            let p = PARTICIPANTS[rng.below(PARTICIPANTS.len())];
            assert!(ctl(c, &["participant", "drain", p]), "drain {p}");
            std::thread::sleep(Duration::from_secs(2));
            assert!(ctl(c, &["participant", "undrain", p]), "undrain {p}");
            ev.drains += 1;
        }
        _ => {
            // Kill the owner of a running download when there is one.
            let victim = match flows.get(rng.below(flows.len().max(1))) {
                Some((_, owner)) if PARTICIPANTS.contains(&owner.as_str()) => owner.clone(),
                _ => PARTICIPANTS[rng.below(PARTICIPANTS.len())].to_owned(),
            };
            let orphans: Vec<u64> = flows.iter().filter(|(_, o)| *o == victim).map(|(id, _)| *id).collect();
            let t0 = Instant::now();
            c.kill(&victim, "baton-participant");
            loop {
                let now: Vec<(u64, String)> = c
                    .flows()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|r| Some((r.get("id")?.as_u64()?, format!("{}/{}", r.get("participant")?.as_str()?, r.get("phase")?.as_str()?))))
                    .collect();
                // Each orphan is active on another participant, or gone (it ended).
                let settled = orphans.iter().all(|id| {
                    now.iter().find(|(f, _)| f == id).is_none_or(|(_, at)| at.ends_with("/active") && !at.starts_with(&format!("{victim}/")))
                });
                if settled {
                    break;
                }
                assert!(t0.elapsed() < RECOVERY_LIMIT, "flows of {victim} not recovered within {RECOVERY_LIMIT:?}: {now:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
            if !orphans.is_empty() {
                ev.recoveries.push(t0.elapsed());
            }
            ev.kills += 1;
            c.restart_participant(&victim).expect("participant restarts");
            c.wait_registered(PARTICIPANTS.len()).expect("the restarted participant registers");
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn soak_downloads_survive_moves_drains_kills_and_a_main_restart() {
    let length = env_u64("BATON_SOAK_SECS").map_or(DEFAULT_SOAK, Duration::from_secs);
    let seed = env_u64("BATON_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
    });
    // One data plane per run (tc unless BATON_TEST_DATAPLANES names others): the soak is long.
    let modes: Vec<&str> = match std::env::var("BATON_TEST_DATAPLANES") {
        Ok(_) => baton_tests::DATAPLANES.to_vec(),
        Err(_) => vec!["tc"],
    };
    in_dataplanes(&modes, "tsoak", "198.19.32.0/21", |mut opts: ClusterOptions| {
        eprintln!("soak: {length:?}, seed {seed}");
        let site = "  - name: c-iad\n    role: client\n    location: { city: Reston, country: US, lat: 38.96, lon: -77.36 }\n";
        opts.topology_yaml = Some(format!("{}{site}    rate: {}\n    delay: {}\n", baton_tests::wan_topology(), baton_tests::WAN_RATE, baton_tests::WAN_DELAY));
        let mode = opts.dataplane;
        let c = Cluster::start(&opts).expect("cluster starts");
        let objects: Vec<(String, String)> = SIZES_MIB
            .iter()
            .enumerate()
            .map(|(i, mib)| {
                let path = format!("soak-{mib}.bin");
                let sha = c.write_object(&path, mib << 20, 70 + i as u64).expect("object");
                c.provision(&path).expect("provisioned");
                (path, sha)
            })
            .collect();
        let vip = c.lab.vip();
        // Only resets, and segments from port 80 that do not come from the VIP, are kept.
        let filter = format!("tcp port 80 and ((tcp[tcpflags] & tcp-rst) != 0 or (src port 80 and not src host {vip}))");
        let caps: Vec<_> = SITES.iter().map(|s| c.capture_matching(s, &filter).expect("capture")).collect();
        let tally = Tally::default();
        let mut ev = Events::default();
        let started = Instant::now();
        let end = started + length;
        let cluster = Mutex::new(c);
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            for (i, site) in SITES.iter().enumerate() {
                for j in 0..DOWNLOADS_PER_SITE {
                    let (cluster, objects, tally, done) = (&cluster, &objects, &tally, &done);
                    s.spawn(move || client_site(cluster, site, objects, seed ^ ((i * 8 + j + 1) as u64 * 0x9E37_79B9), end, done, tally));
                }
            }
            let mut rng = Rng(seed | 1);
            let mut restarted = false;
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                while Instant::now() + EVENT_GAP.0 < end {
                    let gap = EVENT_GAP.0 + EVENT_GAP.1.mul_f64(rng.below(1000) as f64 / 1000.0);
                    std::thread::sleep(gap);
                    let restart = !restarted && started.elapsed() >= length / 2;
                    restarted |= restart;
                    let mut c = cluster.lock().unwrap_or_else(|p| p.into_inner());
                    event(&mut c, &mut rng, restart, &mut ev);
                    c.check_alive().expect("every server is running");
                }
            }));
            done.store(true, Ordering::Relaxed);
            if let Err(p) = result {
                std::panic::resume_unwind(p);
            }
        });
        let c = cluster.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut resets = 0;
        let mut foreign = 0;
        for cap in caps {
            for p in cap.finish().expect("capture") {
                if p.rst {
                    resets += 1;
                } else if p.src_port == 80 && p.src != vip {
                    foreign += 1;
                }
            }
        }
        let mut rec = ev.recoveries.clone();
        rec.sort();
        let downloads = tally.downloads.load(Ordering::Relaxed);
        let bytes = tally.bytes.load(Ordering::Relaxed);
        let sha_failures = tally.sha_failures.load(Ordering::Relaxed);
        let failures = tally.failures.into_inner().unwrap_or_else(|p| p.into_inner());
        let report = format!(
            "# Soak: {mode}, {secs} s, seed {seed}\n\n\
             | figure | value |\n|---|---|\n\
             | downloads completed | {downloads} |\n| bytes received | {bytes} ({gib:.2} GiB) |\n\
             | SHA-256 failures | {sha_failures} |\n| failed downloads (curl error) | {failed} |\n\
             | resets seen by clients | {resets} |\n| segments not from the VIP | {foreign} |\n\
             | operator moves (refused: flow ended or busy) | {moves} ({refused}) |\n| drains | {drains} |\n\
             | participant kills | {kills} |\n| recoveries of running flows | {nrec} |\n\
             | recovery time p50 / max | {p50:?} / {max:?} |\n| main restarts | {mr} (participants back after {mrec:?}) |\n",
            secs = started.elapsed().as_secs(),
            gib = bytes as f64 / f64::from(1u32 << 30),
            failed = failures.len(),
            moves = ev.moves,
            refused = ev.moves_refused,
            drains = ev.drains,
            kills = ev.kills,
            nrec = rec.len(),
            p50 = percentile(&rec, 0.5),
            max = rec.last().copied().unwrap_or_default(),
            mr = ev.main_restarts,
            mrec = ev.main_recovery.unwrap_or_default(),
        );
        eprintln!("{report}");
        // A passing test's output is not shown, so the report always goes to a file too.
        let path = std::env::var("BATON_SOAK_REPORT").unwrap_or_else(|_| format!("{}/soak-report.md", env!("CARGO_TARGET_TMPDIR")));
        std::fs::write(&path, &report).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        eprintln!("report: {path}");
        drop(c);
        assert!(failures.is_empty(), "failed downloads: {failures:#?}");
        assert_eq!(sha_failures, 0, "downloads with a wrong SHA-256");
        assert_eq!(resets, 0, "resets reached the clients");
        assert_eq!(foreign, 0, "segments from an address other than the VIP");
        assert!(downloads > 0, "no download completed");
        if length >= Duration::from_secs(60) {
            assert!(ev.kills > 0 && ev.moves + ev.moves_refused > 0 && ev.main_restarts == 1, "every kind of event happened");
        }
    });
}
