//! Participant health from the main's point of view: consecutive probe results with rise/fall
//! thresholds, and flap damping (RFC 2439 style: each fall adds a penalty that decays
//! exponentially; above `suppress` the participant stays unhealthy until the penalty decays
//! below `reuse`, whatever the probes say).
//!
//! A deterministic state machine: time is passed in, never read.

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
