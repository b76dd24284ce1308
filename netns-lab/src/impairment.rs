//! Link impairments as a schedule: which frames a delay line drops, and when it sends the rest.
//!
//! A [`Schedule`] is one direction of one impaired link. Each arriving frame is either lost
//! (independently, with the link's loss probability), refused because the direction already
//! holds [`QUEUE_LIMIT_FRAMES`] frames, or queued with a due time of
//! `arrival + delay + U[0, jitter]`, but never earlier than the due time of the frame ahead of
//! it: frames leave in the order they came, like on a real serial link, so jitter never
//! reorders. [`Schedule::pop_due`] hands out the frames whose time has come.
//!
//! This module does no I/O and never reads the clock: time is passed in, so its tests run with
//! simulated time, and the same seed gives the same losses and delays. The sockets that feed it
//! live in [`crate::delay_line`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::units::{Delay, Loss};

/// Most frames one direction of a delay line holds; frames arriving at a full queue are
/// dropped and counted ([`Counters::overflow`]). 16384 full-size frames are 24 MiB: the
/// bandwidth-delay product of 400 Mbit/s over 0.5 s or 1 Gbit/s over 0.2 s, more than any lab
/// link carries with a realistic WAN delay, while a runaway sender cannot make the delay line
/// grow without bound.
pub const QUEUE_LIMIT_FRAMES: usize = 16_384;

/// What one impaired link does to every frame, in each direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Upper bound of the uniform random extra delay, `U[0, jitter]` per frame.
    pub jitter: Duration,
    /// Probability in `[0, 1)` that a frame is dropped, independently of every other frame.
    pub loss: f64,
}

impl Impairment {
    /// No delay, no jitter, no loss: frames pass as they come.
    pub const NONE: Impairment = Impairment {
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        loss: 0.0,
    };

    /// The impairment of a link from its topology fields; `None` when all are absent or zero,
    /// so that the link needs no delay line.
    pub fn from_fields(
        delay: Option<Delay>,
        jitter: Option<Delay>,
        loss: Option<Loss>,
    ) -> Option<Impairment> {
        let impairment = Impairment {
            delay: delay.map_or(Duration::ZERO, Delay::duration),
            jitter: jitter.map_or(Duration::ZERO, Delay::duration),
            loss: loss.map_or(0.0, |loss| loss.percent() / 100.0),
        };
        (impairment != Impairment::NONE).then_some(impairment)
    }
}

/// A small, fast pseudo-random generator (xorshift64*, Vigna 2016): good enough to draw losses
/// and jitter, and reproducible from its seed. Not for anything secret.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`; any seed works (it is mixed with splitmix64 so that zero and
    /// nearby seeds give unrelated streams).
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // xorshift must never hold zero.
        Rng(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A uniform number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        // The top 53 bits fill an f64 mantissa exactly.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform number in `[0, bound]`, for `bound` below 2^64 - 1.
    pub fn up_to(&mut self, bound: u64) -> u64 {
        // Multiply-shift (Lemire): the bias is below 2^-64 * bound, far too small to matter here.
        let range = u128::from(bound) + 1;
        ((u128::from(self.next_u64()) * range) >> 64) as u64
    }
}

/// A seed for the delay line of `node` in lab `lab` (FNV-1a of both names), so that a lab
/// brought up twice loses and delays the same frames.
pub fn seed_for(lab: &str, node: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in lab.bytes().chain([b'/']).chain(node.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// What happened to an arriving frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Queued; it leaves at `due`.
    Queued {
        /// When the frame is to be sent on.
        due: Instant,
    },
    /// Dropped by the link's random loss.
    Lost,
    /// Dropped because the queue held [`Schedule::limit`] frames.
    Overflow,
}

/// What one direction of a delay line has done so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Frames that arrived.
    pub arrived: u64,
    /// Frames dropped by random loss.
    pub lost: u64,
    /// Frames dropped because the queue was full.
    pub overflow: u64,
    /// Frames handed out by [`Schedule::pop_due`].
    pub released: u64,
}

/// One direction of an impaired link: a FIFO of frames with due times.
#[derive(Debug)]
pub struct Schedule<F> {
    impairment: Impairment,
    rng: Rng,
    limit: usize,
    queue: VecDeque<(Instant, F)>,
    /// Due time of the frame queued last; later frames never leave before it.
    last_due: Option<Instant>,
    counters: Counters,
}

impl<F> Schedule<F> {
    /// An empty schedule that applies `impairment` with randomness from `seed` and holds at
    /// most `limit` frames.
    pub fn new(impairment: Impairment, seed: u64, limit: usize) -> Schedule<F> {
        Schedule {
            impairment,
            rng: Rng::new(seed),
            limit,
            queue: VecDeque::new(),
            last_due: None,
            counters: Counters::default(),
        }
    }

    /// Takes `frame`, which arrived at `now`.
    pub fn arrive(&mut self, frame: F, now: Instant) -> Verdict {
        self.counters.arrived += 1;
        let impairment = self.impairment;
        if impairment.loss > 0.0 && self.rng.unit() < impairment.loss {
            self.counters.lost += 1;
            return Verdict::Lost;
        }
        if self.queue.len() >= self.limit {
            self.counters.overflow += 1;
            return Verdict::Overflow;
        }
        let mut delay = impairment.delay;
        if !impairment.jitter.is_zero() {
            let bound = u64::try_from(impairment.jitter.as_nanos()).unwrap_or(u64::MAX - 1);
            delay += Duration::from_nanos(self.rng.up_to(bound));
        }
        let mut due = now + delay;
        if let Some(last) = self.last_due {
            due = due.max(last);
        }
        self.last_due = Some(due);
        self.queue.push_back((due, frame));
        Verdict::Queued { due }
    }

    /// When the next frame is due, if any is queued.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(due, _)| *due)
    }

    /// The next frame if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<F> {
        if self.next_due()? > now {
            return None;
        }
        self.counters.released += 1;
        self.queue.pop_front().map(|(_, frame)| frame)
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The most frames this schedule holds.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// What this direction has done so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn impairment(delay_ms: u64, jitter_ms: u64, loss: f64) -> Impairment {
        Impairment {
            delay: MS * u32::try_from(delay_ms).expect("small"),
            jitter: MS * u32::try_from(jitter_ms).expect("small"),
            loss,
        }
    }

    #[test]
    fn zero_fields_need_no_delay_line() {
        let zero = Delay::from(Duration::ZERO);
        let no_loss: Loss = "0%".parse().expect("loss");
        assert_eq!(Impairment::from_fields(None, None, None), None);
        assert_eq!(
            Impairment::from_fields(Some(zero), Some(zero), Some(no_loss)),
            None
        );
        let loss: Loss = "20%".parse().expect("loss");
        assert_eq!(
            Impairment::from_fields(Some(Delay::from(MS * 10)), None, Some(loss)),
            Some(Impairment {
                delay: MS * 10,
                jitter: Duration::ZERO,
                loss: 0.2
            })
        );
    }

    #[test]
    fn fixed_delay_releases_each_frame_exactly_on_time() {
        let start = Instant::now();
        let mut schedule = Schedule::new(impairment(10, 0, 0.0), 1, 100);
        for i in 0..5u32 {
            let verdict = schedule.arrive(i, start + MS * i);
            assert_eq!(
                verdict,
                Verdict::Queued {
                    due: start + MS * (10 + i)
                }
            );
        }
        assert_eq!(schedule.pop_due(start + MS * 9), None);
        assert_eq!(schedule.next_due(), Some(start + MS * 10));
        assert_eq!(schedule.pop_due(start + MS * 10), Some(0));
        assert_eq!(schedule.pop_due(start + MS * 10), None);
        assert_eq!(schedule.pop_due(start + MS * 13), Some(1));
        assert_eq!(schedule.pop_due(start + MS * 13), Some(2));
        assert_eq!(schedule.pop_due(start + MS * 13), Some(3));
        assert_eq!(schedule.pop_due(start + MS * 13), None);
        assert_eq!(schedule.len(), 1);
        assert_eq!(
            schedule.counters(),
            Counters {
                arrived: 5,
                lost: 0,
                overflow: 0,
                released: 4
            }
        );
    }

    #[test]
    fn jitter_stays_in_bounds_and_never_reorders() {
        let start = Instant::now();
        let mut schedule = Schedule::new(impairment(5, 20, 0.0), 7, 100_000);
        let mut dues = Vec::new();
        let mut highest_extra = Duration::ZERO;
        // Frames 1 ms apart with up to 20 ms jitter: without the FIFO rule many would overtake.
        for i in 0..10_000u32 {
            let arrival = start + MS * i;
            let Verdict::Queued { due } = schedule.arrive(i, arrival) else {
                panic!("frame {i} dropped without loss")
            };
            let extra = due - arrival - MS * 5;
            // Held back at most until the frame ahead leaves, which is never later than
            // this frame's own latest due time.
            assert!(extra <= MS * 20, "frame {i} waits {extra:?}");
            highest_extra = highest_extra.max(extra);
            dues.push(due);
        }
        assert!(dues.windows(2).all(|pair| pair[0] <= pair[1]));
        assert!(
            highest_extra > MS * 19,
            "highest extra delay {highest_extra:?}"
        );
        let mut released = Vec::new();
        while let Some(frame) = schedule.pop_due(start + Duration::from_secs(60)) {
            released.push(frame);
        }
        assert_eq!(released, (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn widely_spaced_frames_get_uniform_jitter() {
        let start = Instant::now();
        let mut schedule = Schedule::new(impairment(0, 10, 0.0), 3, 10);
        let mut buckets = [0u32; 10];
        for i in 0..10_000u32 {
            // 100 ms apart: no frame is ever held back by the one ahead of it.
            let arrival = start + MS * 100 * i;
            let Verdict::Queued { due } = schedule.arrive(i, arrival) else {
                panic!("dropped")
            };
            let extra = due - arrival;
            assert!(extra <= MS * 10);
            let bucket = usize::try_from(extra.as_millis()).expect("small").min(9);
            buckets[bucket] += 1;
            assert_eq!(schedule.pop_due(due), Some(i));
        }
        // 1000 expected per millisecond; 6 sigma is about 190.
        assert!(
            buckets.iter().all(|&count| (800..=1200).contains(&count)),
            "{buckets:?}"
        );
    }

    #[test]
    fn loss_is_independent_and_near_its_probability() {
        let start = Instant::now();
        let mut schedule = Schedule::new(impairment(0, 0, 0.2), 11, 1_000_000);
        let mut lost = 0u32;
        let mut run = 0u32;
        let mut longest_run = 0u32;
        for i in 0..100_000u32 {
            if schedule.arrive(i, start) == Verdict::Lost {
                lost += 1;
                run += 1;
                longest_run = longest_run.max(run);
            } else {
                run = 0;
            }
        }
        // Binomial(100000, 0.2): sigma is about 126.
        assert!((19_400..=20_600).contains(&lost), "lost {lost}");
        // P(a run of 12 losses somewhere) is about 100000 * 0.2^12 = 4e-4.
        assert!(longest_run < 12, "longest run of losses {longest_run}");
        assert_eq!(schedule.counters().lost, u64::from(lost));
        assert_eq!(
            schedule.len(),
            100_000 - usize::try_from(lost).expect("fits")
        );
    }

    #[test]
    fn the_same_seed_loses_the_same_frames() {
        let losses = |seed| {
            let start = Instant::now();
            let mut schedule = Schedule::new(impairment(1, 1, 0.5), seed, 1000);
            (0..64u32)
                .map(|i| schedule.arrive(i, start) == Verdict::Lost)
                .collect::<Vec<_>>()
        };
        assert_eq!(losses(5), losses(5));
        assert_ne!(losses(5), losses(6));
        assert_ne!(seed_for("lab", "a"), seed_for("lab", "b"));
        assert_ne!(seed_for("lab", "ab"), seed_for("la", "bab"));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let start = Instant::now();
        let mut schedule = Schedule::new(impairment(10, 0, 0.0), 1, 3);
        for i in 0..3u32 {
            assert!(matches!(schedule.arrive(i, start), Verdict::Queued { .. }));
        }
        assert_eq!(schedule.arrive(3, start), Verdict::Overflow);
        assert_eq!(schedule.counters().overflow, 1);
        assert_eq!(schedule.pop_due(start + MS * 10), Some(0));
        assert!(matches!(
            schedule.arrive(4, start + MS * 10),
            Verdict::Queued { .. }
        ));
        assert_eq!(schedule.limit(), 3);
    }

    #[test]
    fn random_numbers_cover_their_ranges() {
        let mut rng = Rng::new(0);
        let draws: Vec<u64> = (0..10_000).map(|_| rng.up_to(3)).collect();
        for value in 0..=3 {
            let count = draws.iter().filter(|&&d| d == value).count();
            assert!((2200..=2800).contains(&count), "{value}: {count}");
        }
        assert!(draws.iter().all(|&d| d <= 3));
        let units: Vec<f64> = (0..10_000).map(|_| rng.unit()).collect();
        assert!(units.iter().all(|u| (0.0..1.0).contains(u)));
        assert_eq!(rng.up_to(0), 0);
    }
}
