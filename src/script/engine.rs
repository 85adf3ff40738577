//! The sandboxed Rhai engine a route's script runs in, and its per-call wall-clock budget.
//!
//! Rhai itself has no filesystem, network or process access; with `no_module` a script cannot
//! `import` a file, `no_time` keeps it deterministic, and `eval` is disabled so nothing is
//! parsed per request. Every call is bounded by the operation, call-depth and size limits
//! Rhai checks itself, plus the wall clock checked from its progress callback.

use super::api;
use super::config::ScriptLimits;
use rhai::{Dynamic, Engine, OptimizationLevel};
use std::cell::Cell;
use std::time::Instant;

thread_local! {
    /// When the call running on this thread must stop. Calls run synchronously on the
    /// worker thread that makes them, so one slot per thread is enough.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The value a call stopped by the wall clock terminates with.
pub const TIMED_OUT: &str = "timeout";

/// Reading the clock costs more than a Rhai operation: it is read once per this many.
const CLOCK_EVERY: u64 = 64;

/// An engine with the limits and the script API; `label` names the script in its log lines.
pub fn build(limits: &ScriptLimits, label: &str) -> Engine {
    let mut engine = Engine::new();
    engine.set_optimization_level(OptimizationLevel::Simple);
    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(limits.max_call_depth);
    engine.set_max_expr_depths(64, 32);
    engine.set_max_string_size(limits.max_string_bytes);
    engine.set_max_array_size(limits.max_array_len);
    engine.set_max_map_size(limits.max_map_len);
    engine.set_strict_variables(true);
    engine.disable_symbol("eval");
    engine.on_progress(|ops| {
        if ops % CLOCK_EVERY != 0 {
            return None;
        }
        let deadline = DEADLINE.with(Cell::get)?;
        (Instant::now() >= deadline).then(|| Dynamic::from(TIMED_OUT))
    });
    let print_label = label.to_string();
    engine.on_print(move |text| log::info!("script {print_label}: {text}"));
    let debug_label = label.to_string();
    engine.on_debug(move |text, _, pos| log::debug!("script {debug_label} {pos}: {text}"));
    let log_label = label.to_string();
    engine.register_fn("log", move |text: &str| {
        log::info!("script {log_label}: {text}")
    });
    api::register(&mut engine);
    engine.register_type_with_name::<super::json::RawJson>("json");
    engine
}

/// Runs `call` with the wall-clock budget armed on this thread.
pub fn with_deadline<T>(deadline: Instant, call: impl FnOnce() -> T) -> T {
    DEADLINE.with(|d| d.set(Some(deadline)));
    let result = call();
    DEADLINE.with(|d| d.set(None));
    result
}
