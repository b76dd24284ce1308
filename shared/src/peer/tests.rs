use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::limit::{PerSource, TokenBucket, MAX_TRACKED_SOURCES};
use super::wire::{HaveState, Kind, Message, WireError, MAC_BYTES, MAX_CLOCK_SKEW_MS};
use super::*;

fn peer(n: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 9, n), 7480)
}

const SHA: [u8; 32] = [0xab; 32];

fn id() -> PackageId {
    PackageId::Sha256(SHA)
}

#[test]
fn ids_parse_and_print() {
    let hex64 = "ab".repeat(32);
    assert_eq!(PackageId::parse(&hex64), Ok(id()));
    assert_eq!(PackageId::parse(&hex64.to_uppercase()), Ok(id()));
    assert_eq!(PackageId::parse(&format!("sha256:{hex64}")), Ok(id()));
    assert_eq!(id().to_string(), hex64);
    let md5 = PackageId::Md5([0x01; 16]);
    assert_eq!(PackageId::parse(&"01".repeat(16)), Ok(md5));
    assert_eq!(PackageId::parse(&format!("MD5:{}", "01".repeat(16))), Ok(md5));
    assert_eq!(md5.to_string(), "01".repeat(16));
    assert_eq!(PackageId::parse("abc"), Err(IdError::Length { len: 3 }));
    assert_eq!(PackageId::parse(&"zz".repeat(32)), Err(IdError::NotHex));
    assert_eq!(PackageId::parse(&format!("md5:{hex64}")), Err(IdError::PrefixLength { prefix: "md5", want: 32 }));
    assert_eq!(PackageId::parse(&format!("sha256:{}", "0".repeat(63))), Err(IdError::PrefixLength { prefix: "sha256", want: 64 }));
    assert!(PackageId::parse("../etc/passwd").is_err());
    assert!(PackageId::parse("").is_err());
}

fn query() -> Message {
    Message {
        kind: Kind::Query,
        nonce: 0x0102_0304_0506_0708,
        sent_ms: 1_000_000,
        id: PackageId::Md5([0x11; 16]),
        port: 7480,
        claim: 0x0a0b,
        state: HaveState::None,
        have: 0,
        size: 0,
    }
}

/// A query for an MD5 id, without a secret.
static QUERY_BYTES: [u8; 67] = [
    b'B', b'T', b'P', b'C', 1, 1, 0, 0, // magic, version, kind, state, flags
    1, 2, 3, 4, 5, 6, 7, 8, // nonce
    0, 0, 0, 0, 0, 0x0f, 0x42, 0x40, // sent_ms = 1_000_000
    0, 0, 0, 0, 0, 0, 0x0a, 0x0b, // claim
    0, 0, 0, 0, 0, 0, 0, 0, // have
    0, 0, 0, 0, 0, 0, 0, 0, // size
    0x1d, 0x38, // port 7480
    2, // md5 id
    0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
];

#[test]
fn query_fixture_both_ways() {
    assert_eq!(query().emit(None), QUERY_BYTES.to_vec());
    assert_eq!(Message::parse(&QUERY_BYTES, None, 0), Ok(query()));
}

#[test]
fn every_truncation_and_extension_is_refused() {
    let answer = Message { kind: Kind::Answer, state: HaveState::Downloading, have: 10, size: 20, id: id(), ..query() };
    for secret in [None, Some(&b"group secret"[..])] {
        let bytes = answer.emit(secret);
        assert_eq!(Message::parse(&bytes, secret, 1_000_000), Ok(answer.clone()));
        for n in 0..bytes.len() {
            assert!(Message::parse(&bytes[..n], secret, 1_000_000).is_err(), "{n} bytes parsed");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Message::parse(&longer, secret, 1_000_000), Err(WireError::Trailing(1)));
    }
}

#[test]
fn field_values_are_checked() {
    let mut b = QUERY_BYTES.to_vec();
    b[0] = b'X';
    assert_eq!(Message::parse(&b, None, 0), Err(WireError::Magic));
    let mut b = QUERY_BYTES.to_vec();
    b[4] = 2;
    assert_eq!(Message::parse(&b, None, 0), Err(WireError::Version(2)));
    let mut b = QUERY_BYTES.to_vec();
    b[5] = 9;
    assert_eq!(Message::parse(&b, None, 0), Err(WireError::Unknown { field: "kind", value: 9 }));
    let mut b = QUERY_BYTES.to_vec();
    b[6] = 1; // a query that claims to hold the package
    assert_eq!(Message::parse(&b, None, 0), Err(WireError::Inconsistent));
    let mut b = QUERY_BYTES.to_vec();
    b[7] = 0x80;
    assert_eq!(Message::parse(&b, None, 0), Err(WireError::Unknown { field: "flags", value: 0x80 }));
    let mut b = QUERY_BYTES.to_vec();
    b[50] = 3;
    assert_eq!(Message::parse(&b, None, 0), Err(WireError::Unknown { field: "id kind", value: 3 }));
    let answer = Message { kind: Kind::Answer, state: HaveState::Complete, have: 21, size: 20, ..query() };
    assert_eq!(Message::parse(&answer.emit(None), None, 0), Err(WireError::HaveBeyondSize { have: 21, size: 20 }));
    let empty_answer = Message { kind: Kind::Answer, ..query() };
    assert_eq!(Message::parse(&empty_answer.emit(None), None, 0), Err(WireError::Inconsistent));
}

#[test]
fn group_secret_authenticates_and_bounds_replay() {
    let secret = &b"s3cret"[..];
    let q = query();
    let signed = q.emit(Some(secret));
    assert_eq!(signed.len(), QUERY_BYTES.len() + MAC_BYTES);
    assert_eq!(&signed[..8], &[b'B', b'T', b'P', b'C', 1, 1, 0, 1]);
    assert_eq!(Message::parse(&signed, Some(secret), q.sent_ms + MAX_CLOCK_SKEW_MS), Ok(q.clone()));
    assert_eq!(Message::parse(&signed, Some(secret), q.sent_ms - MAX_CLOCK_SKEW_MS), Ok(q.clone()));
    assert_eq!(
        Message::parse(&signed, Some(secret), q.sent_ms + MAX_CLOCK_SKEW_MS + 1),
        Err(WireError::Stale { skew_ms: MAX_CLOCK_SKEW_MS + 1 })
    );
    assert_eq!(Message::parse(&signed, Some(b"other"), q.sent_ms), Err(WireError::BadMac));
    assert_eq!(Message::parse(&QUERY_BYTES, Some(secret), q.sent_ms), Err(WireError::Unauthenticated));
    assert_eq!(Message::parse(&signed, None, q.sent_ms), Err(WireError::UnexpectedMac));
    // Any flipped bit of the signed part or of the tag is caught.
    for i in 0..signed.len() {
        let mut b = signed.clone();
        b[i] ^= 0x01;
        assert!(Message::parse(&b, Some(secret), q.sent_ms).is_err(), "bit flip at {i} accepted");
    }
}

#[test]
fn replacement_probability_is_one_minus_one_over_generation_plus_one() {
    assert_eq!(replace_probability(0), 0.0);
    assert_eq!(replace_probability(1), 0.5);
    assert!((replace_probability(2) - 2.0 / 3.0).abs() < 1e-12);
    assert!((replace_probability(9) - 0.9).abs() < 1e-12);
}

#[test]
fn learning_follows_the_draw() {
    let mut list = PackageList::new();
    assert_eq!(list.learn(&id(), peer(2), 0.99), Learned::First);
    assert_eq!(list.get(&id()).and_then(|e| e.location).map(|l| (l.addr, l.generation)), Some((peer(2), 1)));
    assert_eq!(list.learn(&id(), peer(2), 0.0), Learned::Same);
    // Generation 1: replaced below 0.5, kept at or above.
    assert_eq!(list.learn(&id(), peer(3), 0.5), Learned::Kept);
    let e = list.get(&id()).cloned().unwrap_or_default();
    assert_eq!(e.location.map(|l| (l.addr, l.generation)), Some((peer(2), 1)));
    assert_eq!(e.alternates.iter().map(|a| a.addr).collect::<Vec<_>>(), vec![peer(3)]);
    assert_eq!(list.learn(&id(), peer(4), 0.49), Learned::Replaced);
    let e = list.get(&id()).cloned().unwrap_or_default();
    assert_eq!(e.location.map(|l| (l.addr, l.generation)), Some((peer(4), 2)));
    assert_eq!(e.alternates.iter().map(|a| a.addr).collect::<Vec<_>>(), vec![peer(3), peer(2)]);
    // The location's rate moves with it.
    list.record_throughput(&id(), peer(3), 1_000_000, Duration::from_secs(1));
    assert_eq!(list.learn(&id(), peer(3), 0.0), Learned::Replaced);
    let e = list.get(&id()).cloned().unwrap_or_default();
    assert_eq!(e.location.map(|l| (l.addr, l.generation, l.rate)), Some((peer(3), 3, 1_000_000.0)));
    assert_eq!(e.rate(peer(3)), 1_000_000.0);
    // Among unmeasured alternates the earlier learned stays ahead.
    assert_eq!(list.candidates(&id(), |_| false), vec![peer(3), peer(2), peer(4)]);
    assert_eq!(list.candidates(&id(), |a| a == peer(2)), vec![peer(3), peer(4)]);
}

/// The replacement rule, measured: for each generation, many fresh entries at that generation
/// learn a new location with seeded random draws, and the share replaced must lie within five
/// standard deviations of `1 - 1/(generation + 1)` (a false alarm about once in 3.5 million).
#[test]
fn replacement_frequencies_match_the_rule() {
    const TRIALS: u32 = 20_000;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6ba7_0c11);
    for generation in [1u32, 2, 3, 4, 7, 15] {
        let mut replaced = 0u32;
        for _ in 0..TRIALS {
            let mut list = PackageList::new();
            list.learn(&id(), peer(1), 0.5);
            // Raise the generation with certain replacements between two addresses.
            for g in 1..generation {
                list.learn(&id(), peer(if g % 2 == 1 { 2 } else { 1 }), 0.0);
            }
            assert_eq!(list.get(&id()).and_then(|e| e.location).map(|l| l.generation), Some(generation));
            if list.learn(&id(), peer(99), rng.gen::<f64>()) == Learned::Replaced {
                replaced += 1;
            }
        }
        let p = replace_probability(generation);
        let n = f64::from(TRIALS);
        let sigma = (n * p * (1.0 - p)).sqrt();
        let got = f64::from(replaced);
        assert!((got - n * p).abs() <= 5.0 * sigma, "generation {generation}: {replaced} of {TRIALS} replaced, expected {:.0} ± {:.0}", n * p, 5.0 * sigma);
    }
}

/// The same rule over long random histories: every update of every history is counted at the
/// generation it met, and each generation seen often enough matches its probability.
#[test]
fn replacement_frequencies_over_histories() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut trials = [0u32; 12];
    let mut replaced = [0u32; 12];
    for _ in 0..20_000 {
        let mut list = PackageList::new();
        list.learn(&id(), peer(1), 0.0);
        for _ in 0..8 {
            let g = list.get(&id()).and_then(|e| e.location).map_or(0, |l| l.generation) as usize;
            let current = list.get(&id()).and_then(|e| e.location).map(|l| l.addr);
            let mut addr = peer(rng.gen_range(1..=20));
            while Some(addr) == current {
                addr = peer(rng.gen_range(1..=20));
            }
            let r = list.learn(&id(), addr, rng.gen::<f64>());
            if g < trials.len() {
                trials[g] += 1;
                replaced[g] += u32::from(r == Learned::Replaced);
            }
        }
    }
    let mut checked = 0;
    for g in 1..trials.len() {
        let n = f64::from(trials[g]);
        if n < 2_000.0 {
            continue;
        }
        let p = replace_probability(g as u32);
        let sigma = (n * p * (1.0 - p)).sqrt();
        assert!((f64::from(replaced[g]) - n * p).abs() <= 5.0 * sigma, "generation {g}: {} of {} replaced", replaced[g], trials[g]);
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} generations had enough updates");
}

#[test]
fn alternates_are_bounded_and_scored_by_rate() {
    let mut list = PackageList::new();
    list.learn(&id(), peer(1), 0.0);
    for n in 2..=10 {
        list.learn(&id(), peer(n), 0.99); // kept: alternates
    }
    let e = list.get(&id()).cloned().unwrap_or_default();
    assert_eq!(e.alternates.len(), MAX_ALTERNATES);
    assert_eq!(e.alternates.iter().map(|a| a.addr).collect::<Vec<_>>(), vec![peer(2), peer(3), peer(4), peer(5)]);
    // A measured peer climbs above the unmeasured ones, and a faster one above it.
    list.record_throughput(&id(), peer(9), 5_000_000, Duration::from_secs(1));
    list.record_throughput(&id(), peer(4), 8_000_000, Duration::from_secs(1));
    let e = list.get(&id()).cloned().unwrap_or_default();
    assert_eq!(e.alternates.iter().map(|a| a.addr).collect::<Vec<_>>(), vec![peer(4), peer(9), peer(2), peer(3)]);
    // Rates are smoothed.
    list.record_throughput(&id(), peer(4), 2_000_000, Duration::from_secs(1));
    assert_eq!(list.get(&id()).map(|e| e.rate(peer(4))), Some(5_000_000.0));
    // Zero-length measurements change nothing.
    list.record_throughput(&id(), peer(7), 0, Duration::from_secs(1));
    list.record_throughput(&id(), peer(7), 10, Duration::ZERO);
    assert_eq!(list.get(&id()).map(|e| e.rate(peer(7))), Some(0.0));
}

#[test]
fn forgetting_the_location_promotes_the_best_alternate() {
    let mut list = PackageList::new();
    list.learn(&id(), peer(1), 0.0);
    list.learn(&id(), peer(2), 0.99);
    list.learn(&id(), peer(3), 0.99);
    list.record_throughput(&id(), peer(3), 100, Duration::from_secs(1));
    list.forget(&id(), peer(1));
    let e = list.get(&id()).cloned().unwrap_or_default();
    assert_eq!(e.location.map(|l| (l.addr, l.generation)), Some((peer(3), 2)));
    assert_eq!(e.alternates.iter().map(|a| a.addr).collect::<Vec<_>>(), vec![peer(2)]);
    list.forget(&id(), peer(2));
    list.forget(&id(), peer(3));
    assert_eq!(list.get(&id()).and_then(|e| e.location), None);
    assert!(list.candidates(&id(), |_| false).is_empty());
    // Forgetting what was never listed is harmless.
    list.forget(&PackageId::Sha256([1; 32]), peer(1));
}

#[test]
fn md5_names_resolve_once_the_package_is_described() {
    let md5 = [0x5a; 16];
    let mut list = PackageList::new();
    let by_md5 = PackageId::Md5(md5);
    list.learn(&by_md5, peer(7), 0.0);
    assert_eq!(list.candidates(&by_md5, |_| false), vec![peer(7)]);
    list.describe(Package { sha256: SHA, size: 100, md5: Some(md5) });
    assert_eq!(list.len(), 1);
    assert_eq!(list.resolve(&by_md5), id());
    assert_eq!(list.candidates(&id(), |_| false), vec![peer(7)]);
    list.learn(&by_md5, peer(8), 0.99);
    assert_eq!(list.candidates(&id(), |_| false), vec![peer(7), peer(8)]);
    assert_eq!(list.get(&by_md5).and_then(|e| e.package).map(|p| p.size), Some(100));
}

#[test]
fn the_list_is_bounded() {
    let mut list = PackageList::new();
    for i in 0..(MAX_PACKAGES as u32 + 10) {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&i.to_be_bytes());
        list.learn(&PackageId::Sha256(d), peer(1), 0.0);
    }
    assert_eq!(list.len(), MAX_PACKAGES);
    // The oldest went first.
    assert!(list.get(&PackageId::Sha256([0; 32])).is_none());
    let mut newest = [0u8; 32];
    newest[..4].copy_from_slice(&(MAX_PACKAGES as u32 + 9).to_be_bytes());
    assert!(list.get(&PackageId::Sha256(newest)).is_some());
}

#[test]
fn offers_rank_complete_then_rate_then_progress() {
    let offers = [
        Offer { addr: peer(5), complete: false, have: 900, size: 1000 },
        Offer { addr: peer(4), complete: true, have: 1000, size: 1000 },
        Offer { addr: peer(3), complete: true, have: 1000, size: 1000 },
        Offer { addr: peer(6), complete: false, have: 100, size: 1000 },
        Offer { addr: peer(2), complete: true, have: 1000, size: 1000 },
        Offer { addr: peer(6), complete: false, have: 950, size: 1000 },
    ];
    let rate = |a: SocketAddrV4| if a == peer(3) { 10.0 } else { 0.0 };
    assert_eq!(rank_offers(&offers, rate, |a| a == peer(2)), vec![peer(3), peer(4), peer(6), peer(5)]);
    assert!(rank_offers(&[], rate, |_| false).is_empty());
}

#[test]
fn exactly_one_requester_wins_the_election() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..1000 {
        let n = rng.gen_range(1..8u8);
        let mut claims: Vec<(u64, SocketAddrV4)> = (0..n).map(|i| (rng.gen_range(0..4u64), peer(i + 1))).collect();
        let winners = claims.iter().filter(|me| wins_election(**me, &claims)).count();
        assert_eq!(winners, 1, "{claims:?}");
        // Hearing oneself among the others changes nothing.
        claims.sort();
        assert!(wins_election(claims[0], &claims));
    }
    assert!(wins_election((5, peer(1)), &[]));
}

#[test]
fn bad_peers_are_avoided_for_the_hold() {
    let t0 = Instant::now();
    let mut bad = BadPeers::default();
    bad.mark(peer(3), t0);
    assert!(bad.is_bad(peer(3), t0));
    assert!(!bad.is_bad(peer(4), t0));
    assert!(bad.is_bad(peer(3), t0 + BAD_PEER_HOLD - Duration::from_millis(1)));
    assert!(!bad.is_bad(peer(3), t0 + BAD_PEER_HOLD));
    assert_eq!(bad.count(t0), 1);
    for i in 0..(MAX_BAD_PEERS + 5) {
        bad.mark(SocketAddrV4::new(Ipv4Addr::from(u32::try_from(i).unwrap_or(0)), 1), t0);
    }
    assert_eq!(bad.count(t0), MAX_BAD_PEERS);
}

#[test]
fn token_buckets_refill_at_their_rate() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(10.0, 3.0, t0);
    assert!(b.try_take(t0) && b.try_take(t0) && b.try_take(t0));
    assert!(!b.try_take(t0));
    assert!(!b.try_take(t0 + Duration::from_millis(50)));
    assert!(b.try_take(t0 + Duration::from_millis(101)));
    assert!(!b.try_take(t0 + Duration::from_millis(101)));
    // Refill stops at the burst.
    let later = t0 + Duration::from_secs(60);
    assert_eq!((0..10).filter(|_| b.try_take(later)).count(), 3);
}

#[test]
fn per_source_budgets_are_separate_and_bounded() {
    let t0 = Instant::now();
    let mut p = PerSource::new(1.0, 2.0);
    let a = Ipv4Addr::new(198, 18, 9, 2);
    let b = Ipv4Addr::new(198, 18, 9, 3);
    assert!(p.try_take(a, t0) && p.try_take(a, t0));
    assert!(!p.try_take(a, t0));
    assert!(p.try_take(b, t0));
    for i in 0..(MAX_TRACKED_SOURCES as u32 + 100) {
        p.try_take(Ipv4Addr::from(0xc612_0000 + i), t0);
    }
    assert!(p.tracked() <= MAX_TRACKED_SOURCES);
}
