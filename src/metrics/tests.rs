//! The Grafana dashboard in `contrib/grafana` queries only metrics and labels the gateway
//! exports.

use super::catalogue;
use std::collections::{BTreeMap, BTreeSet};

const DASHBOARD: &str = include_str!("../../contrib/grafana/apigateway.json");
/// Labels Prometheus adds when scraping, and the histogram bucket label.
const SCRAPE_LABELS: [&str; 3] = ["job", "instance", "le"];

/// The metric names in a PromQL expression (`apigateway_...`, histogram suffixes removed).
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("apigateway_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        out.push(base.to_string());
    }
    out
}

/// Label names an expression uses: in `by (...)`/`without (...)` and in `{...}` selectors.
fn labels_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for keyword in ["by (", "without ("] {
        for part in expr.split(keyword).skip(1) {
            let list = part.split(')').next().unwrap_or("");
            out.extend(
                list.split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    for part in expr.split('{').skip(1) {
        let selector = part.split('}').next().unwrap_or("");
        for matcher in selector.split(',') {
            let name: String = matcher
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn the_dashboard_queries_only_exported_metrics_and_labels() {
    let exported: BTreeMap<String, Vec<String>> = catalogue().into_iter().collect();
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    let mut queried = BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expr");
            let metrics = metrics_in(expr);
            assert!(!metrics.is_empty(), "no gateway metric in {expr}");
            let mut allowed: BTreeSet<String> =
                SCRAPE_LABELS.iter().map(|s| s.to_string()).collect();
            for m in &metrics {
                let labels = exported
                    .get(m)
                    .unwrap_or_else(|| panic!("{m} (in {expr}) is not exported"));
                allowed.extend(labels.iter().cloned());
                queried.insert(m.clone());
            }
            for label in labels_in(expr) {
                assert!(
                    allowed.contains(&label),
                    "label {label} of {expr} is not exported"
                );
            }
        }
    }
    // Every metric the gateway exports has a panel.
    let missing: Vec<_> = exported.keys().filter(|m| !queried.contains(*m)).collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}

#[test]
fn the_checks_read_promql() {
    let expr = r#"histogram_quantile(0.99, sum by (le, route) (rate(apigateway_request_duration_seconds_bucket{job=~"$job", status="5xx"}[5m])))"#;
    assert_eq!(metrics_in(expr), ["apigateway_request_duration_seconds"]);
    let labels: Vec<_> = labels_in(expr).into_iter().collect();
    assert_eq!(labels, ["job", "le", "route", "status"]);
}
