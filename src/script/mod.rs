//! User scripts on a route (`script:`): Rhai functions the gateway calls at named points of a
//! request, to compute headers, reshape JSON bodies or answer directly.
//!
//! A script is compiled once with the snapshot and shared read-only by every request; each
//! call gets fresh views of its own request and runs under the route's limits. A failing call
//! is logged with its route and counted, and the client gets `500 Script error` and nothing
//! of the failure; the request is not forwarded with half of the script's changes.

pub mod api;
mod config;
mod engine;
mod json;
mod members;
mod scan;
mod stage;

pub use config::{REQUEST_BODY_CEILING, ScriptConfig, ScriptLimits};
pub use stage::{BodyNeed, RequestInput, ScriptAnswer, ScriptRun, Step};

use crate::invalid::Invalid;
use rhai::{AST, CallFnOptions, Dynamic, Engine, EvalAltResult, FuncArgs, ImmutableString, Scope};
use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::time::Instant;

/// The points of a request a script can act at; a script defines the functions it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `on_request(req)`: before the upstream is contacted; may answer.
    OnRequest,
    /// `on_request_body(req, body)`: the parsed JSON request body; may replace it or answer.
    OnRequestBody,
    /// `on_response(req, res)`: the upstream's status and headers, before they are sent.
    OnResponse,
    /// `on_response_body(req, res, body)`: the parsed JSON response body; may replace it.
    OnResponseBody,
}

impl Hook {
    pub const ALL: [Hook; 4] = [
        Hook::OnRequest,
        Hook::OnRequestBody,
        Hook::OnResponse,
        Hook::OnResponseBody,
    ];

    /// The function's name in the script (and the `hook` label of its metrics).
    pub fn name(self) -> &'static str {
        match self {
            Hook::OnRequest => "on_request",
            Hook::OnRequestBody => "on_request_body",
            Hook::OnResponse => "on_response",
            Hook::OnResponseBody => "on_response_body",
        }
    }

    fn params(self) -> &'static str {
        match self {
            Hook::OnRequest => "req",
            Hook::OnRequestBody => "req, body",
            Hook::OnResponse => "req, res",
            Hook::OnResponseBody => "req, res, body",
        }
    }

    fn arity(self) -> usize {
        self.params().split(", ").count()
    }
}

/// Why a call failed. The message goes to the log, never to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptError {
    /// More than `max_operations`.
    Operations,
    /// Deeper than `max_call_depth`.
    CallDepth,
    /// A string, array or map over its limit.
    Size(String),
    /// Longer than `timeout`.
    Timeout,
    /// A runtime error: `throw`, a type mismatch, an unknown function, an invalid header.
    Failed(String),
    /// The hook returned something it may not.
    ReturnType {
        expected: &'static str,
        found: String,
    },
}

impl ScriptError {
    /// The `reason` label of `apigateway_script_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ScriptError::Operations => "operations",
            ScriptError::CallDepth => "call_depth",
            ScriptError::Size(_) => "size",
            ScriptError::Timeout => "timeout",
            ScriptError::Failed(_) => "error",
            ScriptError::ReturnType { .. } => "return_type",
        }
    }

    fn from_eval(err: &EvalAltResult) -> Self {
        match err {
            EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => Self::from_eval(inner),
            EvalAltResult::ErrorTooManyOperations(_) => ScriptError::Operations,
            EvalAltResult::ErrorStackOverflow(_) => ScriptError::CallDepth,
            EvalAltResult::ErrorDataTooLarge(what, _) => ScriptError::Size(what.clone()),
            EvalAltResult::ErrorTerminated(token, _)
                if token.clone().into_string().ok().as_deref() == Some(engine::TIMED_OUT) =>
            {
                ScriptError::Timeout
            }
            other => ScriptError::Failed(other.to_string()),
        }
    }
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScriptError::Operations => f.write_str("too many operations (limits.max_operations)"),
            ScriptError::CallDepth => f.write_str("calls nested too deep (limits.max_call_depth)"),
            ScriptError::Size(what) => write!(f, "{what} too large (limits)"),
            ScriptError::Timeout => f.write_str("ran out of time (limits.timeout)"),
            ScriptError::Failed(message) => f.write_str(message),
            ScriptError::ReturnType { expected, found } => {
                write!(f, "returned {found}; expected {expected}")
            }
        }
    }
}

/// A route's compiled script, shared read-only by every request of the snapshot.
pub struct RouteScript {
    engine: Engine,
    ast: AST,
    hooks: [bool; 4],
    /// The body members `on_request_body` and `on_response_body` can reach (`None`: any).
    reachable: [Option<HashSet<String>>; 2],
    pub limits: ScriptLimits,
    /// The route's name, as scripts and log lines see it.
    pub route: ImmutableString,
}

impl fmt::Debug for RouteScript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteScript")
            .field("route", &self.route)
            .field("hooks", &self.hooks)
            .finish()
    }
}

impl RouteScript {
    /// Reads (relative to `base`) and compiles the script; syntax errors carry the file, line
    /// and column, under `key.file` or `key.source`.
    pub fn compile(
        cfg: &ScriptConfig,
        base: &Path,
        key: &str,
        route: &str,
    ) -> Result<Self, Invalid> {
        cfg.limits.check(key)?;
        let (text, origin, at) = match (&cfg.file, &cfg.source) {
            (Some(file), None) => {
                let path = base.join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    Invalid::new(format!("{key}.file"), format!("{}: {e}", path.display()))
                })?;
                (text, file.display().to_string(), format!("{key}.file"))
            }
            (None, Some(source)) => (source.clone(), "source".into(), format!("{key}.source")),
            _ => return Err(Invalid::new(key, "set exactly one of `file` or `source`")),
        };
        let engine = engine::build(&cfg.limits, route);
        let ast = engine.compile(&text).map_err(|e| {
            let (line, column) = (e.1.line().unwrap_or(0), e.1.position().unwrap_or(0));
            Invalid::new(&at, format!("{origin}:{line}:{column}: {}", e.0))
        })?;
        let hooks = hooks_of(&ast).map_err(|reason| Invalid::new(&at, reason))?;
        let reachable = [Hook::OnRequestBody, Hook::OnResponseBody].map(|hook| {
            let f = ast.iter_functions().find(|f| f.name == hook.name())?;
            members::named(&ast, f.params.last()?)
        });
        Ok(RouteScript {
            engine,
            ast,
            hooks,
            reachable,
            limits: cfg.limits,
            route: route.into(),
        })
    }

    /// Whether the script defines `hook`.
    pub fn has(&self, hook: Hook) -> bool {
        self.hooks[hook as usize]
    }

    /// Parses a JSON body for a body hook, converting only the members the hook can reach.
    fn parse_body(&self, hook: Hook, body: &[u8]) -> Result<Dynamic, json::ParseError> {
        let reachable = match hook {
            Hook::OnRequestBody => &self.reachable[0],
            _ => &self.reachable[1],
        };
        match reachable {
            Some(named) => json::parse_members(body, named),
            None => json::parse(body),
        }
    }

    /// Calls `hook` with `args` under the route's limits, in a fresh scope.
    fn call(&self, hook: Hook, args: impl FuncArgs) -> Result<Dynamic, ScriptError> {
        let mut scope = Scope::new();
        let options = CallFnOptions::new().eval_ast(false);
        let deadline = Instant::now() + self.limits.timeout;
        engine::with_deadline(deadline, || {
            self.engine.call_fn_with_options::<Dynamic>(
                options,
                &mut scope,
                &self.ast,
                hook.name(),
                args,
            )
        })
        .map_err(|e| ScriptError::from_eval(&e))
    }
}

/// Which hooks the script defines. Any other `on_*` function, a hook with the wrong
/// parameters, or code outside functions is a config error: none of it would ever run.
fn hooks_of(ast: &AST) -> Result<[bool; 4], String> {
    if !ast.statements().is_empty() {
        return Err(
            "code outside functions never runs: put it in on_request(req), \
             on_request_body(req, body), on_response(req, res) or on_response_body(req, res, body)"
                .into(),
        );
    }
    let mut hooks = [false; 4];
    for f in ast.iter_functions() {
        let Some(hook) = Hook::ALL.into_iter().find(|h| h.name() == f.name) else {
            if f.name.starts_with("on_") {
                return Err(format!(
                    "{} is not a hook: the hooks are on_request, on_request_body, on_response \
                     and on_response_body",
                    f.name
                ));
            }
            continue;
        };
        if f.params.len() != hook.arity() {
            return Err(format!(
                "{} takes ({}), not {} parameter(s)",
                hook.name(),
                hook.params(),
                f.params.len()
            ));
        }
        hooks[hook as usize] = true;
    }
    if !hooks.contains(&true) {
        return Err(
            "defines none of on_request, on_request_body, on_response, on_response_body".into(),
        );
    }
    Ok(hooks)
}

#[cfg(test)]
mod tests;
