//! Bounded, deterministic fuzzing for the parsers' unit tests (test builds only).
//!
//! Inputs come from a fixed seed: mutations of a parser's valid seed corpus (byte flips,
//! interesting bytes and tokens, deletions, splices, truncation, duplicated ranges), purely
//! random bytes, or values a test builds from the random generator. Every check runs under
//! `catch_unwind`; the first panic (a parser bug or a failed property) fails the test with the
//! seed, the iteration and the input as hex, ready to paste into a regression fixture.
//!
//! Runs on stable with no fuzzing engine and never reads anything but the two environment
//! variables below. It must never be compiled into a non-test build.

use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Inputs per fuzz test. A few thousand keep every parser's run well under a second in release
/// builds, so the whole set stays cheap enough for every CI run; set
/// [`ITERATIONS_VAR`] for longer runs.
pub(crate) const FUZZ_ITERATIONS: usize = 5000;

/// Seed of every run unless [`SEED_VAR`] says otherwise.
pub(crate) const FUZZ_SEED: u64 = 0xba70_f022;

/// Overrides [`FUZZ_ITERATIONS`].
pub(crate) const ITERATIONS_VAR: &str = "BATON_FUZZ_ITERATIONS";

/// Overrides [`FUZZ_SEED`] (decimal or `0x` hex).
pub(crate) const SEED_VAR: &str = "BATON_FUZZ_SEED";

/// Largest input a mutation grows. Above the largest limit the fuzzed parsers check at once
/// ([`crate::http::MAX_HEAD_BYTES`], [`crate::handoff::MAX_HANDOFF_REQUEST_BYTES`]), small
/// enough that one input costs microseconds.
const MAX_INPUT_BYTES: usize = 64 * 1024;

/// Longest purely random input.
const MAX_RANDOM_BYTES: usize = 512;

/// Most mutations stacked on one seed input.
const MAX_STACKED: usize = 6;

/// Bytes that mean something to at least one fuzzed format.
const INTERESTING_BYTES: &[u8] = b"\0\xff\r\n: \"<>&;,=\\\t/.%#-[]{}~\x7f\x80";

/// Tokens that mean something to at least one fuzzed format, or sit at a numeric limit.
const INTERESTING_TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"0",
    b"-1",
    b"255",
    b"65536",
    b"4294967296",
    b"18446744073709551615",
    b"18446744073709551616",
    b"99999999999999999999999999",
    b"1e400",
    b"NaN",
    b".inf",
    b"~",
    b"..",
    b"%00",
    b"%2F",
    b"&amp;",
    b"&#0;",
    b"&#xFFFF;",
    b"&bogus;",
    b"]]>",
    b"<!--",
    b"\xef\xbb\xbf",
    b"\xc3\xa9",
    b"\xed\xa0\x80",
    b"- ",
    b": ",
    b"{",
    b"[",
    b"!!binary ",
    b"*a",
    b"&a ",
];

/// Big-endian integers at type boundaries, for binary formats' length and count fields.
const INTERESTING_INTS: &[u64] = &[
    0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0xffff, 0x1_0000, 0x10_0000, 0x7fff_ffff, 0xffff_ffff, u64::MAX,
];

/// The number of inputs each fuzz test runs.
pub(crate) fn iterations() -> usize {
    match std::env::var(ITERATIONS_VAR) {
        Ok(v) => match v.trim().parse() {
            Ok(n) => n,
            Err(_) => panic!("{ITERATIONS_VAR} must be a number of iterations, not {v:?}"),
        },
        Err(_) => FUZZ_ITERATIONS,
    }
}

/// The seed of this run.
pub(crate) fn seed() -> u64 {
    let Ok(v) = std::env::var(SEED_VAR) else { return FUZZ_SEED };
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    match parsed {
        Ok(seed) => seed,
        Err(_) => panic!("{SEED_VAR} must be a decimal or 0x-hex u64, not {v:?}"),
    }
}

/// The generator of one iteration of the test `name`: each iteration can be replayed on its own
/// from the reported seed and iteration.
pub(crate) fn rng_for(name: &str, seed: u64, iteration: usize) -> StdRng {
    // FNV-1a of the name, so that two tests with the same seed do not see the same inputs.
    let name_hash =
        name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    StdRng::seed_from_u64(seed ^ name_hash ^ (iteration as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Runs `check` on [`iterations`] inputs built by `generate`; on the first panic fails with the
/// seed, the iteration and `show` of the input.
pub(crate) fn run<T>(
    name: &str,
    mut generate: impl FnMut(&mut StdRng) -> T,
    show: impl Fn(&T) -> String,
    mut check: impl FnMut(&T),
) {
    let seed = seed();
    for iteration in 0..iterations() {
        let input = generate(&mut rng_for(name, seed, iteration));
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&input))) {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!(
                "fuzz {name}: {SEED_VAR}={seed:#x} iteration {iteration} failed: {what}\ninput: {}",
                show(&input)
            );
        }
    }
}

/// Runs `check` on [`iterations`] byte inputs mutated from `corpus` (or purely random).
pub(crate) fn fuzz_bytes(name: &str, corpus: &[&[u8]], check: impl FnMut(&[u8])) {
    let mut check = check;
    run(name, |rng| bytes(rng, corpus), |b| format!("{} bytes, hex {}", b.len(), hex::encode(b)), |b| check(b));
}

/// Runs `check` on [`iterations`] values built by `generate`, shown with `Debug` on failure.
pub(crate) fn fuzz_values<T: Debug>(name: &str, generate: impl FnMut(&mut StdRng) -> T, check: impl FnMut(&T)) {
    run(name, generate, |v| format!("{v:?}"), check);
}

/// One input: usually mutations of a corpus entry, sometimes random bytes.
pub(crate) fn bytes(rng: &mut StdRng, corpus: &[&[u8]]) -> Vec<u8> {
    if corpus.is_empty() || rng.gen_ratio(1, 10) {
        let len = rng.gen_range(0..=MAX_RANDOM_BYTES);
        return (0..len).map(|_| rng.gen()).collect();
    }
    let mut out = corpus[rng.gen_range(0..corpus.len())].to_vec();
    for _ in 0..rng.gen_range(1..=MAX_STACKED) {
        mutate(rng, &mut out, corpus);
    }
    out.truncate(MAX_INPUT_BYTES);
    out
}

/// Applies one random mutation to `buf`.
fn mutate(rng: &mut StdRng, buf: &mut Vec<u8>, corpus: &[&[u8]]) {
    let at = rng.gen_range(0..=buf.len());
    match rng.gen_range(0..10) {
        // Flip one bit.
        0 if at < buf.len() => buf[at] ^= 1 << rng.gen_range(0..8),
        // Overwrite a byte with a random one.
        1 if at < buf.len() => buf[at] = rng.gen(),
        // Insert interesting bytes.
        2 => {
            let b = INTERESTING_BYTES[rng.gen_range(0..INTERESTING_BYTES.len())];
            let n = if rng.gen_ratio(1, 4) { rng.gen_range(1..=16) } else { 1 };
            buf.splice(at..at, std::iter::repeat_n(b, n));
        }
        // Insert an interesting token.
        3 => {
            let t = INTERESTING_TOKENS[rng.gen_range(0..INTERESTING_TOKENS.len())];
            buf.splice(at..at, t.iter().copied());
        }
        // Overwrite with a big-endian integer at a type boundary (±1).
        4 => {
            let v = INTERESTING_INTS[rng.gen_range(0..INTERESTING_INTS.len())];
            let v = v.wrapping_add(rng.gen_range(0..3)).wrapping_sub(1);
            let width = [1, 2, 4, 8][rng.gen_range(0..4)];
            let bytes = &v.to_be_bytes()[8 - width..];
            let end = (at + width).min(buf.len());
            buf.splice(at..end, bytes.iter().copied());
        }
        // Delete a range.
        5 => {
            let end = rng.gen_range(at..=buf.len().min(at + 32));
            buf.drain(at..end);
        }
        // Splice: this input's prefix, another corpus entry's suffix.
        6 => {
            let other = corpus[rng.gen_range(0..corpus.len())];
            let from = rng.gen_range(0..=other.len());
            buf.truncate(at);
            buf.extend_from_slice(&other[from..]);
        }
        // Truncate.
        7 => buf.truncate(at),
        // Duplicate a range, possibly many times (to push past counts and sizes).
        8 => {
            let start = rng.gen_range(0..=buf.len());
            let end = rng.gen_range(start..=buf.len().min(start + 64));
            let times = if rng.gen_ratio(1, 8) { rng.gen_range(2..=512) } else { 1 };
            let range = buf[start..end].repeat(times);
            let to = rng.gen_range(0..=buf.len());
            buf.splice(to..to, range);
        }
        // Insert random bytes.
        _ => {
            let n = rng.gen_range(1..=8);
            let random: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            buf.splice(at..at, random);
        }
    }
}

/// A random string of `len` characters drawn from `alphabet`.
pub(crate) fn string_from(rng: &mut StdRng, alphabet: &str, len: std::ops::RangeInclusive<usize>) -> String {
    let chars: Vec<char> = alphabet.chars().collect();
    let n = rng.gen_range(len);
    (0..n).map(|_| chars[rng.gen_range(0..chars.len())]).collect()
}

/// A u64 biased to the edges: small, at type boundaries, or anything.
pub(crate) fn edgy_u64(rng: &mut StdRng) -> u64 {
    match rng.gen_range(0..4) {
        0 => rng.gen_range(0..16),
        1 => INTERESTING_INTS[rng.gen_range(0..INTERESTING_INTS.len())],
        _ => rng.gen(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_inputs() {
        let corpus: &[&[u8]] = &[b"GET / HTTP/1.1\r\n\r\n", b"\x00\x01"];
        let a: Vec<Vec<u8>> = (0..50).map(|i| bytes(&mut rng_for("t", 7, i), corpus)).collect();
        let b: Vec<Vec<u8>> = (0..50).map(|i| bytes(&mut rng_for("t", 7, i), corpus)).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|x| x.len() <= MAX_INPUT_BYTES));
        assert_ne!(bytes(&mut rng_for("t", 7, 0), corpus), bytes(&mut rng_for("u", 7, 0), corpus));
    }

    #[test]
    fn a_panic_is_reported_with_seed_iteration_and_hex() {
        if iterations() == 0 {
            return;
        }
        let report = catch_unwind(|| fuzz_bytes("boom", &[b"ab"], |_| panic!("planted")));
        let Err(report) = report else { panic!("the planted panic must fail the run") };
        let text = report.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(text.starts_with("fuzz boom: BATON_FUZZ_SEED=0x"), "{text}");
        assert!(text.contains(" iteration 0 failed: planted\ninput: ") && text.contains(" bytes, hex "), "{text}");
    }
}
