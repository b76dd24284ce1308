//! Finds the line of a dotted config path (`control.port`, `participants[1].addr`) in YAML text
//! by its indentation, for errors found after deserialization (cross-field checks, values set by
//! command-line flags), where serde_yaml has no position to give.
//!
//! A small scan of block-style YAML, not a parser: it only ever feeds error messages. For flow
//! style (`control: {port: 1}`) or anything it does not follow it answers with the deepest part
//! of the path it did find, or nothing. It must never decide whether a config is valid.

/// One structural item of a line.
#[derive(Debug, PartialEq)]
enum Item<'a> {
    /// A `- ` sequence entry.
    Dash,
    /// A `key:` of a block mapping.
    Key(&'a str),
    /// Anything else: a scalar, flow collection or block-scalar text.
    Other,
}

/// An item with its 1-based line and 0-based column.
#[derive(Debug)]
struct Entry<'a> {
    line: usize,
    column: usize,
    item: Item<'a>,
}

/// One step of a dotted path.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `participants[1].addr` → `[Key(participants), Index(1), Key(addr)]`; `None` if malformed.
fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let close = inner.find(']')?;
            out.push(Step::Index(inner[..close].parse().ok()?));
            rest = &inner[close + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

/// The key of a `key: value` or `key:` line, without quotes; `None` if the line is no such key.
fn key_of(rest: &str) -> Option<&str> {
    let is_key_end = |after: &str| after.is_empty() || after.starts_with([' ', '\t']);
    if let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let inner = &rest[1..];
        let close = inner.find(quote)?;
        let after = inner[close + 1..].strip_prefix(':')?;
        return is_key_end(after).then_some(&inner[..close]);
    }
    if rest.starts_with(['{', '[', '#', '&', '*', '!', '|', '>']) {
        return None;
    }
    let mut search = 0;
    while let Some(at) = rest[search..].find(':') {
        let colon = search + at;
        if is_key_end(&rest[colon + 1..]) {
            let key = rest[..colon].trim_end();
            return (!key.is_empty()).then_some(key);
        }
        search = colon + 1;
    }
    None
}

/// The structural items of `text`, in order; blank lines, comments and document markers skipped.
fn entries(text: &str) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let mut rest = raw.trim_start_matches(' ');
        let mut column = raw.len() - rest.len();
        if rest.is_empty() || rest.starts_with('#') || (column == 0 && (rest.starts_with("---") || rest == "...")) {
            continue;
        }
        loop {
            if rest == "-" || rest.starts_with("- ") {
                out.push(Entry { line, column, item: Item::Dash });
                let after = &rest[1..];
                let value = after.trim_start_matches(' ');
                column += 1 + after.len() - value.len();
                rest = value;
                if rest.is_empty() || rest.starts_with('#') {
                    break;
                }
                continue;
            }
            let item = key_of(rest).map_or(Item::Other, Item::Key);
            out.push(Entry { line, column, item });
            break;
        }
    }
    out
}

/// The end (exclusive) of the children of `entries[at]` within `..end`: the following entries
/// deeper than it, plus, for a key, the sequence entries at its own column (`key:\n- a`).
fn children_end(entries: &[Entry<'_>], at: usize, end: usize) -> usize {
    let parent = &entries[at];
    let is_key = matches!(parent.item, Item::Key(_));
    (at + 1..end)
        .find(|&i| {
            let e = &entries[i];
            !(e.column > parent.column || (is_key && e.column == parent.column && e.item == Item::Dash))
        })
        .unwrap_or(end)
}

/// The (1-based line, 1-based column) of the key or sequence entry at `path`, or of the deepest
/// part of `path` that was found; `None` when not even the first part is in the text.
pub(super) fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let steps = steps(path)?;
    let entries = entries(text);
    let (mut start, mut end) = (0, entries.len());
    let mut found = None;
    for step in steps {
        let Some(first) = entries.get(start).filter(|_| start < end) else { break };
        let column = first.column;
        let mut level = (start..end).filter(|&i| entries[i].column == column);
        let hit = match step {
            Step::Key(key) => level.find(|&i| entries[i].item == Item::Key(key)),
            Step::Index(n) => level.filter(|&i| entries[i].item == Item::Dash).nth(n),
        };
        let Some(at) = hit else { break };
        found = Some((entries[at].line, entries[at].column + 1));
        end = children_end(&entries, at, end);
        start = at + 1;
    }
    found
}

/// The line of the first thing in `text` that is not blank or a comment.
pub(super) fn first_content_line(text: &str) -> Option<usize> {
    entries(text).first().map(|e| e.line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# comment
port: 80
control:
  port: 7100   # the control port
  tls:
    ca: /x.pem
participants:
  - name: a
    addr: 198.18.0.2
  -
    name: b
    addr: 198.18.0.3
compact:
- x: 1
- x: 2
flow: {a: 1}
\"quoted\": 1
";

    #[test]
    fn finds_keys_at_every_depth() {
        assert_eq!(locate(TEXT, "port"), Some((2, 1)));
        assert_eq!(locate(TEXT, "control"), Some((3, 1)));
        assert_eq!(locate(TEXT, "control.port"), Some((4, 3)));
        assert_eq!(locate(TEXT, "control.tls.ca"), Some((6, 5)));
        assert_eq!(locate(TEXT, "quoted"), Some((17, 1)));
    }

    #[test]
    fn finds_sequence_entries() {
        assert_eq!(locate(TEXT, "participants[0]"), Some((8, 3)));
        assert_eq!(locate(TEXT, "participants[0].name"), Some((8, 5)));
        assert_eq!(locate(TEXT, "participants[0].addr"), Some((9, 5)));
        assert_eq!(locate(TEXT, "participants[1]"), Some((10, 3)));
        assert_eq!(locate(TEXT, "participants[1].addr"), Some((12, 5)));
        assert_eq!(locate(TEXT, "compact[1].x"), Some((15, 3)));
    }

    #[test]
    fn falls_back_to_the_deepest_part_found() {
        // `port` under `tls` does not exist: the answer is `control.tls`, not the top `port`.
        assert_eq!(locate(TEXT, "control.tls.port"), Some((5, 3)));
        assert_eq!(locate(TEXT, "participants[5].addr"), Some((7, 1)));
        assert_eq!(locate(TEXT, "flow.a"), Some((16, 1)));
        assert_eq!(locate(TEXT, "nothing.here"), None);
        assert_eq!(locate("", "port"), None);
        assert_eq!(locate(TEXT, "bad[x]"), None);
    }

    #[test]
    fn first_content_line_skips_comments_and_blanks() {
        assert_eq!(first_content_line("# a\n\n  # b\n- x\n"), Some(4));
        assert_eq!(first_content_line("# only\n"), None);
    }
}
