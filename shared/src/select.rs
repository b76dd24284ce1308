//! Participant selection as configuration: geo distance, load, free capacity and whether a
//! participant already holds the object, combined by weights, with two geo modes ("geo ranks":
//! distance is one weighted term; "geo only filters": only participants near the nearest one
//! are eligible, and among them distance does not count).
//!
//! [`rank`] scores every candidate (Σ weight × term, each term normalised to 0..=1, lower is
//! better), excludes those that cannot serve (down, unhealthy, draining, full, or outside the
//! geo filter's radius), orders them and explains the winner in one sentence for
//! `batonctl explain`. [`choose`] is the same decision without the explanation, and [`eligible`]
//! the order of all who can serve (the mirrors the main advertises).
//!
//! Pure functions over a snapshot of the candidates; never reads a clock, the registry or a GeoIP
//! database, and keeps no state between calls.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::geo::{distance_km, Coord, HALF_CIRCUMFERENCE_KM};

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
    /// the candidates that can serve): prefers the bigger participant when loads are alike.
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

impl Policy {
    /// Checks what [`rank`] cannot repair on its own: every weight finite and not negative, and
    /// the filter radius finite or +∞ and not negative. The config loader calls this; [`rank`]
    /// still gives a deterministic order for a policy that fails it (a NaN or negative radius
    /// counts as 0 km, and scores are compared by IEEE total order), but it may not be a useful one.
    pub fn check(&self) -> Result<(), SelectError> {
        let w = &self.weights;
        for (term, weight) in
            [(Term::Distance, w.distance), (Term::Load, w.load), (Term::Capacity, w.capacity), (Term::Object, w.object)]
        {
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(SelectError::Weight { term: term.name(), weight });
            }
        }
        if self.filter_radius_km.is_nan() || self.filter_radius_km < 0.0 {
            return Err(SelectError::Radius { km: self.filter_radius_km });
        }
        Ok(())
    }
}

/// Why a selection policy is unusable.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum SelectError {
    /// A weight is NaN, infinite or negative.
    #[error("weight of {term} is {weight}; weights must be finite and not negative")]
    Weight { term: &'static str, weight: f64 },
    /// The filter radius is NaN or negative.
    #[error("filter radius {km} km is not a distance (must be 0 or more)")]
    Radius { km: f64 },
}

/// A participant's state as the main sees it, for selection. Only [`Health::Healthy`]
/// participants can be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Connected, probes pass (or have not failed `fall` times yet).
    Healthy,
    /// Connected, but probes fail or flap damping holds it (see [`crate::health`]).
    Unhealthy,
    /// Connected and serving its flows, but the operator drains it: no new flows.
    Draining,
    /// Not connected to the main.
    Down,
}

/// What the selection knows about one participant: a snapshot the main takes from its registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: String,
    pub coord: Coord,
    pub health: Health,
    pub active_flows: u32,
    /// Most flows it accepts; 0 means it accepts none.
    pub capacity: u32,
    /// Known to hold the requested object (no cache fill needed).
    pub has_object: bool,
}

/// Why a candidate cannot serve. When several apply, the first in declaration order is given
/// ([`Exclusion::OutsideRadius`] only applies to candidates none of the others excludes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exclusion {
    /// [`Health::Down`]: not connected.
    Down,
    /// [`Health::Unhealthy`]: probes fail or damping holds it.
    Unhealthy,
    /// [`Health::Draining`]: the operator drains it.
    Draining,
    /// `active_flows >= capacity`: new flows go to the next one.
    Full,
    /// [`GeoMode::Filter`]: more than `filter_radius_km` farther from the client than the nearest
    /// candidate that can serve.
    OutsideRadius,
}

impl Exclusion {
    /// The label `batonctl explain` and [`Ranking::reason`] use.
    fn label(self) -> &'static str {
        match self {
            Exclusion::Down => "down",
            Exclusion::Unhealthy => "unhealthy",
            Exclusion::Draining => "draining",
            Exclusion::Full => "full",
            Exclusion::OutsideRadius => "outside the radius",
        }
    }

    /// Every exclusion, in precedence order.
    const ALL: [Exclusion; 5] =
        [Exclusion::Down, Exclusion::Unhealthy, Exclusion::Draining, Exclusion::Full, Exclusion::OutsideRadius];
}

/// The score's terms for one candidate, each normalised to 0..=1 (lower is better) before it is
/// weighted by the matching field of [`Weights`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Terms {
    /// `distance_km / HALF_CIRCUMFERENCE_KM`; 0 when the client's location is unknown or in
    /// [`GeoMode::Filter`] (geography only filters there).
    pub distance: f64,
    /// `active_flows / capacity`, at most 1; 1 when capacity is 0.
    pub load: f64,
    /// `1 − free_slots / max_free`, where `max_free` is the most free slots among the candidates
    /// that can serve; 0 when `max_free` is 0. Clamped to 0..=1, since an excluded candidate may
    /// have more free slots than any eligible one.
    pub capacity: f64,
    /// 0 when the candidate holds the object, 1 when not.
    pub object: f64,
}

/// One line of the ranking, as `batonctl explain` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    pub name: String,
    /// Distance from the client, when the client's location is known.
    pub distance_km: Option<f64>,
    /// `active_flows / capacity`; 1.0 when capacity is 0.
    pub load: f64,
    /// `capacity − active_flows`, 0 when full.
    pub free_slots: u32,
    pub health: Health,
    pub has_object: bool,
    pub terms: Terms,
    /// Σ weight × term; lower is better. Computed for excluded candidates too, for display.
    pub score: f64,
    /// `None` for candidates that can serve.
    pub excluded: Option<Exclusion>,
}

/// The whole decision: every candidate in order, the winner and why it won.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranking {
    /// Candidates that can serve first (best first), then the excluded ones in the same order.
    pub ranked: Vec<Ranked>,
    /// The participant that should serve; `None` when none can (the main serves itself).
    pub winner: Option<String>,
    /// One sentence on why the winner won (or why nobody can serve), naming the deciding terms
    /// against the runner-up. Deterministic for the same inputs.
    pub reason: String,
}

/// The four terms of the score, in the order the reason lists equal contributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Term {
    Distance,
    Load,
    Capacity,
    Object,
}

impl Term {
    const ALL: [Term; 4] = [Term::Distance, Term::Load, Term::Capacity, Term::Object];

    /// The name of the term, as in the config and in [`Terms`].
    fn name(self) -> &'static str {
        match self {
            Term::Distance => "distance",
            Term::Load => "load",
            Term::Capacity => "capacity",
            Term::Object => "object",
        }
    }

    fn of(self, t: &Terms) -> f64 {
        match self {
            Term::Distance => t.distance,
            Term::Load => t.load,
            Term::Capacity => t.capacity,
            Term::Object => t.object,
        }
    }

    fn weight(self, w: &Weights) -> f64 {
        match self {
            Term::Distance => w.distance,
            Term::Load => w.load,
            Term::Capacity => w.capacity,
            Term::Object => w.object,
        }
    }
}

/// A ranked candidate plus the raw counts the reason quotes.
#[derive(Debug)]
struct Row {
    ranked: Ranked,
    active_flows: u32,
    capacity: u32,
}

/// Where the geo filter cut, for the reason.
#[derive(Debug, Clone, Copy)]
struct Cut {
    nearest_km: f64,
    radius_km: f64,
}

fn load(c: &Candidate) -> f64 {
    if c.capacity == 0 {
        1.0
    } else {
        f64::from(c.active_flows) / f64::from(c.capacity)
    }
}

/// The exclusions that need no comparison with other candidates, in precedence order.
fn own_exclusion(c: &Candidate) -> Option<Exclusion> {
    match c.health {
        Health::Down => Some(Exclusion::Down),
        Health::Unhealthy => Some(Exclusion::Unhealthy),
        Health::Draining => Some(Exclusion::Draining),
        Health::Healthy if c.active_flows >= c.capacity => Some(Exclusion::Full),
        Health::Healthy => None,
    }
}

/// Ranking order without regard to exclusion: score, then distance, then load, then name.
fn by_score(a: &Ranked, b: &Ranked) -> Ordering {
    a.score
        .total_cmp(&b.score)
        .then_with(|| match (a.distance_km, b.distance_km) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            _ => Ordering::Equal,
        })
        .then_with(|| a.load.total_cmp(&b.load))
        .then_with(|| a.name.cmp(&b.name))
}

/// Scores and orders every candidate and picks the winner: the first one no [`Exclusion`]
/// applies to. See [`Terms`] for the terms and [`GeoMode`] for how geography enters.
///
/// In [`GeoMode::Filter`] with a known client location, the nearest candidate that can serve sets
/// `d0`, and those farther than `d0 + filter_radius_km` are excluded as
/// [`Exclusion::OutsideRadius`]. With the client's location unknown nothing is filtered and
/// distance counts for nobody, in either mode.
pub fn rank(policy: &Policy, client: Option<Coord>, candidates: &[Candidate]) -> Ranking {
    let (rows, cut) = order(policy, client, candidates);
    let reason = reason(&policy.weights, client, cut, &rows);
    let winner = winner(&rows);
    Ranking { ranked: rows.into_iter().map(|r| r.ranked).collect(), winner, reason }
}

/// The participant that should serve, or `None` when none can (the main then serves itself).
/// The same decision as [`rank`]'s, without the explanation (this runs for every new flow).
pub fn choose(policy: &Policy, client: Option<Coord>, candidates: &[Candidate]) -> Option<String> {
    winner(&order(policy, client, candidates).0)
}

/// Every candidate that can serve, best first: [`choose`]'s winner, then the others in the same
/// ranking order. The main advertises mirrors in this order, so a client's first mirror is the
/// participant it would be handed to.
pub fn eligible(policy: &Policy, client: Option<Coord>, candidates: &[Candidate]) -> Vec<String> {
    order(policy, client, candidates).0.into_iter().take_while(|r| r.ranked.excluded.is_none()).map(|r| r.ranked.name).collect()
}

fn winner(rows: &[Row]) -> Option<String> {
    rows.first().filter(|r| r.ranked.excluded.is_none()).map(|r| r.ranked.name.clone())
}

/// Every candidate scored, in ranking order, and where the geo filter cut.
fn order(policy: &Policy, client: Option<Coord>, candidates: &[Candidate]) -> (Vec<Row>, Option<Cut>) {
    let mut rows: Vec<Row> = candidates
        .iter()
        .map(|c| Row {
            ranked: Ranked {
                name: c.name.clone(),
                distance_km: client.map(|at| distance_km(at, c.coord)),
                load: load(c),
                free_slots: c.capacity.saturating_sub(c.active_flows),
                health: c.health,
                has_object: c.has_object,
                terms: Terms { distance: 0.0, load: 0.0, capacity: 0.0, object: 0.0 },
                score: 0.0,
                excluded: own_exclusion(c),
            },
            active_flows: c.active_flows,
            capacity: c.capacity,
        })
        .collect();

    let cut = match policy.mode {
        GeoMode::Filter => geo_filter(policy, &mut rows),
        GeoMode::Rank => None,
    };

    let max_free = rows.iter().filter(|r| r.ranked.excluded.is_none()).map(|r| r.ranked.free_slots).max().unwrap_or(0);
    for row in &mut rows {
        let r = &mut row.ranked;
        let distance = match (policy.mode, r.distance_km) {
            (GeoMode::Rank, Some(km)) => (km / HALF_CIRCUMFERENCE_KM).min(1.0),
            _ => 0.0,
        };
        let capacity =
            if max_free == 0 { 0.0 } else { (1.0 - f64::from(r.free_slots) / f64::from(max_free)).clamp(0.0, 1.0) };
        let object = if r.has_object { 0.0 } else { 1.0 };
        // Over capacity (the main's count can run ahead of a heartbeat) still counts as 1.
        r.terms = Terms { distance, load: r.load.min(1.0), capacity, object };
        r.score = Term::ALL.iter().map(|t| t.weight(&policy.weights) * t.of(&r.terms)).sum();
    }

    rows.sort_by(|a, b| {
        a.ranked.excluded.is_some().cmp(&b.ranked.excluded.is_some()).then_with(|| by_score(&a.ranked, &b.ranked))
    });
    (rows, cut)
}

/// Applies [`GeoMode::Filter`]'s radius to the rows; returns where it cut, or `None` when the
/// client's location is unknown or nobody can serve.
fn geo_filter(policy: &Policy, rows: &mut [Row]) -> Option<Cut> {
    let nearest_km = rows
        .iter()
        .filter(|r| r.ranked.excluded.is_none())
        .filter_map(|r| r.ranked.distance_km)
        .min_by(f64::total_cmp)?;
    // NaN and negative radii (which `Policy::check` rejects) count as 0: the nearest always stays.
    let radius_km = if policy.filter_radius_km >= 0.0 { policy.filter_radius_km } else { 0.0 };
    for row in rows.iter_mut().filter(|r| r.ranked.excluded.is_none()) {
        if row.ranked.distance_km.is_some_and(|km| km > nearest_km + radius_km) {
            row.ranked.excluded = Some(Exclusion::OutsideRadius);
        }
    }
    Some(Cut { nearest_km, radius_km })
}

/// Builds [`Ranking::reason`] from the sorted rows.
fn reason(weights: &Weights, client: Option<Coord>, cut: Option<Cut>, rows: &[Row]) -> String {
    let Some(winner) = rows.first().filter(|r| r.ranked.excluded.is_none()) else {
        return if rows.is_empty() {
            "no participant can serve: none is registered (the main serves itself)".to_string()
        } else {
            format!("no participant can serve: {} (the main serves itself)", exclusion_counts(rows))
        };
    };
    let w = &winner.ranked;
    let runner_up = rows.get(1).filter(|r| r.ranked.excluded.is_none());
    // An excluded candidate the client might have expected to win: the best one by score when it
    // would have ranked above the winner, else the nearest one when it is nearer than the winner
    // ("the nearest is full").
    let excluded = || rows.iter().filter(|r| r.ranked.excluded.is_some());
    let passed_over = excluded().find(|x| by_score(&x.ranked, w).is_lt()).or_else(|| {
        let winner_km = w.distance_km?;
        excluded()
            .filter_map(|x| x.ranked.distance_km.map(|km| (x, km)))
            .filter(|&(_, km)| km < winner_km)
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(x, _)| x)
    });

    let mut out = format!("{} wins", w.name);
    match (passed_over, runner_up) {
        (Some(x), runner_up) => {
            out.push_str(&format!(": {} is {}; next best by score", x.ranked.name, why_excluded(x, cut)));
            if let Some(r) = runner_up {
                out.push_str(&format!(", over {}", compare(weights, w, &r.ranked)));
            }
        }
        (None, Some(r)) => out.push_str(&format!(" over {}", compare(weights, w, &r.ranked))),
        (None, None) if rows.len() == 1 => out.push_str(": the only participant"),
        (None, None) => {
            out.push_str(&format!(": the only participant that can serve (others: {})", exclusion_counts(rows)))
        }
    }
    if client.is_none() {
        out.push_str("; client location unknown, distance not counted");
    }
    out
}

/// "2 down, 1 full": how many candidates each exclusion applies to, in precedence order.
fn exclusion_counts(rows: &[Row]) -> String {
    Exclusion::ALL
        .iter()
        .filter_map(|&e| {
            let n = rows.iter().filter(|r| r.ranked.excluded == Some(e)).count();
            (n > 0).then(|| format!("{n} {}", e.label()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// "full (1000/1000)", "outside the radius (5837 km, more than 1000 km beyond the nearest at 344 km)".
fn why_excluded(row: &Row, cut: Option<Cut>) -> String {
    match row.ranked.excluded {
        Some(Exclusion::Full) => format!("full ({}/{})", row.active_flows, row.capacity),
        Some(Exclusion::OutsideRadius) => match (row.ranked.distance_km, cut) {
            (Some(km), Some(cut)) => format!(
                "outside the radius ({km:.0} km, more than {:.0} km beyond the nearest at {:.0} km)",
                cut.radius_km, cut.nearest_km
            ),
            _ => Exclusion::OutsideRadius.label().to_string(),
        },
        Some(e) => e.label().to_string(),
        None => "eligible".to_string(),
    }
}

/// "r (score 0.412 vs 0.736): 4893 km nearer (distance 0.02 vs 0.27 × 1.0), …; despite …": the
/// terms in which the winner `w` does better than the runner-up `r`, largest weighted difference
/// first, then those in which it does worse. Equal scores name the tie-break instead.
fn compare(weights: &Weights, w: &Ranked, r: &Ranked) -> String {
    if w.score == r.score {
        let tie_break = match (w.distance_km, r.distance_km) {
            (Some(a), Some(b)) if a != b => format!("distance, {:.0} km nearer", b - a),
            _ if w.load != r.load => format!("load, {:.2} vs {:.2}", w.load, r.load),
            _ => "name".to_string(),
        };
        return format!("{} (equal score {:.3}): tie broken by {tie_break}", r.name, w.score);
    }
    // Weighted difference per term: positive where the winner does better.
    let mut deltas: Vec<(Term, f64)> = Term::ALL
        .iter()
        .map(|&t| (t, t.weight(weights) * t.of(&r.terms) - t.weight(weights) * t.of(&w.terms)))
        .filter(|&(_, d)| d != 0.0)
        .collect();
    // Stable: equal differences keep the order of Term::ALL.
    deltas.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    let better: Vec<String> = deltas.iter().filter(|d| d.1 > 0.0).map(|&(t, _)| describe(t, weights, w, r)).collect();
    let worse: Vec<String> = deltas.iter().filter(|d| d.1 < 0.0).map(|&(t, _)| describe(t, weights, w, r)).collect();
    let mut out = format!("{} (score {:.3} vs {:.3}): {}", r.name, w.score, r.score, better.join(", "));
    if !worse.is_empty() {
        out.push_str(&format!("; despite {}", worse.join(", ")));
    }
    out
}

/// One term of the winner `w` against the runner-up `r`, e.g. "412 km nearer (distance 0.02 vs
/// 0.31 × 1.0)" or "less loaded (load 0.10 vs 0.40 × 0.5)".
fn describe(term: Term, weights: &Weights, w: &Ranked, r: &Ranked) -> String {
    let (tw, tr, weight) = (term.of(&w.terms), term.of(&r.terms), term.weight(weights));
    let figures = format!("{} {tw:.2} vs {tr:.2} × {weight:?}", term.name());
    match term {
        Term::Distance => {
            let km = r.distance_km.unwrap_or(0.0) - w.distance_km.unwrap_or(0.0);
            let side = if km >= 0.0 { "nearer" } else { "farther" };
            format!("{:.0} km {side} ({figures})", km.abs())
        }
        Term::Load => format!("{} loaded ({figures})", if tw < tr { "less" } else { "more" }),
        Term::Capacity => format!(
            "{} free slots, {} vs {} ({figures})",
            if w.free_slots > r.free_slots { "more" } else { "fewer" },
            w.free_slots,
            r.free_slots
        ),
        Term::Object => {
            let holds = if w.has_object { "holds the object" } else { "does not hold the object" };
            format!("{holds} ({figures})")
        }
    }
}

#[cfg(test)]
mod tests;
