//! Participant selection as configuration: geo distance, load, free capacity and whether a
//! participant already holds the object, combined by weights, with two geo modes ("geo ranks":
//! distance is one weighted term; "geo only filters": only participants near the nearest one
//! are eligible, and among them distance does not count).
//!
//! Pure functions over a snapshot of the candidates; never reads a clock or the registry.

use serde::{Deserialize, Serialize};

/// How geography enters the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeoMode {
    /// Distance is a weighted term of the score, like load and object presence.
    #[default]
    Rank,
    /// Only participants within `filter_radius_km` of the nearest eligible one are eligible;
    /// the rest of the score (load, capacity, object) picks among them.
    Filter,
}

/// Weights of the score's terms; each term is normalised to 0..=1 (lower is better) before it
/// is weighted, so the weights compare directly.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    /// Great-circle distance from the client (normalised by half the Earth's circumference).
    pub distance: f64,
    /// `active_flows / capacity`.
    pub load: f64,
    /// Little free capacity in absolute slots (normalised by the largest free capacity among
    /// the candidates): prefers the bigger participant when loads are alike.
    pub capacity: f64,
    /// 1 when the participant is not known to hold the requested object (it would fill its
    /// cache first), 0 when it is.
    pub object: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self { distance: 1.0, load: 0.5, capacity: 0.0, object: 0.2 }
    }
}

/// The selection policy (the main's `selection:` config section).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub mode: GeoMode,
    /// In `filter` mode: how much farther than the nearest eligible participant another may be
    /// and still be eligible.
    pub filter_radius_km: f64,
    pub weights: Weights,
}

impl Default for Policy {
    fn default() -> Self {
        Self { mode: GeoMode::Rank, filter_radius_km: 1000.0, weights: Weights::default() }
    }
}
