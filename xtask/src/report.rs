//! The side-by-side benchmark report: every figure is a pair measured in the same run (Baton's
//! side and its reference: the floor, the ceiling or the conventional alternative), so the ratio
//! holds on a noisy machine even when the absolute numbers move.
//!
//! `cargo xtask bench all` collects [`Comparison`]s from every benchmark into one [`Report`] and
//! renders it as `results/<date>.md`, `results/<date>.svg` and the README's table. Nothing here
//! measures anything.

/// One measured value and what it is.
#[derive(Clone, Debug)]
pub struct Measured {
    /// What was measured, e.g. "handoff (xdp)", "nginx reverse proxy", "direct".
    pub label: String,
    /// The value in the comparison's unit.
    pub value: f64,
}

impl Measured {
    pub fn new(label: impl Into<String>, value: f64) -> Self {
        Self { label: label.into(), value }
    }
}

/// What the project promises about a comparison, if anything.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// `subject / reference >= x`.
    RatioAtLeast(f64),
    /// `subject / reference <= x`.
    RatioAtMost(f64),
    /// `subject - reference <= x`, in the comparison's unit.
    DifferenceAtMost(f64),
}

/// Baton's figure next to its reference, measured side by side in one run.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// The group in the report, e.g. "BPF program cost", "Goodput".
    pub section: String,
    /// The row, e.g. "FORWARD packet", "16 x 256 MiB".
    pub what: String,
    /// Baton's side.
    pub subject: Measured,
    /// The other side (floor, ceiling or alternative).
    pub reference: Measured,
    /// Unit of both values, e.g. "ns/packet", "MB/s", "req/s", "us", "CPU s/GiB".
    pub unit: String,
    /// Whether a larger value is better (goodput, rate) or worse (cost, latency).
    pub higher_is_better: bool,
    pub target: Option<Target>,
    /// How it was measured (rounds, median of what), shown under the table.
    pub note: String,
}

impl Comparison {
    /// `subject / reference` (infinite when the reference is zero).
    pub fn ratio(&self) -> f64 {
        if self.reference.value == 0.0 {
            f64::INFINITY
        } else {
            self.subject.value / self.reference.value
        }
    }

    /// Whether the target is met; `None` without a target.
    pub fn met(&self) -> Option<bool> {
        self.target.map(|t| match t {
            Target::RatioAtLeast(x) => self.ratio() >= x,
            Target::RatioAtMost(x) => self.ratio() <= x,
            Target::DifferenceAtMost(x) => self.subject.value - self.reference.value <= x,
        })
    }
}

/// Everything one `bench all` run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub rows: Vec<Comparison>,
    /// Free-form lines about the run (machine, kernel, versions of nginx and wrk, errors of a
    /// benchmark that could not run).
    pub context: Vec<String>,
}

impl Report {
    pub fn push(&mut self, c: Comparison) {
        self.rows.push(c);
    }
}

/// The README's benchmark block starts after this line...
pub const README_BEGIN: &str = "<!-- bench:begin -->";
/// ...and ends before this one; [`replace_marked_block`] rewrites what lies between.
pub const README_END: &str = "<!-- bench:end -->";

/// Width of the chart's label column, in SVG user units (pixels).
const SVG_LABEL_WIDTH: f64 = 330.0;
/// Width of the chart's bar area.
const SVG_PLOT_WIDTH: f64 = 420.0;
/// Width of the column right of the bars (the ratio's text).
const SVG_VALUE_WIDTH: f64 = 150.0;
/// Height of one row (a bar or a section heading).
const SVG_ROW_HEIGHT: f64 = 26.0;
/// Room above the first row (title) and below the last (axis labels).
const SVG_MARGIN: f64 = 40.0;
/// The ratio axis is logarithmic and spans at least this factor either side of 1, so that a
/// chart of ratios near 1 does not blow small differences up to the full width.
const SVG_MIN_SPAN: f64 = 2.0;

/// A number for a table cell: thousands separated above 10 000, three significant digits
/// (at most two decimals) below.
fn number(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() { "n/a".to_owned() } else if v > 0.0 { "∞".to_owned() } else { "-∞".to_owned() };
    }
    let a = v.abs();
    if a >= 10_000.0 {
        let digits = format!("{:.0}", a);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 {
            out.insert(0, '-');
        }
        out
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The ratio as a table shows it.
fn ratio_text(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}")
    } else {
        number(r)
    }
}

impl Target {
    /// How a table shows the target, e.g. `ratio ≥ 10`, `≤ +150 us`.
    pub fn describe(&self, unit: &str) -> String {
        match self {
            Target::RatioAtLeast(x) => format!("ratio ≥ {x}"),
            Target::RatioAtMost(x) => format!("ratio ≤ {x}"),
            Target::DifferenceAtMost(x) => format!("≤ +{x} {unit}"),
        }
    }
}

impl Comparison {
    /// The "met" cell: `yes`, `**no**` or `–`; a difference target also shows the difference.
    fn met_text(&self) -> String {
        let verdict = match self.met() {
            None => return "–".to_owned(),
            Some(true) => "yes",
            Some(false) => "**no**",
        };
        match self.target {
            Some(Target::DifferenceAtMost(_)) => {
                let d = self.subject.value - self.reference.value;
                let sign = if d >= 0.0 { "+" } else { "" };
                format!("{verdict} ({sign}{} {})", number(d), self.unit)
            }
            _ => verdict.to_owned(),
        }
    }

    fn target_text(&self) -> String {
        self.target.map_or_else(|| "–".to_owned(), |t| t.describe(&self.unit))
    }
}

/// `|` would end a markdown cell; line breaks would end the row.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// `&`, `<`, `>`, `"` escaped for SVG text and attributes.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl Report {
    /// Sections in the order their first row was pushed, each with its rows in order.
    pub fn sections(&self) -> Vec<(&str, Vec<&Comparison>)> {
        let mut out: Vec<(&str, Vec<&Comparison>)> = Vec::new();
        for row in &self.rows {
            match out.iter_mut().find(|(name, _)| *name == row.section) {
                Some((_, rows)) => rows.push(row),
                None => out.push((row.section.as_str(), vec![row])),
            }
        }
        out
    }

    /// The whole report as markdown: a title with `date`, a table per section (what | Baton |
    /// reference | ratio | target | met) with each row's note below it, then the context lines.
    pub fn markdown(&self, date: &str) -> String {
        let mut out = format!("# Baton benchmarks, {date}\n\n");
        out.push_str(
            "Every row is a pair measured side by side in the same run: Baton's figure (subject) \
             and its reference. ratio = subject / reference.\n",
        );
        for (section, rows) in self.sections() {
            out.push_str(&format!("\n## {section}\n\n"));
            out.push_str("| what | Baton | reference | ratio | target | met |\n");
            out.push_str("|---|---:|---:|---:|---|---|\n");
            for r in &rows {
                out.push_str(&format!(
                    "| {} | {} {} ({}) | {} {} ({}) | {} | {} | {} |\n",
                    cell(&r.what),
                    number(r.subject.value),
                    cell(&r.unit),
                    cell(&r.subject.label),
                    number(r.reference.value),
                    cell(&r.unit),
                    cell(&r.reference.label),
                    ratio_text(r.ratio()),
                    cell(&r.target_text()),
                    r.met_text(),
                ));
            }
            let notes: Vec<_> = rows.iter().filter(|r| !r.note.trim().is_empty()).collect();
            if !notes.is_empty() {
                out.push('\n');
                for r in notes {
                    let better = if r.higher_is_better { "higher is better" } else { "lower is better" };
                    out.push_str(&format!("- {} ({better}): {}\n", r.what, r.note.trim()));
                }
            }
        }
        if !self.context.is_empty() {
            out.push_str("\n## Context\n\n");
            for line in &self.context {
                out.push_str(&format!("- {}\n", line.trim()));
            }
        }
        out
    }

    /// One table of every row (section | what | Baton | reference | ratio | target | met), for
    /// the README.
    pub fn readme_table(&self) -> String {
        let mut out = String::from("| section | what | Baton | reference | ratio | target | met |\n");
        out.push_str("|---|---|---:|---:|---:|---|---|\n");
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} {} | {} {} | {} | {} | {} |\n",
                cell(&r.section),
                cell(&r.what),
                number(r.subject.value),
                cell(&r.unit),
                number(r.reference.value),
                cell(&r.unit),
                ratio_text(r.ratio()),
                cell(&r.target_text()),
                r.met_text(),
            ));
        }
        out
    }

    /// A self-contained SVG chart: per comparison a horizontal bar from ratio 1 to its ratio
    /// on a logarithmic axis, green when its target is met, red when not, blue without one;
    /// a ratio target is a black tick across its bar's row. Section names head their rows.
    pub fn svg(&self) -> String {
        let sections = self.sections();
        let ratios: Vec<f64> = self.rows.iter().map(Comparison::ratio).filter(|r| r.is_finite() && *r > 0.0).collect();
        let targets: Vec<f64> = self
            .rows
            .iter()
            .filter_map(|r| match r.target {
                Some(Target::RatioAtLeast(x) | Target::RatioAtMost(x)) if x > 0.0 => Some(x),
                _ => None,
            })
            .collect();
        let (mut lo, mut hi) = (1.0 / SVG_MIN_SPAN, SVG_MIN_SPAN);
        for v in ratios.iter().chain(&targets) {
            lo = lo.min(*v / 1.25);
            hi = hi.max(*v * 1.25);
        }
        let (llo, lhi) = (lo.log10(), hi.log10());
        let x_of = |r: f64| SVG_LABEL_WIDTH + (r.log10() - llo) / (lhi - llo) * SVG_PLOT_WIDTH;
        let row_count = self.rows.len() + sections.len();
        let width = SVG_LABEL_WIDTH + SVG_PLOT_WIDTH + SVG_VALUE_WIDTH;
        let height = 2.0 * SVG_MARGIN + row_count as f64 * SVG_ROW_HEIGHT;
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
             viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n"
        );
        out.push_str(&format!("<rect width=\"{width:.0}\" height=\"{height:.0}\" fill=\"white\"/>\n"));
        out.push_str(&format!(
            "<text x=\"10\" y=\"24\" font-size=\"15\" font-weight=\"bold\">Baton / reference (log scale; tick: target)</text>\n"
        ));
        let one = x_of(1.0);
        let plot_bottom = height - SVG_MARGIN;
        out.push_str(&format!(
            "<line x1=\"{one:.1}\" y1=\"{SVG_MARGIN:.1}\" x2=\"{one:.1}\" y2=\"{plot_bottom:.1}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\n"
        ));
        // Axis labels at powers of ten and their halves/doubles that fit.
        let mut tick = 10f64.powf(llo.floor());
        while tick <= hi {
            for t in [tick, 2.0 * tick, 5.0 * tick] {
                if t >= lo && t <= hi {
                    let x = x_of(t);
                    out.push_str(&format!(
                        "<line x1=\"{x:.1}\" y1=\"{plot_bottom:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>\n<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{}</text>\n",
                        plot_bottom + 4.0,
                        plot_bottom + 16.0,
                        t
                    ));
                }
            }
            tick *= 10.0;
        }
        let mut y = SVG_MARGIN;
        for (section, rows) in sections {
            out.push_str(&format!(
                "<text x=\"10\" y=\"{:.1}\" font-weight=\"bold\">{}</text>\n",
                y + SVG_ROW_HEIGHT * 0.65,
                xml(section)
            ));
            y += SVG_ROW_HEIGHT;
            for r in rows {
                let mid = y + SVG_ROW_HEIGHT * 0.65;
                out.push_str(&format!("<text x=\"20\" y=\"{mid:.1}\">{}</text>\n", xml(&r.what)));
                let ratio = r.ratio();
                let colour = match r.met() {
                    Some(true) => "#2e9d4f",
                    Some(false) => "#d23b3b",
                    None => "#4a78c2",
                };
                if ratio.is_finite() && ratio > 0.0 {
                    let x = x_of(ratio);
                    let (left, w) = if x >= one { (one, x - one) } else { (x, one - x) };
                    out.push_str(&format!(
                        "<rect x=\"{left:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>\n",
                        y + 5.0,
                        w.max(1.0),
                        SVG_ROW_HEIGHT - 10.0
                    ));
                }
                if let Some(Target::RatioAtLeast(t) | Target::RatioAtMost(t)) = r.target {
                    if t > 0.0 {
                        let x = x_of(t);
                        out.push_str(&format!(
                            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-width=\"2\"/>\n",
                            y + 2.0,
                            y + SVG_ROW_HEIGHT - 2.0
                        ));
                    }
                }
                let mut label = format!("{}×", ratio_text(ratio));
                if let Some(t) = r.target {
                    label.push_str(&format!(" ({})", t.describe(&r.unit)));
                }
                out.push_str(&format!(
                    "<text x=\"{:.1}\" y=\"{mid:.1}\">{}</text>\n",
                    SVG_LABEL_WIDTH + SVG_PLOT_WIDTH + 8.0,
                    xml(&label)
                ));
                y += SVG_ROW_HEIGHT;
            }
        }
        out.push_str("</svg>\n");
        out
    }
}

/// Replaces what lies between the lines [`README_BEGIN`] and [`README_END`] of `text` with
/// `block` (the markers stay); `None` when the markers are missing or out of order.
pub fn replace_marked_block(text: &str, block: &str) -> Option<String> {
    let begin = text.find(README_BEGIN)?;
    let after_begin = begin + README_BEGIN.len();
    let end = after_begin + text[after_begin..].find(README_END)?;
    let mut body = block.trim_end_matches('\n').to_owned();
    body.insert(0, '\n');
    body.push('\n');
    Some(format!("{}{}{}", &text[..after_begin], body, &text[end..]))
}

/// Today's date in UTC as `YYYY-MM-DD` (from the system clock; no time zone involved).
pub fn utc_date_today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    civil_date(secs / 86_400)
}

/// The proleptic Gregorian date `days` after 1970-01-01, as `YYYY-MM-DD` (the
/// days-to-civil conversion by era of 400 years).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Where [`write_results`] put things.
#[derive(Debug)]
pub struct Written {
    pub markdown: std::path::PathBuf,
    pub svg: std::path::PathBuf,
    pub readme: std::path::PathBuf,
}

/// Writes `<root>/results/<date>.md` and `<root>/results/<date>.svg` and replaces the
/// README's block between the markers with the table and links to both files.
pub fn write_results(report: &Report, root: &std::path::Path, date: &str) -> anyhow::Result<Written> {
    use anyhow::Context as _;
    let dir = root.join("results");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let markdown = dir.join(format!("{date}.md"));
    let svg = dir.join(format!("{date}.svg"));
    std::fs::write(&markdown, report.markdown(date)).with_context(|| format!("writing {}", markdown.display()))?;
    std::fs::write(&svg, report.svg()).with_context(|| format!("writing {}", svg.display()))?;
    let readme = root.join("README.md");
    let text = std::fs::read_to_string(&readme).with_context(|| format!("reading {}", readme.display()))?;
    let updated = replace_marked_block(&text, &readme_block(report, date))
        .with_context(|| format!("{} has no {README_BEGIN} ... {README_END} block", readme.display()))?;
    std::fs::write(&readme, updated).with_context(|| format!("writing {}", readme.display()))?;
    Ok(Written { markdown, svg, readme })
}

/// What goes between the README's markers.
fn readme_block(report: &Report, date: &str) -> String {
    let mut out = format!(
        "Latest `cargo xtask bench all` ({date}; details in [results/{date}.md](results/{date}.md), \
         chart [results/{date}.svg](results/{date}.svg)):\n\n"
    );
    out.push_str(&report.readme_table());
    let failed: Vec<_> = report.context.iter().filter(|l| l.contains("failed")).collect();
    if !failed.is_empty() {
        out.push('\n');
        for line in failed {
            out.push_str(&format!("- {}\n", line.trim()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(subject: f64, reference: f64, target: Option<Target>) -> Comparison {
        Comparison {
            section: "Forwarding rate (one core)".into(),
            what: "xdp vs userspace".into(),
            subject: Measured::new("xdp", subject),
            reference: Measured::new("userspace", reference),
            unit: "pps".into(),
            higher_is_better: true,
            target,
            note: "median of 3 rounds".into(),
        }
    }

    #[test]
    fn ratio_and_met() {
        assert_eq!(row(300.0, 100.0, None).ratio(), 3.0);
        assert_eq!(row(1.0, 0.0, None).ratio(), f64::INFINITY);
        assert_eq!(row(300.0, 100.0, None).met(), None);
        assert_eq!(row(1000.0, 100.0, Some(Target::RatioAtLeast(10.0))).met(), Some(true));
        assert_eq!(row(999.0, 100.0, Some(Target::RatioAtLeast(10.0))).met(), Some(false));
        assert_eq!(row(50.0, 100.0, Some(Target::RatioAtMost(0.5))).met(), Some(true));
        assert_eq!(row(51.0, 100.0, Some(Target::RatioAtMost(0.5))).met(), Some(false));
        assert_eq!(row(250.0, 100.0, Some(Target::DifferenceAtMost(150.0))).met(), Some(true));
        assert_eq!(row(251.0, 100.0, Some(Target::DifferenceAtMost(150.0))).met(), Some(false));
    }

    #[test]
    fn numbers() {
        assert_eq!(number(3_456_789.4), "3,456,789");
        assert_eq!(number(12_345.0), "12,345");
        assert_eq!(number(9_999.6), "10000");
        assert_eq!(number(123.4), "123");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(1.234), "1.23");
        assert_eq!(number(-20_000.0), "-20,000");
        assert_eq!(number(f64::INFINITY), "∞");
        assert_eq!(number(f64::NAN), "n/a");
    }

    #[test]
    fn markdown_exact() {
        let mut report = Report::default();
        report.push(row(4_000_000.0, 250_000.0, Some(Target::RatioAtLeast(10.0))));
        report.push(Comparison {
            section: "BPF program cost".into(),
            what: "PASS packet | tc".into(),
            subject: Measured::new("main program", 31.5),
            reference: Measured::new("empty program", 9.0),
            unit: "ns/packet".into(),
            higher_is_better: false,
            target: None,
            note: String::new(),
        });
        report.push(Comparison {
            section: "Latency".into(),
            what: "ttfb p50".into(),
            subject: Measured::new("handoff", 400.0),
            reference: Measured::new("direct", 300.0),
            unit: "us".into(),
            higher_is_better: false,
            target: Some(Target::DifferenceAtMost(50.0)),
            note: "200 requests".into(),
        });
        report.context.push("kernel 6.18".into());
        let expected = "# Baton benchmarks, 2025-03-04\n\
\n\
Every row is a pair measured side by side in the same run: Baton's figure (subject) and its reference. ratio = subject / reference.\n\
\n\
## Forwarding rate (one core)\n\
\n\
| what | Baton | reference | ratio | target | met |\n\
|---|---:|---:|---:|---|---|\n\
| xdp vs userspace | 4,000,000 pps (xdp) | 250,000 pps (userspace) | 16.00 | ratio ≥ 10 | yes |\n\
\n\
- xdp vs userspace (higher is better): median of 3 rounds\n\
\n\
## BPF program cost\n\
\n\
| what | Baton | reference | ratio | target | met |\n\
|---|---:|---:|---:|---|---|\n\
| PASS packet \\| tc | 31.5 ns/packet (main program) | 9.00 ns/packet (empty program) | 3.50 | – | – |\n\
\n\
## Latency\n\
\n\
| what | Baton | reference | ratio | target | met |\n\
|---|---:|---:|---:|---|---|\n\
| ttfb p50 | 400 us (handoff) | 300 us (direct) | 1.33 | ≤ +50 us | **no** (+100 us) |\n\
\n\
- ttfb p50 (lower is better): 200 requests\n\
\n\
## Context\n\
\n\
- kernel 6.18\n";
        assert_eq!(report.markdown("2025-03-04"), expected);
    }

    #[test]
    fn readme_table_exact() {
        let mut report = Report::default();
        report.push(row(2_000_000.0, 400_000.0, Some(Target::RatioAtLeast(10.0))));
        assert_eq!(
            report.readme_table(),
            "| section | what | Baton | reference | ratio | target | met |\n\
             |---|---|---:|---:|---:|---|---|\n\
             | Forwarding rate (one core) | xdp vs userspace | 2,000,000 pps | 400,000 pps | 5.00 | ratio ≥ 10 | **no** |\n"
        );
    }

    #[test]
    fn marker_replacement() {
        let text = "# T\n\nintro\n<!-- bench:begin -->\nold\nlines\n<!-- bench:end -->\nafter\n";
        assert_eq!(
            replace_marked_block(text, "| a |\n|---|\n").as_deref(),
            Some("# T\n\nintro\n<!-- bench:begin -->\n| a |\n|---|\n<!-- bench:end -->\nafter\n")
        );
        // Replacing twice gives the same text (the block does not grow).
        let once = replace_marked_block(text, "new").unwrap_or_default();
        assert_eq!(replace_marked_block(&once, "new").as_deref(), Some(once.as_str()));
        assert_eq!(replace_marked_block("<!-- bench:begin -->\n<!-- bench:end -->", "x").as_deref(), Some("<!-- bench:begin -->\nx\n<!-- bench:end -->"));
        assert_eq!(replace_marked_block("no markers", "x"), None);
        assert_eq!(replace_marked_block("<!-- bench:end -->\n<!-- bench:begin -->\n", "x"), None);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(19_782), "2024-02-29");
        assert_eq!(civil_date(20_089), "2025-01-01");
    }

    #[test]
    fn svg_has_a_bar_per_row_and_target_tick() {
        let mut report = Report::default();
        report.push(row(4_000_000.0, 250_000.0, Some(Target::RatioAtLeast(10.0))));
        report.push(row(100.0, 200.0, None));
        let svg = report.svg();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert_eq!(svg.matches("stroke=\"black\"").count(), 1);
        assert!(svg.contains(">16.00× (ratio ≥ 10)</text>"));
        assert!(svg.contains(">0.50×</text>"));
        assert!(svg.contains("fill=\"#2e9d4f\""));
    }
}
