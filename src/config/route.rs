//! One entry of `routes:` as written in the YAML file: the route's whole schema, assembled from
//! the config structs each capability owns. The snapshot compiles it; the router only sees the
//! matching part of it.

use crate::aggregate::AggregateConfig;
use crate::auth::{AuthMode, ScopeMatch};
use crate::edge::cors::CorsConfig;
use crate::edge::headers::SecurityHeadersConfig;
use crate::router::{MatchKind, RouteSpec};
use crate::transform::{RequestTransformConfig, ResponseTransformConfig};
use serde::Deserialize;

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
    pub aggregate: Option<AggregateConfig>,
    /// Request headers, cookies or query parameters the route requires: it matches only
    /// requests that have them (a route for testers beside the one for everyone).
    #[serde(default, rename = "when")]
    pub conditions: Option<crate::traffic::VariantConfig>,
    /// Weighted split between services (canary, blue/green), instead of `service`.
    #[serde(default)]
    pub split: Option<Vec<crate::traffic::SplitEntryConfig>>,
    /// Copies of a sample of the route's forwarded requests, to another service (shadow).
    #[serde(default)]
    pub mirror: Option<crate::traffic::MirrorConfig>,
    /// What keeps a caller on one side of `split`: `user`, `consumer`, `client_ip`,
    /// `cookie:NAME` or `header:NAME`; absent = each request chosen at random by weight.
    #[serde(default)]
    pub sticky: Option<String>,
    /// Remove the part of the path matched by the pattern before forwarding (default true).
    #[serde(default = "default_true")]
    pub strip_prefix: bool,
    /// Template for the upstream path, e.g. `/v2/users/{id}`; overrides `strip_prefix`.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// `none` (default), `optional` or `required` (needs the top-level `auth:` section).
    #[serde(default)]
    pub auth: AuthMode,
    /// Credentials the route accepts, any of `jwt` (default), `api_key`, `basic`.
    #[serde(default)]
    pub auth_methods: Option<Vec<crate::auth::AuthMethod>>,
    /// Only registered consumers pass (a token naming no consumer is refused with 403).
    #[serde(default)]
    pub require_consumer: bool,
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
    /// Client networks admitted and refused on this route, besides the top-level lists.
    #[serde(default)]
    pub ip_restriction: Option<crate::edge::ip_access::IpRestrictionConfig>,
    /// CORS policy replacing the top-level `cors:` for this route.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    /// Response compression replacing the top-level `compression:` for this route.
    #[serde(default)]
    pub compression: Option<crate::compression::CompressionConfig>,
    /// Responses of this route are stored in the response cache and served from it.
    #[serde(default)]
    pub cache: Option<crate::cache::CacheConfig>,
    /// Security headers merged over the top-level `security_headers:`.
    #[serde(default)]
    pub security_headers: Option<SecurityHeadersConfig>,
    /// Request transformation (headers, query, JSON body).
    #[serde(default)]
    pub request: Option<RequestTransformConfig>,
    /// Response transformation (headers, JSON body).
    #[serde(default)]
    pub response: Option<ResponseTransformConfig>,
    /// A script called at named points of each request (`on_request`, `on_request_body`,
    /// `on_response`, `on_response_body`).
    #[serde(default)]
    pub script: Option<crate::script::ScriptConfig>,
    /// Largest request body for this route (default `limits.max_body_bytes`).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// `http` (default) or `grpc`: a gRPC route takes only gRPC calls (and gRPC-Web ones with
    /// `grpc.web`); gRPC calls on other routes are recognised by their content type.
    #[serde(default)]
    pub protocol: crate::grpc::Protocol,
    /// gRPC settings (`web`, `max_message_bytes`, `max_timeout`, `idle_timeout`); needs
    /// `protocol: grpc`.
    #[serde(default)]
    pub grpc: Option<crate::grpc::GrpcConfig>,
    /// Forward WebSocket upgrades (`Upgrade: websocket`) to the service. Off by default: other
    /// routes refuse the handshake with 400.
    #[serde(default)]
    pub websocket: bool,
}

impl RouteConfig {
    /// The matching part of the route, as the router takes it.
    pub fn spec(&self) -> RouteSpec<'_> {
        RouteSpec {
            name: self.name.as_deref(),
            path: &self.path,
            match_kind: self.match_kind,
            methods: &self.methods,
            host: self.host.as_deref(),
            strip_prefix: self.strip_prefix,
            rewrite: self.rewrite.as_deref(),
            claims: self.auth != AuthMode::None,
            conditional: self.conditions.is_some(),
        }
    }
}

fn default_true() -> bool {
    true
}
