//! Why each route did or did not take a request: the router's half of `explain`.

use super::{RequestView, RouteMatch, RouteTable, method_allowed};

/// What the router made of one route for one request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// This route takes the request.
    Matched,
    /// The path pattern does not fit the request's path.
    PathDiffers,
    /// The route is for another host.
    HostDiffers,
    /// The route's `when:` conditions do not hold.
    ConditionsFailed,
    /// Path and host fit, the method does not.
    MethodNotAllowed { allowed: Vec<String> },
    /// It would fit, but a route earlier in priority order (host-specific, then with
    /// conditions, then more specific paths, then file order) took the request.
    Shadowed { by: String },
}

impl<S> RouteTable<S> {
    /// Every route's verdict (by route index) and the match, as [`RouteTable::match_request`]
    /// would decide it.
    pub fn explain(
        &self,
        req: &RequestView<'_>,
        conditions_hold: impl Fn(&S) -> bool,
    ) -> (Vec<Verdict>, Option<RouteMatch>) {
        let mut verdicts = vec![Verdict::PathDiffers; self.routes.len()];
        let mut found: Option<usize> = None;
        self.walk(0, req.segments, &mut |id| {
            let route = &self.routes[id];
            let m = &route.matcher;
            verdicts[id] = if m.host.as_ref().is_some_and(|h| !h.matches(req.host)) {
                Verdict::HostDiffers
            } else if m.conditional && !conditions_hold(&route.target) {
                Verdict::ConditionsFailed
            } else if let Some(methods) = m
                .methods
                .as_ref()
                .filter(|ms| !method_allowed(ms, req.method))
            {
                Verdict::MethodNotAllowed {
                    allowed: methods.iter().map(|x| x.to_string()).collect(),
                }
            } else if let Some(first) = found {
                Verdict::Shadowed {
                    by: self.routes[first].name.to_string(),
                }
            } else {
                found = Some(id);
                Verdict::Matched
            };
            // Visit every route whose path fits, to say something of each.
            false
        });
        (verdicts, found.map(|id| self.build_match(id, req)))
    }
}
