//! Route table: compiles the `routes:` list into a segment trie and matches requests against it.
//!
//! Written by hand rather than on `matchit` because matchit returns only the single most specific
//! pattern for a path; when that route's host or method filter rejects the request we must fall
//! through to the next most specific route (Kong/Envoy semantics), which needs a backtracking walk.
//! The walk costs O(path segments), independent of the number of routes.
//!
//! Priority, independent of file order: at each path segment a literal beats a `:param`, which
//! beats a prefix/wildcard tail; a route ending exactly at the path beats a prefix ending there;
//! among routes with the same pattern, one with a `host` beats one without, then one with
//! request conditions (`match:`) beats one without, then file order. A route whose host,
//! methods or conditions reject the request is passed over for the next candidate.

mod explain;
mod pattern;
mod rewrite;
#[cfg(test)]
mod tests;

use crate::errors::GatewayError;
use crate::identity::Identity;
use crate::invalid::Invalid;
use crate::template::{Missing, TemplateScope, TemplateVars};
pub use explain::Verdict;
use http::Method;
pub use pattern::param_names;
use pattern::{Matcher, Segment, Tail, shadows};
pub use rewrite::PathRewrite;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

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

/// A compiled route: everything the proxy needs to know about one `routes:` entry.
#[derive(Debug)]
pub struct Route<S> {
    /// Position in the `routes:` list.
    pub index: usize,
    /// Configured name or `routes[i]` (shared: spans and logs take it by reference count).
    pub name: std::sync::Arc<str>,
    /// The pattern as written, for logs and spans.
    pub pattern: std::sync::Arc<str>,
    /// Whatever the caller attached (the snapshot stores the resolved service here).
    pub target: S,
    matcher: Matcher,
    rewrite: PathRewrite,
}

/// The matching part of one `routes:` entry, as the router needs it.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec<'a> {
    pub name: Option<&'a str>,
    /// Path pattern: literal segments, `:name` parameters, optional trailing `*` or `*name`.
    pub path: &'a str,
    pub match_kind: MatchKind,
    /// Allowed methods; empty means any.
    pub methods: &'a [String],
    pub host: Option<&'a str>,
    pub strip_prefix: bool,
    pub rewrite: Option<&'a str>,
    /// Whether the route can have a verified identity, so its rewrite may use claims.
    pub claims: bool,
    /// The route has request conditions (`match:`); the predicate given to
    /// [`RouteTable::match_request`] decides whether they hold.
    pub conditional: bool,
}

/// The result of a successful match, kept in the request context.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// Index of the matched route in [`RouteTable::routes`].
    pub route: usize,
    /// Parameter names and their (still percent-encoded) values.
    pub params: Vec<(Arc<str>, String)>,
    /// The path to send upstream, without query; for a template rewrite it is filled by
    /// [`RouteTable::render_rewrite`] once the caller is known.
    pub upstream_path: String,
}

#[derive(Debug, Default)]
struct Node {
    /// Looked up for every path segment of every request (SipHash cost 190 instructions a
    /// gRPC call); the keys come from the config.
    literals: HashMap<String, usize, foldhash::fast::RandomState>,
    param: Option<usize>,
    exact: Vec<usize>,
    prefix: Vec<usize>,
}

/// The compiled, immutable route table.
#[derive(Debug)]
pub struct RouteTable<S> {
    routes: Vec<Route<S>>,
    nodes: Vec<Node>,
    /// Whether any route names a host.
    by_host: bool,
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
    /// Compiles the configured routes. `resolve` turns route `i` into its target (the service
    /// and policies) or says which of its keys is wrong; errors come back as `routes[i].key`.
    pub fn compile(
        specs: &[RouteSpec<'_>],
        mut resolve: impl FnMut(usize) -> Result<S, Invalid>,
    ) -> Result<Self, Invalid> {
        let mut table = RouteTable {
            routes: Vec::with_capacity(specs.len()),
            nodes: vec![Node::default()],
            by_host: false,
        };
        // Every route is compiled even after one fails, so all their errors are reported.
        let mut errors = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            let within = |e: Invalid| e.within(&format!("routes[{index}]"));
            let route = resolve(index).and_then(|target| compile_route(index, spec, target));
            let route = match route {
                Ok(r) => r,
                Err(e) => {
                    errors.push(within(e));
                    continue;
                }
            };
            if let Some(other) = table
                .routes
                .iter()
                .find(|r| shadows(&r.matcher, &route.matcher))
            {
                errors.push(within(Invalid::new(
                    "path",
                    format!(
                        "duplicates {} (same path pattern {:?}, host and methods): it could never match",
                        other.name, other.pattern
                    ),
                )));
                continue;
            }
            table.insert(route);
        }
        if let Some(e) = Invalid::all(errors) {
            return Err(e);
        }
        table.sort_candidates();
        table.by_host = table.routes.iter().any(|r| r.matcher.host.is_some());
        Ok(table)
    }

    /// Whether any route names a host. When none does, the request's host need not be read
    /// (parsing the authority and lowering its case cost 650 instructions a request).
    pub fn routes_by_host(&self) -> bool {
        self.by_host
    }

    fn insert(&mut self, route: Route<S>) {
        let mut node = 0;
        for seg in &route.matcher.segments {
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
        match route.matcher.tail {
            Tail::None => self.nodes[node].exact.push(id),
            Tail::Rest(_) => self.nodes[node].prefix.push(id),
        }
        self.routes.push(route);
    }

    fn push_node(&mut self) -> usize {
        self.nodes.push(Node::default());
        self.nodes.len() - 1
    }

    /// Host-specific routes first, then routes with conditions, then file order.
    fn sort_candidates(&mut self) {
        let routes = &self.routes;
        for node in &mut self.nodes {
            for list in [&mut node.exact, &mut node.prefix] {
                list.sort_by_key(|&id| {
                    let m = &routes[id].matcher;
                    (m.host.is_none(), !m.conditional, id)
                });
            }
        }
    }

    /// All compiled routes, in file order.
    pub fn routes(&self) -> &[Route<S>] {
        &self.routes
    }

    /// Finds the route for a request, or the error to answer with (404, or 405 with `Allow`).
    /// `conditions_hold` is asked about routes with conditions once path, host and method fit.
    pub fn match_request(
        &self,
        req: &RequestView<'_>,
        conditions_hold: impl Fn(&S) -> bool,
    ) -> Result<RouteMatch, GatewayError> {
        let mut allow: Vec<Method> = Vec::new();
        let mut found = None;
        self.walk(0, req.segments, &mut |id| {
            let route = &self.routes[id];
            if let Some(host) = &route.matcher.host
                && !host.matches(req.host)
            {
                return false;
            }
            // Before methods: a route whose conditions reject the request is not in `Allow`.
            if route.matcher.conditional && !conditions_hold(&route.target) {
                return false;
            }
            match &route.matcher.methods {
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
        let matcher = &route.matcher;
        let mut params: Vec<(Arc<str>, String)> = matcher
            .segments
            .iter()
            .zip(req.segments)
            .filter_map(|(seg, value)| match seg {
                Segment::Param(name) => Some((name.clone(), (*value).to_string())),
                Segment::Literal(_) => None,
            })
            .collect();
        let rest = &req.segments[matcher.segments.len().min(req.segments.len())..];
        if let Some(name) = matcher.rest_name() {
            params.push((name.clone(), rest.join("/")));
        }
        let upstream_path = match &route.rewrite {
            PathRewrite::Keep => join_path(req.segments, req.trailing_slash),
            PathRewrite::StripPrefix => join_path(rest, req.trailing_slash && !rest.is_empty()),
            PathRewrite::Template(_) => String::new(),
        };
        RouteMatch {
            route: id,
            params,
            upstream_path,
        }
    }

    /// Renders a template rewrite into `m.upstream_path` (other rewrites were done when
    /// matching). A claim the caller's token lacks is `Missing`.
    pub fn render_rewrite(
        &self,
        m: &mut RouteMatch,
        identity: Option<&Identity>,
        request_id: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<(), Missing> {
        if let PathRewrite::Template(t) = &self.routes[m.route].rewrite {
            let vars = TemplateVars {
                params: &m.params,
                identity,
                request_id,
                client_ip,
            };
            m.upstream_path = PathRewrite::render(t, &vars)?;
        }
        Ok(())
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

fn compile_route<S>(index: usize, spec: &RouteSpec<'_>, target: S) -> Result<Route<S>, Invalid> {
    let mut matcher = Matcher::compile(spec.path, spec.match_kind, spec.methods, spec.host)
        .map_err(|(key, reason)| Invalid::new(key, reason))?;
    matcher.conditional = spec.conditional;
    let params = param_names(spec.path);
    let scope = TemplateScope {
        params: &params,
        claims: spec.claims,
    };
    let rewrite = PathRewrite::compile(spec.rewrite, spec.strip_prefix, &scope)
        .map_err(|reason| Invalid::new("rewrite", reason))?;
    Ok(Route {
        index,
        name: spec
            .name
            .map_or_else(|| format!("routes[{index}]"), str::to_string)
            .into(),
        pattern: spec.path.into(),
        target,
        matcher,
        rewrite,
    })
}
