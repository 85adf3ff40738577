//! The `tracing:` section as written in the YAML file, and its compiled form.

use crate::de::de_duration;
use crate::invalid::Invalid;
use crate::share::Share;
use http::HeaderName;
use serde::Deserialize;
use std::time::Duration;

/// The top-level `tracing:` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Propagate W3C Trace Context and export spans (default true once the section exists).
    pub enabled: bool,
    /// Continue the client's trace. `false` (for public edges) ignores client trace context
    /// except from `trusted_proxies`.
    pub trust_incoming: bool,
    /// Share of new traces (no trusted parent) that are sampled, 0 to 1.
    pub sampling_ratio: f64,
    /// Header answering the client with the trace (`traceresponse` style); none by default.
    pub response_header: Option<String>,
    /// Record the authenticated subject or consumer on server spans (`enduser.id`).
    pub record_subject: bool,
    /// `service.name` of the resource.
    pub service_name: String,
    pub otlp: OtlpConfig,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            enabled: true,
            trust_incoming: true,
            sampling_ratio: 1.0,
            response_header: None,
            record_subject: false,
            service_name: "apigateway".into(),
            otlp: OtlpConfig::default(),
        }
    }
}

/// Where and how spans are exported.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// The collector's traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: String,
    /// `http/protobuf` (the only one).
    pub protocol: String,
    /// Longest one export request may take.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Spans per export request at most.
    pub batch_size: usize,
    /// Finished requests waiting for export at most; more are dropped and counted.
    pub queue_size: usize,
    /// How long a span may wait for a batch to fill.
    #[serde(deserialize_with = "de_duration")]
    pub flush_interval: Duration,
    /// Retries of a failed export (connection error, 429, 5xx), with doubling backoff.
    pub max_retries: u32,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            protocol: "http/protobuf".into(),
            timeout: Duration::from_secs(5),
            batch_size: 2048,
            queue_size: 8192,
            flush_interval: Duration::from_secs(1),
            max_retries: 3,
        }
    }
}

/// The compiled section.
#[derive(Debug, Clone)]
pub struct Tracing {
    pub trust_incoming: bool,
    /// New traces whose id's low 64 bits fall in this share are sampled (like OpenTelemetry's
    /// trace-id ratio sampler, so every hop deciding on the same id agrees).
    pub sample: Share,
    pub response_header: Option<HeaderName>,
    pub record_subject: bool,
    pub export: ExportSettings,
}

/// What the exporter thread runs with (fixed at its start: changing it needs a restart or an
/// upgrade, like the listeners).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    pub endpoint: reqwest::Url,
    pub service_name: String,
    pub timeout: Duration,
    pub batch_size: usize,
    pub queue_size: usize,
    pub flush_interval: Duration,
    pub max_retries: u32,
}

impl Tracing {
    /// `None` when tracing is disabled. Errors name `tracing.<key>`.
    pub fn compile(cfg: &TracingConfig) -> Result<Option<Self>, Invalid> {
        if !cfg.enabled {
            return Ok(None);
        }
        let sample = Share::compile(cfg.sampling_ratio, "tracing.sampling_ratio")?;
        let o = &cfg.otlp;
        if o.protocol != "http/protobuf" {
            return Err(Invalid::new(
                "tracing.otlp.protocol",
                format!(
                    "unknown protocol {:?} (supported: http/protobuf)",
                    o.protocol
                ),
            ));
        }
        let endpoint = reqwest::Url::parse(&o.endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                Invalid::new(
                    "tracing.otlp.endpoint",
                    format!("{:?} is not an http(s) URL", o.endpoint),
                )
            })?;
        for (key, zero) in [
            ("batch_size", o.batch_size == 0),
            ("queue_size", o.queue_size == 0),
            ("timeout", o.timeout.is_zero()),
            ("flush_interval", o.flush_interval.is_zero()),
        ] {
            if zero {
                return Err(Invalid::new(
                    format!("tracing.otlp.{key}"),
                    "must be positive",
                ));
            }
        }
        let response_header = cfg
            .response_header
            .as_deref()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    Invalid::new(
                        "tracing.response_header",
                        format!("{h:?} is not a header name"),
                    )
                })
            })
            .transpose()?;
        Ok(Some(Tracing {
            trust_incoming: cfg.trust_incoming,
            sample,
            response_header,
            record_subject: cfg.record_subject,
            export: ExportSettings {
                endpoint,
                service_name: cfg.service_name.clone(),
                timeout: o.timeout,
                batch_size: o.batch_size,
                queue_size: o.queue_size,
                flush_interval: o.flush_interval,
                max_retries: o.max_retries,
            },
        }))
    }
}
