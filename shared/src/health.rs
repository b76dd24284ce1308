//! Participant health from the main's point of view: consecutive probe results with rise/fall
//! thresholds, and flap damping (RFC 2439 style: each fall adds a penalty that decays
//! exponentially; above `suppress` the participant stays unhealthy until the penalty decays
//! below `reuse`, whatever the probes say).
//!
//! A deterministic state machine, one [`Tracker`] per participant: probe results and ticks go
//! in with the time, [`Transition`]s come out. It never sends a probe, reads a clock or sleeps:
//! time is passed in as a [`Duration`] since an epoch the caller chooses.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Flap damping settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Damping {
    /// Penalty added each time the participant becomes unhealthy.
    pub penalty: f64,
    /// Penalty at or above which the participant is held unhealthy.
    pub suppress: f64,
    /// Penalty below which a held participant may become healthy again.
    pub reuse: f64,
    /// Time for the penalty to halve, in milliseconds.
    pub half_life_ms: u64,
    /// Longest a participant is held unhealthy by damping alone, in milliseconds.
    pub max_hold_ms: u64,
}

impl Default for Damping {
    fn default() -> Self {
        Self { penalty: 1000.0, suppress: 2500.0, reuse: 800.0, half_life_ms: 30_000, max_hold_ms: 120_000 }
    }
}

/// The main's `health:` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthPolicy {
    /// Time between active probes of one participant, in milliseconds.
    pub interval_ms: u64,
    /// A probe that has not completed after this long failed, in milliseconds.
    pub timeout_ms: u64,
    /// Consecutive failed probes that make a healthy participant unhealthy.
    pub fall: u32,
    /// Consecutive good probes that make an unhealthy participant healthy.
    pub rise: u32,
    /// Path the probe requests through the VIP; `None` probes with the smallest object of the
    /// origin store.
    pub probe_path: Option<String>,
    pub damping: Damping,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self { interval_ms: 1000, timeout_ms: 2000, fall: 2, rise: 2, probe_path: None, damping: Damping::default() }
    }
}

impl HealthPolicy {
    /// Checks what a [`Tracker`] cannot repair on its own: `fall` and `rise` at least 1, a
    /// non-zero half-life, finite non-negative penalties and `reuse < suppress`. The config
    /// loader calls this; a [`Tracker`] still behaves deterministically under a policy that fails
    /// it (0 thresholds count as 1, a zero half-life forgets the penalty at once).
    pub fn check(&self) -> Result<(), HealthError> {
        if self.fall == 0 {
            return Err(HealthError::ZeroThreshold { name: "fall" });
        }
        if self.rise == 0 {
            return Err(HealthError::ZeroThreshold { name: "rise" });
        }
        let d = &self.damping;
        for (name, value) in [("penalty", d.penalty), ("suppress", d.suppress), ("reuse", d.reuse)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(HealthError::Penalty { name, value });
            }
        }
        if d.reuse >= d.suppress {
            return Err(HealthError::ReuseNotBelowSuppress { reuse: d.reuse, suppress: d.suppress });
        }
        if d.half_life_ms == 0 {
            return Err(HealthError::ZeroHalfLife);
        }
        Ok(())
    }
}

/// Why a health policy is unusable.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum HealthError {
    /// `fall` or `rise` is 0.
    #[error("{name} must be at least 1 probe")]
    ZeroThreshold { name: &'static str },
    /// A damping penalty value is NaN, infinite or negative.
    #[error("damping {name} is {value}; it must be finite and not negative")]
    Penalty { name: &'static str, value: f64 },
    /// `reuse` is not below `suppress`.
    #[error("damping reuse {reuse} must be below suppress {suppress}")]
    ReuseNotBelowSuppress { reuse: f64, suppress: f64 },
    /// `half_life_ms` is 0.
    #[error("damping half_life_ms must be more than 0")]
    ZeroHalfLife,
}

/// A change of a participant's health, for the caller to act on (log it, stop or resume sending
/// it new flows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// `fall` consecutive probes failed.
    BecameUnhealthy,
    /// `rise` consecutive probes passed and damping does not hold it.
    BecameHealthy,
}

/// Added to the computed end of a damping hold by [`Tracker::release_at`], so that the release
/// is certain at that time despite rounding in `log2`/`exp2` (whose error is far below a
/// nanosecond at any sane half-life); 1 µs is invisible next to probe intervals of a second.
const RELEASE_MARGIN: Duration = Duration::from_micros(1);

/// One participant's health, as the main tracks it. Inputs are probe results and ticks, each
/// with the time since the caller's epoch; outputs are [`Transition`]s.
///
/// A new tracker starts **healthy** ("unknown counts as healthy"): a participant that has just
/// connected takes flows at once, so a cluster serves as soon as its members register, and it
/// becomes unhealthy only after `fall` failed probes.
///
/// Flap damping: each fall (healthy → unhealthy) adds `damping.penalty`; the penalty decays as
/// `p × 2^(−Δt / half_life)`. A fall that brings it to `suppress` or above suppresses the
/// participant: it stays unhealthy, whatever the probes say, until the penalty decays below
/// `reuse` or `max_hold_ms` have passed since the suppression began, whichever is first. When
/// the hold runs out first, the penalty is cut to `reuse` at that moment: the participant is
/// released as if its penalty had decayed that far, so it is not forgiven entirely and fewer
/// falls than the first time suppress it again. Once released,
/// it becomes healthy with `rise` consecutive good probes (those made during the hold count),
/// at the next [`probe`](Tracker::probe) or [`tick`](Tracker::tick).
///
/// Time that goes backwards counts as no time passing.
#[derive(Debug, Clone)]
pub struct Tracker {
    /// `policy.fall`, at least 1.
    fall: u32,
    /// `policy.rise`, at least 1.
    rise: u32,
    damping: Damping,
    healthy: bool,
    consecutive_ok: u32,
    consecutive_failed: u32,
    /// Damping penalty as of `penalty_at`.
    penalty: f64,
    /// Latest time the tracker was told; the penalty is decayed to here.
    penalty_at: Duration,
    /// When the current damping hold began; `None` when not held.
    suppressed_since: Option<Duration>,
    flaps: u64,
    last_change: Duration,
    reason: Option<String>,
}

/// A tracker's state for `batonctl` and the admin API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthView {
    pub healthy: bool,
    pub consecutive_ok: u32,
    pub consecutive_failed: u32,
    /// Damping penalty decayed to the time of the view.
    pub penalty: f64,
    /// Held unhealthy by damping.
    pub suppressed: bool,
    /// How many times it fell (healthy → unhealthy).
    pub flaps: u64,
    /// Time of the last transition (or of the tracker's creation), in milliseconds since the
    /// caller's epoch.
    pub last_change: u64,
    /// The reason given with the latest failed probe, if any; kept after recovery.
    pub reason: Option<String>,
}

impl Tracker {
    /// A tracker for a participant that connected at `now`: healthy, no penalty.
    pub fn new(policy: &HealthPolicy, now: Duration) -> Self {
        Self {
            fall: policy.fall.max(1),
            rise: policy.rise.max(1),
            damping: policy.damping,
            healthy: true,
            consecutive_ok: 0,
            consecutive_failed: 0,
            penalty: 0.0,
            penalty_at: now,
            suppressed_since: None,
            flaps: 0,
            last_change: now,
            reason: None,
        }
    }

    /// A probe completed at `now`: passed (`ok`) or failed without a reason. See
    /// [`probe_result`](Tracker::probe_result).
    pub fn probe(&mut self, ok: bool, now: Duration) -> Option<Transition> {
        self.observe(ok, None, now)
    }

    /// A probe completed at `now`; a failure carries its reason (kept for the view until the
    /// next failure replaces it).
    pub fn probe_result(&mut self, result: Result<(), String>, now: Duration) -> Option<Transition> {
        match result {
            Ok(()) => self.observe(true, None, now),
            Err(reason) => self.observe(false, Some(reason), now),
        }
    }

    /// Time passed without a probe: ends a damping hold that has run its course, and makes the
    /// participant healthy if it already has `rise` good probes. Call it at
    /// [`release_at`](Tracker::release_at) (or on every probe interval).
    pub fn tick(&mut self, now: Duration) -> Option<Transition> {
        self.advance(now);
        self.try_rise(now)
    }

    /// Whether new flows may go to this participant.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Held unhealthy by damping, as of the last probe or tick.
    pub fn suppressed(&self) -> bool {
        self.suppressed_since.is_some()
    }

    /// The damping penalty decayed to `now` (to the last input's time when `now` is earlier).
    pub fn penalty(&self, now: Duration) -> f64 {
        self.decayed(now)
    }

    /// When the current damping hold ends at the latest: the earlier of the penalty decaying
    /// below `reuse` and `max_hold_ms` after the hold began. `None` when not held. A
    /// [`tick`](Tracker::tick) at or after this time releases it.
    pub fn release_at(&self) -> Option<Duration> {
        let since = self.suppressed_since?;
        let deadline = since.saturating_add(Duration::from_millis(self.damping.max_hold_ms));
        let d = &self.damping;
        // p × 2^(−t/h) < reuse  ⇔  t > h × log2(p / reuse)
        let decayed_below = if self.penalty < d.reuse {
            self.penalty_at
        } else if d.reuse > 0.0 && d.half_life_ms > 0 {
            let half_life = Duration::from_millis(d.half_life_ms);
            let t = half_life.as_secs_f64() * (self.penalty / d.reuse).log2();
            match Duration::try_from_secs_f64(t) {
                Ok(t) => self.penalty_at.saturating_add(t).saturating_add(RELEASE_MARGIN),
                Err(_) => deadline,
            }
        } else if d.half_life_ms == 0 {
            // Forgets at once: any time after the last input.
            self.penalty_at.saturating_add(RELEASE_MARGIN)
        } else {
            // reuse 0: the penalty never decays below it.
            deadline
        };
        Some(decayed_below.min(deadline))
    }

    /// The state for display, with the penalty decayed to `now`.
    pub fn view(&self, now: Duration) -> HealthView {
        HealthView {
            healthy: self.healthy,
            consecutive_ok: self.consecutive_ok,
            consecutive_failed: self.consecutive_failed,
            penalty: self.decayed(now),
            suppressed: self.suppressed(),
            flaps: self.flaps,
            last_change: u64::try_from(self.last_change.as_millis()).unwrap_or(u64::MAX),
            reason: self.reason.clone(),
        }
    }

    fn observe(&mut self, ok: bool, reason: Option<String>, now: Duration) -> Option<Transition> {
        self.advance(now);
        if ok {
            self.consecutive_ok = self.consecutive_ok.saturating_add(1);
            self.consecutive_failed = 0;
            return self.try_rise(now);
        }
        self.consecutive_failed = self.consecutive_failed.saturating_add(1);
        self.consecutive_ok = 0;
        self.reason = reason;
        if !self.healthy || self.consecutive_failed < self.fall {
            return None;
        }
        self.healthy = false;
        self.flaps = self.flaps.saturating_add(1);
        self.last_change = self.penalty_at;
        self.penalty += self.damping.penalty;
        if self.penalty >= self.damping.suppress {
            self.suppressed_since = Some(self.penalty_at);
        }
        Some(Transition::BecameUnhealthy)
    }

    /// Unhealthy → healthy when `rise` good probes are in and damping does not hold it.
    fn try_rise(&mut self, now: Duration) -> Option<Transition> {
        if self.healthy || self.suppressed_since.is_some() || self.consecutive_ok < self.rise {
            return None;
        }
        self.healthy = true;
        self.last_change = now.max(self.penalty_at);
        Some(Transition::BecameHealthy)
    }

    /// Moves the tracker's clock to `now`: ends a damping hold that has run its course and
    /// decays the penalty.
    fn advance(&mut self, now: Duration) {
        let now = now.max(self.penalty_at);
        if let Some(since) = self.suppressed_since {
            let deadline = since.saturating_add(Duration::from_millis(self.damping.max_hold_ms));
            if now >= deadline && self.decayed(deadline) >= self.damping.reuse {
                // The hold ran out before the penalty decayed: cut it to `reuse` at the deadline.
                self.penalty = self.damping.reuse;
                self.penalty_at = deadline.max(self.penalty_at);
                self.suppressed_since = None;
            } else if self.decayed(now) < self.damping.reuse {
                self.suppressed_since = None;
            }
        }
        self.penalty = self.decayed(now);
        self.penalty_at = now;
    }

    /// `penalty × 2^(−Δt / half_life)` from `penalty_at` to `at` (no decay when `at` is earlier).
    fn decayed(&self, at: Duration) -> f64 {
        let elapsed = at.saturating_sub(self.penalty_at);
        if elapsed.is_zero() {
            return self.penalty;
        }
        if self.damping.half_life_ms == 0 {
            return 0.0;
        }
        let half_lives = elapsed.as_secs_f64() / Duration::from_millis(self.damping.half_life_ms).as_secs_f64();
        self.penalty * (-half_lives).exp2()
    }
}

#[cfg(test)]
mod tests;
