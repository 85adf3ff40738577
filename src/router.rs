//! Route table: compiles the `routes:` list into a segment trie and matches requests against it.
//!
//! Written by hand rather than on `matchit` because matchit returns only the single most specific
//! pattern for a path; when that route's host or method filter rejects the request we must fall
//! through to the next most specific route (Kong/Envoy semantics), which needs a backtracking walk.
//! The walk costs O(path segments), independent of the number of routes.
//!
//! Priority, independent of file order: at each path segment a literal beats a `:param`, which
//! beats a prefix/wildcard tail; a route ending exactly at the path beats a prefix ending there;
//! among routes with the same pattern, one with a `host` beats one without, then file order.

use crate::auth::{AuthMode, ScopeMatch};
use crate::errors::GatewayError;
use http::Method;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// One entry of `routes:` as written in the YAML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Optional name used in logs and metrics; defaults to `routes[i]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Path pattern: literal segments, `:name` parameters, optional trailing `*` or `*name`.
    pub path: String,
    /// `prefix` (default) also matches everything below the pattern; `exact` only the pattern.
    #[serde(default, rename = "match")]
    pub match_kind: MatchKind,
    /// Allowed methods; empty means any. `GET` also admits `HEAD`.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Host filter: `api.example.com` or `*.example.com`; absent means any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Name of the service in `services:` that receives the traffic (or use `aggregate`).
    #[serde(default)]
    pub service: Option<String>,
    /// Fan out to several services and merge their JSON instead of proxying.
    #[serde(default)]
    pub aggregate: Option<crate::aggregate::AggregateConfig>,
    /// Remove the part of the path matched by the pattern before forwarding (default true).
    #[serde(default = "default_true")]
    pub strip_prefix: bool,
    /// Template for the upstream path, e.g. `/v2/users/{id}`; overrides `strip_prefix`.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// `none` (default), `optional` or `required` (needs the top-level `auth:` section).
    #[serde(default)]
    pub auth: AuthMode,
    /// Roles admitted (any of); needs `auth: required`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Scopes from the `scope` claim; matched per `scope_match`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `all` (default) or `any`.
    #[serde(default)]
    pub scope_match: ScopeMatch,
    /// Send the client's `Authorization` header upstream (default false: stripped).
    #[serde(default)]
    pub forward_authorization: bool,
    /// Rate-limit policies that must all admit; absent = `rate_limits.default`, `[]` = none.
    #[serde(default)]
    pub rate_limits: Option<Vec<String>>,
    /// CORS policy replacing the top-level `cors:` for this route.
    #[serde(default)]
    pub cors: Option<crate::edge::cors::CorsConfig>,
    /// Security headers merged over the top-level `security_headers:`.
    #[serde(default)]
    pub security_headers: Option<crate::edge::headers::SecurityHeadersConfig>,
    /// Request transformation (headers, query, JSON body).
    #[serde(default)]
    pub request: Option<crate::transform::RequestTransformConfig>,
    /// Response transformation (headers, JSON body).
    #[serde(default)]
    pub response: Option<crate::transform::ResponseTransformConfig>,
    /// Largest request body for this route (default `limits.max_body_bytes`).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Forward WebSocket upgrades (`Upgrade: websocket`) to the service. Off by default: other
    /// routes refuse the handshake with 400.
    #[serde(default)]
    pub websocket: bool,
}

fn default_true() -> bool {
    true
}

/// How much of the path a pattern must cover.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MatchKind {
    /// The pattern and any path below it (`/api/users` matches `/api/users/42`).
    #[default]
    Prefix,
    /// The pattern only.
    Exact,
}

/// Why a route could not be compiled; `Display` names the offending key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// Key path such as `routes[3].path`.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(Arc<str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tail {
    /// The pattern must cover the whole path.
    None,
    /// Any remaining segments, optionally named for rewrite templates.
    Rest(Option<Arc<str>>),
}

#[derive(Debug, Clone)]
enum TemplatePart {
    Literal(String),
    Param(usize),
    Rest,
}

#[derive(Debug, Clone)]
enum Rewrite {
    Keep,
    StripPrefix,
    Template(Vec<TemplatePart>),
}

#[derive(Debug, Clone)]
enum HostFilter {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

impl HostFilter {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostFilter::Exact(h) => h == host,
            HostFilter::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// A compiled route: everything the proxy needs to know about one `routes:` entry.
#[derive(Debug)]
pub struct Route<S> {
    /// Position in the `routes:` list.
    pub index: usize,
    /// Configured name or `routes[i]`.
    pub name: String,
    /// The pattern as written, for logs.
    pub pattern: String,
    /// Whatever the caller attached (the snapshot stores the resolved service here).
    pub target: S,
    segments: Vec<Segment>,
    tail: Tail,
    methods: Option<Vec<Method>>,
    host: Option<HostFilter>,
    rewrite: Rewrite,
}

/// The result of a successful match, kept in the request context.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// Index of the matched route in [`RouteTable::routes`].
    pub route: usize,
    /// Parameter names and their (still percent-encoded) values.
    pub params: Vec<(Arc<str>, String)>,
    /// The path to send upstream, without query.
    pub upstream_path: String,
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<String, usize>,
    param: Option<usize>,
    exact: Vec<usize>,
    prefix: Vec<usize>,
}

/// The compiled, immutable route table.
#[derive(Debug)]
pub struct RouteTable<S> {
    routes: Vec<Route<S>>,
    nodes: Vec<Node>,
}

/// A request as the router sees it: normalized path segments, lowercase host, method.
pub struct RequestView<'a> {
    pub segments: &'a [&'a str],
    /// Whether the normalized path ended with `/` (kept when forwarding).
    pub trailing_slash: bool,
    pub host: &'a str,
    pub method: &'a Method,
}

impl<S> RouteTable<S> {
    /// Compiles the configured routes. `resolve` turns a route's config into its target (the
    /// service and policies), or names the field and the reason it cannot.
    pub fn compile(
        configs: &[RouteConfig],
        mut resolve: impl FnMut(&RouteConfig) -> Result<S, (String, String)>,
    ) -> Result<Self, RouteError> {
        let mut table = RouteTable {
            routes: Vec::with_capacity(configs.len()),
            nodes: vec![Node::default()],
        };
        for (index, cfg) in configs.iter().enumerate() {
            let key = |field: &str| format!("routes[{index}].{field}");
            let target = resolve(cfg).map_err(|(field, reason)| RouteError {
                key: key(&field),
                reason,
            })?;
            let route = compile_route(index, cfg, target, &key)?;
            if let Some(other) = table.routes.iter().find(|r| shadows(r, &route)) {
                return Err(RouteError {
                    key: key("path"),
                    reason: format!(
                        "duplicates {} (same path pattern {:?}, host and methods): it could never match",
                        other.name, other.pattern
                    ),
                });
            }
            table.insert(route);
        }
        table.sort_candidates();
        Ok(table)
    }

    fn insert(&mut self, route: Route<S>) {
        let mut node = 0;
        for seg in &route.segments {
            node = match seg {
                Segment::Literal(lit) => match self.nodes[node].literals.get(lit) {
                    Some(&n) => n,
                    None => {
                        let n = self.push_node();
                        self.nodes[node].literals.insert(lit.clone(), n);
                        n
                    }
                },
                Segment::Param(_) => match self.nodes[node].param {
                    Some(n) => n,
                    None => {
                        let n = self.push_node();
                        self.nodes[node].param = Some(n);
                        n
                    }
                },
            };
        }
        let id = self.routes.len();
        match route.tail {
            Tail::None => self.nodes[node].exact.push(id),
            Tail::Rest(_) => self.nodes[node].prefix.push(id),
        }
        self.routes.push(route);
    }

    fn push_node(&mut self) -> usize {
        self.nodes.push(Node::default());
        self.nodes.len() - 1
    }

    /// Host-specific routes first, then file order; stable so ties keep file order.
    fn sort_candidates(&mut self) {
        let routes = &self.routes;
        for node in &mut self.nodes {
            for list in [&mut node.exact, &mut node.prefix] {
                list.sort_by_key(|&id| (routes[id].host.is_none(), id));
            }
        }
    }

    /// All compiled routes, in file order.
    pub fn routes(&self) -> &[Route<S>] {
        &self.routes
    }

    /// Finds the route for a request, or the error to answer with (404, or 405 with `Allow`).
    pub fn match_request(&self, req: &RequestView<'_>) -> Result<RouteMatch, GatewayError> {
        let mut allow: Vec<Method> = Vec::new();
        let mut found = None;
        self.walk(0, req.segments, &mut |id| {
            let route = &self.routes[id];
            if let Some(host) = &route.host
                && !host.matches(req.host)
            {
                return false;
            }
            match &route.methods {
                Some(methods) if !method_allowed(methods, req.method) => {
                    for m in methods {
                        if !allow.contains(m) {
                            allow.push(m.clone());
                        }
                    }
                    false
                }
                _ => {
                    found = Some(id);
                    true
                }
            }
        });
        match found {
            Some(id) => Ok(self.build_match(id, req)),
            None if allow.is_empty() => Err(GatewayError::RouteNotFound),
            None => {
                if allow.contains(&Method::GET) && !allow.contains(&Method::HEAD) {
                    allow.push(Method::HEAD);
                }
                Err(GatewayError::MethodNotAllowed {
                    allow: allow.iter().map(|m| m.as_str().to_string()).collect(),
                })
            }
        }
    }

    /// Depth-first walk in priority order; `visit` returns true to stop.
    fn walk(&self, node: usize, segs: &[&str], visit: &mut impl FnMut(usize) -> bool) -> bool {
        let n = &self.nodes[node];
        if let Some((first, rest)) = segs.split_first() {
            if let Some(&child) = n.literals.get(*first)
                && self.walk(child, rest, visit)
            {
                return true;
            }
            if let Some(child) = n.param
                && self.walk(child, rest, visit)
            {
                return true;
            }
        } else if n.exact.iter().any(|&id| visit(id)) {
            return true;
        }
        n.prefix.iter().any(|&id| visit(id))
    }

    fn build_match(&self, id: usize, req: &RequestView<'_>) -> RouteMatch {
        let route = &self.routes[id];
        let params: Vec<(Arc<str>, String)> = route
            .segments
            .iter()
            .zip(req.segments)
            .filter_map(|(seg, value)| match seg {
                Segment::Param(name) => Some((name.clone(), (*value).to_string())),
                Segment::Literal(_) => None,
            })
            .collect();
        let rest = &req.segments[route.segments.len().min(req.segments.len())..];
        let upstream_path = match &route.rewrite {
            Rewrite::Keep => join_path(req.segments, req.trailing_slash),
            Rewrite::StripPrefix => join_path(rest, req.trailing_slash && !rest.is_empty()),
            Rewrite::Template(parts) => render_template(parts, &params, rest),
        };
        RouteMatch {
            route: id,
            params,
            upstream_path,
        }
    }
}

fn method_allowed(methods: &[Method], method: &Method) -> bool {
    methods.contains(method) || (method == Method::HEAD && methods.contains(&Method::GET))
}

fn join_path(segments: &[&str], trailing_slash: bool) -> String {
    let mut out = String::with_capacity(segments.iter().map(|s| s.len() + 1).sum::<usize>() + 1);
    for s in segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

fn render_template(parts: &[TemplatePart], params: &[(Arc<str>, String)], rest: &[&str]) -> String {
    let mut out = String::new();
    for part in parts {
        match part {
            TemplatePart::Literal(s) => out.push_str(s),
            TemplatePart::Param(i) => out.push_str(&params[*i].1),
            TemplatePart::Rest => out.push_str(&rest.join("/")),
        }
    }
    // A template ending in an empty `{rest}` can leave `//`; collapse so upstreams see one form.
    while out.contains("//") {
        out = out.replace("//", "/");
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// True if `b` can never match because `a` (earlier in the file) always wins first.
fn shadows<S>(a: &Route<S>, b: &Route<S>) -> bool {
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
    same_shape && same_host && methods_covered
}

fn compile_route<S>(
    index: usize,
    cfg: &RouteConfig,
    target: S,
    key: &dyn Fn(&str) -> String,
) -> Result<Route<S>, RouteError> {
    let err = |field: &str, reason: String| RouteError {
        key: key(field),
        reason,
    };
    let (segments, mut tail) = parse_pattern(&cfg.path).map_err(|r| err("path", r))?;
    match (cfg.match_kind, &tail) {
        (MatchKind::Exact, Tail::Rest(_)) => {
            return Err(err(
                "match",
                "`exact` cannot be combined with a trailing `*` wildcard".into(),
            ));
        }
        (MatchKind::Prefix, Tail::None) => tail = Tail::Rest(None),
        _ => {}
    }
    let methods = parse_methods(&cfg.methods).map_err(|r| err("methods", r))?;
    let host = cfg
        .host
        .as_deref()
        .map(parse_host)
        .transpose()
        .map_err(|r| err("host", r))?;
    let rewrite = match &cfg.rewrite {
        Some(t) => {
            Rewrite::Template(parse_template(t, &segments, &tail).map_err(|r| err("rewrite", r))?)
        }
        None if cfg.strip_prefix => Rewrite::StripPrefix,
        None => Rewrite::Keep,
    };
    Ok(Route {
        index,
        name: cfg
            .name
            .clone()
            .unwrap_or_else(|| format!("routes[{index}]")),
        pattern: cfg.path.clone(),
        target,
        segments,
        tail,
        methods,
        host,
        rewrite,
    })
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

fn parse_pattern(path: &str) -> Result<(Vec<Segment>, Tail), String> {
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

fn parse_template(
    template: &str,
    segments: &[Segment],
    tail: &Tail,
) -> Result<Vec<TemplatePart>, String> {
    if !template.starts_with('/') {
        return Err(format!("template {template:?} must start with `/`"));
    }
    let params: Vec<&str> = segments
        .iter()
        .filter_map(|s| match s {
            Segment::Param(n) => Some(&**n),
            Segment::Literal(_) => None,
        })
        .collect();
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(TemplatePart::Literal(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("template {template:?}: unclosed `{{`"))?;
        let name = &rest[open + 1..open + close];
        if let Some(i) = params.iter().position(|p| *p == name) {
            parts.push(TemplatePart::Param(i));
        } else if matches!(tail, Tail::Rest(Some(n)) if &**n == name) {
            parts.push(TemplatePart::Rest);
        } else {
            return Err(format!(
                "template {template:?} uses {{{name}}}, which the path pattern does not define (defined: {params:?})"
            ));
        }
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("template {template:?}: unmatched `}}`"));
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Literal(rest.to_string()));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str, service: &str) -> RouteConfig {
        RouteConfig {
            name: None,
            path: path.into(),
            match_kind: MatchKind::Prefix,
            methods: vec![],
            host: None,
            service: Some(service.into()),
            aggregate: None,
            strip_prefix: true,
            rewrite: None,
            auth: AuthMode::None,
            roles: vec![],
            scopes: vec![],
            scope_match: ScopeMatch::All,
            forward_authorization: false,
            rate_limits: None,
            cors: None,
            security_headers: None,
            request: None,
            response: None,
            max_body_bytes: None,
            websocket: false,
        }
    }

    fn table(routes: &[RouteConfig]) -> RouteTable<String> {
        RouteTable::compile(routes, |r| Ok(r.service.clone().unwrap_or_default())).unwrap()
    }

    fn find(
        t: &RouteTable<String>,
        method: &str,
        host: &str,
        path: &str,
    ) -> Result<(String, String), GatewayError> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let m = t.match_request(&RequestView {
            segments: &segs,
            trailing_slash: path.len() > 1 && path.ends_with('/'),
            host,
            method: &method,
        })?;
        Ok((t.routes()[m.route].target.clone(), m.upstream_path))
    }

    #[test]
    fn prefix_matches_itself_and_below_but_not_siblings() {
        let t = table(&[route("/api/users", "users")]);
        assert_eq!(
            find(&t, "GET", "h", "/api/users").unwrap(),
            ("users".into(), "/".into())
        );
        assert_eq!(
            find(&t, "GET", "h", "/api/users/42").unwrap(),
            ("users".into(), "/42".into())
        );
        assert_eq!(
            find(&t, "GET", "h", "/api/usersX"),
            Err(GatewayError::RouteNotFound)
        );
        assert_eq!(
            find(&t, "GET", "h", "/api"),
            Err(GatewayError::RouteNotFound)
        );
    }

    #[test]
    fn exact_beats_literal_beats_param_beats_prefix_regardless_of_order() {
        let mut exact = route("/api/users/me", "exact");
        exact.match_kind = MatchKind::Exact;
        let routes = [
            route("/api", "prefix"),
            route("/api/users/:id", "param"),
            route("/api/users/me", "literal-prefix"),
            exact,
        ];
        let t = table(&routes);
        assert_eq!(find(&t, "GET", "h", "/api/users/me").unwrap().0, "exact");
        assert_eq!(
            find(&t, "GET", "h", "/api/users/me/x").unwrap().0,
            "literal-prefix"
        );
        assert_eq!(find(&t, "GET", "h", "/api/users/7").unwrap().0, "param");
        assert_eq!(find(&t, "GET", "h", "/api/other").unwrap().0, "prefix");
    }

    #[test]
    fn more_literal_segments_win_over_earlier_parameter() {
        let mut a = route("/:tenant/orders", "param-first");
        a.match_kind = MatchKind::Exact;
        let mut b = route("/shop/:section", "literal-first");
        b.match_kind = MatchKind::Exact;
        let t = table(&[a, b]);
        assert_eq!(
            find(&t, "GET", "h", "/shop/orders").unwrap().0,
            "literal-first"
        );
        assert_eq!(
            find(&t, "GET", "h", "/acme/orders").unwrap().0,
            "param-first"
        );
    }

    #[test]
    fn method_filter_falls_through_then_405() {
        let mut get = route("/api/users/:id", "reader");
        get.methods = vec!["GET".into()];
        let mut post = route("/api/items", "writer");
        post.methods = vec!["post".into()];
        let t = table(&[get, route("/api", "fallback"), post]);
        assert_eq!(find(&t, "HEAD", "h", "/api/users/1").unwrap().0, "reader");
        assert_eq!(
            find(&t, "DELETE", "h", "/api/users/1").unwrap().0,
            "fallback"
        );
        let t = table(&[{
            let mut r = route("/only", "x");
            r.methods = vec!["GET".into(), "PUT".into()];
            r
        }]);
        match find(&t, "POST", "h", "/only") {
            Err(GatewayError::MethodNotAllowed { allow }) => {
                assert_eq!(allow, ["GET", "PUT", "HEAD"])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn host_specific_route_wins_and_falls_back() {
        let mut special = route("/api", "special");
        special.host = Some("API.Example.com".into());
        let mut wild = route("/api", "wild");
        wild.host = Some("*.example.com".into());
        let t = table(&[route("/api", "any"), special, wild]);
        assert_eq!(
            find(&t, "GET", "api.example.com", "/api").unwrap().0,
            "special"
        );
        assert_eq!(find(&t, "GET", "x.example.com", "/api").unwrap().0, "wild");
        assert_eq!(find(&t, "GET", "example.com", "/api").unwrap().0, "any");
    }

    #[test]
    fn rewrites_keep_query_free_paths() {
        let mut tpl = route("/api/users/:id", "u");
        tpl.rewrite = Some("/v2/users/{id}/profile".into());
        let mut keep = route("/keep", "k");
        keep.strip_prefix = false;
        let mut rest = route("/files/*path", "f");
        rest.rewrite = Some("/store/{path}".into());
        let t = table(&[tpl, keep, rest]);
        assert_eq!(
            find(&t, "GET", "h", "/api/users/42").unwrap().1,
            "/v2/users/42/profile"
        );
        assert_eq!(find(&t, "GET", "h", "/keep/a/").unwrap().1, "/keep/a/");
        assert_eq!(
            find(&t, "GET", "h", "/files/a/b.txt").unwrap().1,
            "/store/a/b.txt"
        );
        assert_eq!(find(&t, "GET", "h", "/files").unwrap().1, "/store/");
    }

    #[test]
    fn rejects_bad_patterns_and_duplicates_with_key_path() {
        let cases: Vec<(Vec<RouteConfig>, &str)> = vec![
            (vec![route("api", "s")], "routes[0].path"),
            (vec![route("/a/*/b", "s")], "routes[0].path"),
            (vec![route("/a/:", "s")], "routes[0].path"),
            (vec![route("/a/:x/:x", "s")], "routes[0].path"),
            (vec![route("/a b", "s")], "routes[0].path"),
            (vec![route("/a", "s"), route("/a/*", "s")], "routes[1].path"),
            (
                vec![route("/u/:id", "s"), route("/u/:name", "t")],
                "routes[1].path",
            ),
            (
                vec![{
                    let mut r = route("/a/:id", "s");
                    r.rewrite = Some("/{nope}".into());
                    r
                }],
                "routes[0].rewrite",
            ),
            (
                vec![{
                    let mut r = route("/a", "s");
                    r.methods = vec!["FETCH".into()];
                    r
                }],
                "routes[0].methods",
            ),
            (
                vec![{
                    let mut r = route("/a", "s");
                    r.host = Some("a.com:80".into());
                    r
                }],
                "routes[0].host",
            ),
            (
                vec![{
                    let mut r = route("/a/*", "s");
                    r.match_kind = MatchKind::Exact;
                    r
                }],
                "routes[0].match",
            ),
        ];
        for (routes, key) in cases {
            let err = RouteTable::compile(&routes, |r| Ok(r.service.clone().unwrap_or_default()))
                .unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
        let err = RouteTable::<()>::compile(&[route("/a", "ghost")], |r| {
            Err((
                "service".to_string(),
                format!("unknown service {:?}", r.service.as_deref().unwrap_or("")),
            ))
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "routes[0].service: unknown service \"ghost\""
        );
    }

    #[test]
    fn same_pattern_with_disjoint_methods_is_not_a_duplicate() {
        let mut a = route("/a", "s");
        a.methods = vec!["GET".into()];
        let mut b = route("/a", "t");
        b.methods = vec!["POST".into()];
        let t = table(&[a, b]);
        assert_eq!(find(&t, "POST", "h", "/a").unwrap().0, "t");
    }

    #[test]
    fn thousand_routes_still_match_the_right_one() {
        let routes: Vec<RouteConfig> = (0..1000)
            .map(|i| route(&format!("/svc{i}/items"), &format!("s{i}")))
            .collect();
        let t = table(&routes);
        assert_eq!(
            find(&t, "GET", "h", "/svc999/items/5").unwrap(),
            ("s999".into(), "/5".into())
        );
        assert_eq!(
            find(&t, "GET", "h", "/svc1000/items"),
            Err(GatewayError::RouteNotFound)
        );
    }
}
