//! Path patterns, method and host filters: parsed once when the table is compiled.

use super::MatchKind;
use http::Method;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    Literal(String),
    Param(Arc<str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tail {
    /// The pattern must cover the whole path.
    None,
    /// Any remaining segments, optionally named for templates.
    Rest(Option<Arc<str>>),
}

#[derive(Debug, Clone)]
pub(super) enum HostFilter {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

impl HostFilter {
    pub(super) fn matches(&self, host: &str) -> bool {
        match self {
            HostFilter::Exact(h) => h == host,
            HostFilter::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// What a route matches: its path pattern, methods and host.
#[derive(Debug)]
pub(super) struct Matcher {
    pub(super) segments: Vec<Segment>,
    pub(super) tail: Tail,
    pub(super) methods: Option<Vec<Method>>,
    pub(super) host: Option<HostFilter>,
    /// The route has request conditions (`match:`), checked by the caller's predicate.
    pub(super) conditional: bool,
}

impl Matcher {
    /// Parses a route's pattern and filters; errors name the field (`path`, `match`,
    /// `methods`, `host`).
    pub(super) fn compile(
        path: &str,
        kind: MatchKind,
        methods: &[String],
        host: Option<&str>,
    ) -> Result<Self, (&'static str, String)> {
        let (segments, mut tail) = parse_pattern(path).map_err(|r| ("path", r))?;
        match (kind, &tail) {
            (MatchKind::Exact, Tail::Rest(_)) => {
                return Err((
                    "match",
                    "`exact` cannot be combined with a trailing `*` wildcard".into(),
                ));
            }
            (MatchKind::Prefix, Tail::None) => tail = Tail::Rest(None),
            _ => {}
        }
        Ok(Matcher {
            segments,
            tail,
            methods: parse_methods(methods).map_err(|r| ("methods", r))?,
            host: host.map(parse_host).transpose().map_err(|r| ("host", r))?,
            conditional: false,
        })
    }

    /// The name of a `*name` tail, if the pattern has one.
    pub(super) fn rest_name(&self) -> Option<&Arc<str>> {
        match &self.tail {
            Tail::Rest(name) => name.as_ref(),
            Tail::None => None,
        }
    }
}

/// True if `b` can never match because `a` (earlier in the file) always wins first.
pub(super) fn shadows(a: &Matcher, b: &Matcher) -> bool {
    let same_shape = a.segments.len() == b.segments.len()
        && a.segments
            .iter()
            .zip(&b.segments)
            .all(|(x, y)| match (x, y) {
                (Segment::Literal(l), Segment::Literal(r)) => l == r,
                (Segment::Param(_), Segment::Param(_)) => true,
                _ => false,
            })
        && matches!(
            (&a.tail, &b.tail),
            (Tail::None, Tail::None) | (Tail::Rest(_), Tail::Rest(_))
        );
    let same_host = match (&a.host, &b.host) {
        (None, None) => true,
        (Some(HostFilter::Exact(x)), Some(HostFilter::Exact(y)))
        | (Some(HostFilter::Suffix(x)), Some(HostFilter::Suffix(y))) => x == y,
        _ => false,
    };
    let methods_covered = match (&a.methods, &b.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(am), Some(bm)) => bm.iter().all(|m| am.contains(m)),
    };
    // A route with conditions is tried before the same pattern without, and two with
    // conditions may ask for different things: neither hides the other.
    let unconditional = !a.conditional && !b.conditional;
    same_shape && same_host && methods_covered && unconditional
}

/// Names of a pattern's parameters and named wildcard, in order (empty if it does not parse;
/// the route table reports that error).
pub fn param_names(pattern: &str) -> Vec<String> {
    let Ok((segments, tail)) = parse_pattern(pattern) else {
        return Vec::new();
    };
    let mut names: Vec<String> = segments
        .iter()
        .filter_map(|s| match s {
            Segment::Param(n) => Some(n.to_string()),
            Segment::Literal(_) => None,
        })
        .collect();
    if let Tail::Rest(Some(n)) = tail {
        names.push(n.to_string());
    }
    names
}

pub(super) fn parse_pattern(path: &str) -> Result<(Vec<Segment>, Tail), String> {
    if !path.starts_with('/') {
        return Err(format!("pattern {path:?} must start with `/`"));
    }
    let raw: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut segments = Vec::with_capacity(raw.len());
    let mut names: Vec<&str> = Vec::new();
    let mut tail = Tail::None;
    for (i, seg) in raw.iter().enumerate() {
        if let Some(rest) = seg.strip_prefix('*') {
            if i + 1 != raw.len() {
                return Err(format!(
                    "pattern {path:?}: `*` wildcard is only allowed as the last segment"
                ));
            }
            if !rest.is_empty() {
                check_name(path, rest, &mut names)?;
            }
            tail = Tail::Rest((!rest.is_empty()).then(|| Arc::from(rest)));
        } else if let Some(name) = seg.strip_prefix(':') {
            check_name(path, name, &mut names)?;
            segments.push(Segment::Param(Arc::from(name)));
        } else if seg == &"." || seg == &".." {
            return Err(format!("pattern {path:?} contains a dot segment"));
        } else if let Some(bad) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-._~!$&'()+,;=@%".contains(*c)))
        {
            return Err(format!("pattern {path:?} contains the character {bad:?}"));
        } else {
            segments.push(Segment::Literal((*seg).to_string()));
        }
    }
    Ok((segments, tail))
}

fn check_name<'a>(path: &str, name: &'a str, seen: &mut Vec<&'a str>) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "pattern {path:?}: parameter name {name:?} must be non-empty letters, digits or `_`"
        ));
    }
    if seen.contains(&name) {
        return Err(format!(
            "pattern {path:?}: parameter {name:?} appears twice"
        ));
    }
    seen.push(name);
    Ok(())
}

fn parse_methods(methods: &[String]) -> Result<Option<Vec<Method>>, String> {
    if methods.is_empty() {
        return Ok(None);
    }
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
    ];
    let mut out = Vec::with_capacity(methods.len());
    for m in methods {
        let upper = m.to_ascii_uppercase();
        if !KNOWN.contains(&upper.as_str()) {
            return Err(format!("unknown method {m:?} (expected one of {KNOWN:?})"));
        }
        let method = Method::from_bytes(upper.as_bytes()).map_err(|e| e.to_string())?;
        if !out.contains(&method) {
            out.push(method);
        }
    }
    Ok(Some(out))
}

fn parse_host(host: &str) -> Result<HostFilter, String> {
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    let (suffix, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid {
        return Err(format!(
            "invalid host {host:?}: expected a name like api.example.com or *.example.com, without port"
        ));
    }
    Ok(if suffix {
        HostFilter::Suffix(format!(".{name}"))
    } else {
        HostFilter::Exact(name.to_string())
    })
}
