//! Finds the line of a key path (`routes[3].rewrite`) in a config file, so a compile error can
//! point at it. serde_yaml keeps no positions once a file is parsed, so this walks the text by
//! indentation: block mappings and sequences are followed to the key; inside a flow mapping
//! (`- {path: /a, service: a}`) the answer is the line where that mapping starts.

/// One step of a key path.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(key: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            out.push(Step::Key(name));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                out.push(Step::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    out
}

/// A meaningful line: its number, the column its content starts at (after any `- `), whether
/// it opens a sequence item, and the content.
struct Line<'a> {
    number: usize,
    indent: usize,
    item: bool,
    content: &'a str,
}

fn lines(text: &str) -> Vec<Line<'_>> {
    text.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let trimmed = raw.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
                return None;
            }
            let indent = raw.len() - trimmed.len();
            let (item, content, indent) = match trimmed.strip_prefix("- ") {
                Some(rest) => (true, rest.trim_start(), raw.len() - rest.trim_start().len()),
                None => (false, trimmed, indent),
            };
            Some(Line {
                number: i + 1,
                indent,
                item,
                content,
            })
        })
        .collect()
}

/// The 1-based line of `key` in `text`, or of the deepest part of it that could be found.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let lines = lines(text);
    // The current node: lines[start..end] are its children, deeper than `parent`.
    let (mut start, mut end, mut parent) = (0, lines.len(), None::<usize>);
    let mut found = None;
    for step in steps(key) {
        let deeper = |l: &Line<'_>| parent.is_none_or(|p| l.indent > p);
        let hit = match step {
            Step::Key(k) => (start..end).find(|&i| {
                let l = &lines[i];
                deeper(l)
                    && l.content
                        .strip_prefix(k)
                        .is_some_and(|r| r.starts_with(':'))
                    && (start..i).all(|j| lines[j].indent >= l.indent)
            }),
            Step::Index(n) => {
                let items: Vec<usize> = (start..end)
                    .filter(|&i| lines[i].item && deeper(&lines[i]))
                    .collect();
                let first_indent = items.first().map(|&i| lines[i].indent);
                items
                    .into_iter()
                    .filter(|&i| Some(lines[i].indent) == first_indent)
                    .nth(n)
            }
        };
        let Some(i) = hit else { break };
        found = Some(lines[i].number);
        let own = lines[i].indent;
        // An item's first key shares its line: the item's children start on that line.
        let (from, floor) = match step {
            Step::Index(_) => (i, own.saturating_sub(1)),
            Step::Key(_) => (i + 1, own),
        };
        let to = (i + 1..end)
            .find(|&j| lines[j].indent < own || (lines[j].indent == own && lines[j].item))
            .unwrap_or(end);
        let to = match step {
            Step::Key(_) => (i + 1..to).find(|&j| lines[j].indent <= own).unwrap_or(to),
            Step::Index(_) => to,
        };
        (start, end, parent) = (from, to, Some(floor));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
# demo
listen: ['127.0.0.1:0']
services:
  users:
    backends:
      - 127.0.0.1:1
      - 127.0.0.1:2
  orders: {backends: ['127.0.0.1:3']}
routes:
  - path: /a
    service: users
  - {path: /b, service: orders}
  - path: /c
    service: ghost
    rewrite: /x
";

    #[test]
    fn finds_block_keys_items_and_flow_mappings() {
        assert_eq!(line_of(YAML, "listen"), Some(2));
        assert_eq!(line_of(YAML, "services.users.backends[1]"), Some(7));
        assert_eq!(line_of(YAML, "services.orders.backends"), Some(8));
        assert_eq!(line_of(YAML, "routes[0].service"), Some(11));
        assert_eq!(line_of(YAML, "routes[1].service"), Some(12));
        assert_eq!(line_of(YAML, "routes[2].service"), Some(14));
        assert_eq!(line_of(YAML, "routes[2].rewrite"), Some(15));
        assert_eq!(line_of(YAML, "routes[2].path"), Some(13));
        assert_eq!(line_of(YAML, "nope"), None);
    }

    #[test]
    fn splits_key_paths() {
        assert_eq!(
            steps("auth.keys[0].secret"),
            vec![
                Step::Key("auth"),
                Step::Key("keys"),
                Step::Index(0),
                Step::Key("secret")
            ]
        );
    }
}
