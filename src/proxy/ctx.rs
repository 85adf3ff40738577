//! The per-request context: one field per stage, each owned by the capability that acts on it.

use crate::edge::{BodyLimit, Inbound};
use crate::errors::GatewayError;
use crate::identity::Identity;
use crate::rate_limit::Admission;
use crate::router::RouteMatch;
use crate::snapshot::{RouteTarget, Snapshot};
use crate::template::TemplateVars;
use crate::traffic::Destination;
use crate::transform::Exchange;
use crate::upstream::{Attempts, ServicePool};
use std::sync::Arc;

/// Everything one request carries between phases.
#[derive(Default)]
pub struct RequestCtx {
    /// The config this request runs against, loaded once in `request_filter`.
    pub(super) snapshot: Option<Arc<Snapshot>>,
    /// Who is asking (edge stage).
    pub inbound: Inbound,
    /// The matched route and the path to forward (router stage).
    pub route: Option<RouteMatch>,
    /// The service chosen for the request, by the route or its split (traffic stage).
    pub(super) destination: Destination,
    /// The verified caller, if the route authenticated one (auth stage).
    pub identity: Option<Arc<Identity>>,
    /// Rate-limit report and concurrency slots (rate-limit stage).
    pub(super) admission: Admission,
    /// Size and deadline of the streamed request body (edge stage).
    pub(super) body: BodyLimit,
    /// Prepared header values and body buffers (transform stage).
    pub(super) exchange: Exchange,
    /// The route script's views and decisions (script stage).
    pub(super) script: crate::script::ScriptRun,
    /// Backends tried, timings and retry rules (upstream stage).
    pub(super) attempts: Attempts,
    /// Whether and under which key the request uses its route's cache (cache stage).
    pub(super) cache: crate::cache::CacheUse,
    /// The response body's encoder, when it is compressed (compression stage).
    pub(super) encoding: crate::compression::ResponseEncoding,
    /// The gRPC call's wire, deadline, message framing and status (gRPC stage).
    pub(super) grpc: crate::grpc::GrpcCall,
    /// Trace ids, the server span's start and the attempts' client spans (trace stage).
    pub(super) trace: crate::trace::RequestTrace,
    /// A gateway-level error decided in an earlier phase, rendered by `fail_to_proxy`.
    pub(super) error: Option<GatewayError>,
}

impl RequestCtx {
    /// The matched route's target.
    pub(super) fn target(&self) -> Option<&RouteTarget> {
        target_of(&self.snapshot, &self.route)
    }

    /// The service pool of the matched proxy route.
    pub(super) fn pool(&self) -> Option<&ServicePool> {
        pool_of(&self.snapshot, &self.destination)
    }

    /// The matched route's metrics, labelled with the split entry's service when it has one.
    pub(super) fn route_metrics(&self) -> Option<&crate::metrics::RouteMetrics> {
        let target = self.target()?;
        match (&target.split, self.destination.entry) {
            (Some(split), Some(entry)) => Some(&split.entries()[entry].metrics),
            _ => Some(&target.metrics),
        }
    }

    /// The values templates are rendered with.
    pub(super) fn vars(&self) -> TemplateVars<'_> {
        vars_of(&self.route, &self.identity, &self.inbound)
    }
}

/// The matched route's target, from the fields it comes from (see [`vars_of`]).
pub(super) fn target_of<'a>(
    snapshot: &'a Option<Arc<Snapshot>>,
    route: &Option<RouteMatch>,
) -> Option<&'a RouteTarget> {
    Some(&snapshot.as_ref()?.routes.routes()[route.as_ref()?.route].target)
}

/// The service pool chosen for a proxy request, from the fields it comes from.
pub(super) fn pool_of<'a>(
    snapshot: &'a Option<Arc<Snapshot>>,
    destination: &Destination,
) -> Option<&'a ServicePool> {
    Some(snapshot.as_ref()?.service(destination.service?))
}

/// Template values from the fields they come from, so a stage can render while another field
/// of the context is borrowed mutably.
pub(super) fn vars_of<'a>(
    route: &'a Option<RouteMatch>,
    identity: &'a Option<Arc<Identity>>,
    inbound: &'a Inbound,
) -> TemplateVars<'a> {
    TemplateVars {
        params: route.as_ref().map_or(&[][..], |r| &r.params[..]),
        identity: identity.as_deref(),
        request_id: inbound.request_id(),
        client_ip: inbound.client_ip,
    }
}
