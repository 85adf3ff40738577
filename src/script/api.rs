//! What a script sees: the request and response views, `respond`, and the JSON helpers.
//!
//! Rhai passes arguments by value, so a view is a handle on state the stage keeps: a change a
//! script makes through `req` is seen by the gateway after the call, and by the next hook of
//! the same request. A change is recorded as an edit and applied to the real request or
//! response only when the call succeeds, so a failing script leaves nothing half-applied.

use crate::identity::Identity;
use crate::transform::{HeaderEdit, WireName};
use http::{HeaderMap, HeaderName, HeaderValue};
use rhai::{Dynamic, Engine, EvalAltResult, ImmutableString, Map};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

pub type Fallible<T> = Result<T, Box<EvalAltResult>>;

/// A header change a script made (the name as the script spelled it, as transforms keep it).
#[derive(Debug, Clone)]
pub enum Edit {
    Set(WireName, HeaderValue),
    Remove(HeaderName),
}

/// Applies `edits` to a request or response head, in the order the script made them, through
/// the transforms' header editing (which keeps Pingora's case map in step).
pub fn apply_edits(edits: &[Edit], target: &mut impl HeaderEdit) {
    for edit in edits {
        match edit {
            Edit::Set(name, value) => target.insert(name, value.clone()),
            Edit::Remove(name) => target.remove(name),
        }
    }
}

/// The request as a script sees it, and what the script changed.
pub struct RequestState {
    pub method: ImmutableString,
    pub path: ImmutableString,
    pub query: ImmutableString,
    /// The request's headers, with the script's edits applied as it makes them.
    pub headers: HeaderMap,
    pub params: Vec<(Arc<str>, String)>,
    pub identity: Option<Arc<Identity>>,
    pub request_id: ImmutableString,
    pub client_ip: Option<IpAddr>,
    pub route: ImmutableString,
    pub edits: Vec<Edit>,
    /// The path sent upstream (the route's, until a script sets it).
    pub upstream_path: String,
    pub path_changed: bool,
    /// The query sent upstream, when a script set it.
    pub upstream_query: Option<String>,
    /// The per-request scratch space shared by the hooks.
    pub vars: Map,
}

/// The script's handle on the request (`req`).
#[derive(Clone)]
pub struct RequestView(pub Arc<Mutex<RequestState>>);

impl RequestView {
    pub fn new(state: RequestState) -> Self {
        RequestView(Arc::new(Mutex::new(state)))
    }

    /// The state; a script cannot panic while holding it, so poisoning is only ever ours.
    pub fn state(&self) -> MutexGuard<'_, RequestState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The upstream's answer as a script sees it (`res`), and what the script changed.
pub struct ResponseState {
    pub status: u16,
    pub headers: HeaderMap,
    pub edits: Vec<Edit>,
    pub status_changed: bool,
    /// The head went to the client already (`on_response_body`): it is read-only.
    pub sent: bool,
}

/// The script's handle on the response (`res`).
#[derive(Clone)]
pub struct ResponseView(pub Arc<Mutex<ResponseState>>);

impl ResponseView {
    pub fn new(status: u16, headers: HeaderMap) -> Self {
        ResponseView(Arc::new(Mutex::new(ResponseState {
            status,
            headers,
            edits: Vec::new(),
            status_changed: false,
            sent: false,
        })))
    }

    pub fn state(&self) -> MutexGuard<'_, ResponseState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An answer a script gives instead of forwarding the request: `respond(status, body)`.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Dynamic,
    pub headers: Vec<(WireName, HeaderValue)>,
}

/// Registers the script API on `engine`.
pub fn register(engine: &mut Engine) {
    register_request(engine);
    register_response(engine);
    engine.register_type_with_name::<Reply>("Reply");
    engine.register_fn("respond", |status: i64, body: Dynamic| {
        reply(status, body, Map::new())
    });
    engine.register_fn("respond", reply);
    // The same conversions as the bodies hooks get.
    engine.register_fn("json_encode", |value: Dynamic| -> Fallible<String> {
        let bytes = super::json::write(&value)
            .ok_or_else(|| format!("json_encode: {} is not data", value.type_name()))?;
        String::from_utf8(bytes).map_err(|_| "json_encode: not UTF-8".into())
    });
    engine.register_fn("json_decode", |text: &str| -> Fallible<Dynamic> {
        super::json::parse(text.as_bytes()).map_err(|_| "json_decode: not JSON".into())
    });
}

fn reply(status: i64, body: Dynamic, headers: Map) -> Fallible<Reply> {
    let status = u16::try_from(status)
        .ok()
        .filter(|s| (200..=599).contains(s))
        .ok_or_else(|| format!("respond: status {status} is not between 200 and 599"))?;
    let mut list = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        list.push(header_pair(&name, &value.to_string())?);
    }
    Ok(Reply {
        status,
        body,
        headers: list,
    })
}

/// Framing and connection headers are the gateway's: a script setting them could desync the
/// client or the upstream connection.
const RESERVED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// A header a script may set: a token name, a value without CR, LF or NUL, not a framing
/// header.
fn header_pair(name: &str, value: &str) -> Fallible<(WireName, HeaderValue)> {
    let wire =
        WireName::parse(name).ok_or_else(|| format!("{name:?} is not a valid header name"))?;
    let header = &wire.name;
    if RESERVED.contains(&header.as_str()) {
        return Err(format!("{header} is set by the gateway, not by scripts").into());
    }
    let value = HeaderValue::from_str(value)
        .map_err(|_| format!("the value for {header} has a control character (CR, LF, NUL)"))?;
    Ok((wire, value))
}

fn header_name(name: &str) -> Fallible<HeaderName> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name").into())
}

/// One header's value (several joined by `, `), or `()`.
fn header_of(headers: &HeaderMap, name: &str) -> Dynamic {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let Some(first) = values.next() else {
        return Dynamic::UNIT;
    };
    let mut joined = first.to_string();
    for more in values {
        joined.push_str(", ");
        joined.push_str(more);
    }
    joined.into()
}

fn headers_map(headers: &HeaderMap) -> Map {
    let mut map = Map::new();
    for name in headers.keys() {
        map.insert(name.as_str().into(), header_of(headers, name.as_str()));
    }
    map
}

fn string_or_unit(value: Option<&str>) -> Dynamic {
    value.map_or(Dynamic::UNIT, |s| s.to_string().into())
}

/// A claim by dotted path (`address.city`), converted to a script value; `()` when absent.
fn claim_at(identity: Option<&Identity>, path: &str) -> Fallible<Dynamic> {
    match identity.and_then(|i| crate::identity::value_at(&i.claims, path.split('.'))) {
        Some(v) => rhai::serde::to_dynamic(v),
        None => Ok(Dynamic::UNIT),
    }
}

fn register_request(engine: &mut Engine) {
    engine.register_type_with_name::<RequestView>("Request");
    engine.register_get("method", |r: &mut RequestView| r.state().method.clone());
    engine.register_get("path", |r: &mut RequestView| r.state().path.clone());
    engine.register_get("query", |r: &mut RequestView| r.state().query.clone());
    engine.register_get("route", |r: &mut RequestView| r.state().route.clone());
    engine.register_get("request_id", |r: &mut RequestView| {
        r.state().request_id.clone()
    });
    engine.register_get("client_ip", |r: &mut RequestView| {
        let ip = r.state().client_ip;
        ip.map_or(Dynamic::UNIT, |ip| ip.to_string().into())
    });
    engine.register_get("subject", |r: &mut RequestView| {
        let s = r.state();
        string_or_unit(s.identity.as_ref().and_then(|i| i.subject.as_deref()))
    });
    engine.register_get("consumer", |r: &mut RequestView| {
        let s = r.state();
        let consumer = s.identity.as_ref().and_then(|i| i.consumer.as_ref());
        string_or_unit(consumer.map(|c| &*c.id))
    });
    engine.register_get("roles", |r: &mut RequestView| {
        let s = r.state();
        let roles = s.identity.as_ref().map_or(&[][..], |i| &i.roles[..]);
        roles
            .iter()
            .map(|r| Dynamic::from(r.clone()))
            .collect::<rhai::Array>()
    });
    engine.register_fn("has_role", |r: &mut RequestView, role: &str| {
        let s = r.state();
        s.identity
            .as_ref()
            .is_some_and(|i| i.roles.iter().any(|r| r == role))
    });
    engine.register_fn("claim", |r: &mut RequestView, path: &str| {
        claim_at(r.state().identity.as_deref(), path)
    });
    engine.register_fn("param", |r: &mut RequestView, name: &str| {
        let s = r.state();
        let value = s.params.iter().find(|(n, _)| &**n == name);
        string_or_unit(value.map(|(_, v)| v.as_str()))
    });
    engine.register_get("params", |r: &mut RequestView| {
        let s = r.state();
        let mut map = Map::new();
        for (name, value) in &s.params {
            map.insert(name.as_ref().into(), value.clone().into());
        }
        map
    });
    register_headers::<RequestView>(engine);
    engine.register_get_set(
        "upstream_path",
        |r: &mut RequestView| ImmutableString::from(r.state().upstream_path.as_str()),
        |r: &mut RequestView, path: ImmutableString| -> Fallible<()> {
            check_path(&path)?;
            let mut s = r.state();
            s.upstream_path = path.to_string();
            s.path_changed = true;
            Ok(())
        },
    );
    engine.register_get_set(
        "upstream_query",
        |r: &mut RequestView| {
            let s = r.state();
            match &s.upstream_query {
                Some(q) => ImmutableString::from(q.as_str()),
                None => s.query.clone(),
            }
        },
        |r: &mut RequestView, query: ImmutableString| -> Fallible<()> {
            check_query(&query)?;
            r.state().upstream_query = Some(query.to_string());
            Ok(())
        },
    );
    engine.register_get_set(
        "vars",
        |r: &mut RequestView| r.state().vars.clone(),
        |r: &mut RequestView, vars: Map| r.state().vars = vars,
    );
}

/// An absolute path a request line can carry: no query, fragment, space or control byte.
fn check_path(path: &str) -> Fallible<()> {
    let valid = path.starts_with('/')
        && !path.contains(['?', '#'])
        && path.parse::<http::uri::PathAndQuery>().is_ok();
    if valid {
        Ok(())
    } else {
        Err(format!("upstream_path {path:?} is not an absolute path without query").into())
    }
}

fn check_query(query: &str) -> Fallible<()> {
    let valid = !query.contains('#')
        && format!("/?{query}")
            .parse::<http::uri::PathAndQuery>()
            .is_ok();
    if valid {
        Ok(())
    } else {
        Err(format!("upstream_query {query:?} has a character a query cannot carry").into())
    }
}

fn register_response(engine: &mut Engine) {
    engine.register_type_with_name::<ResponseView>("Response");
    engine.register_get_set(
        "status",
        |r: &mut ResponseView| r.state().status as i64,
        |r: &mut ResponseView, status: i64| -> Fallible<()> {
            let mut s = writable(r)?;
            s.status = u16::try_from(status)
                .ok()
                .filter(|s| (200..=599).contains(s))
                .ok_or_else(|| format!("status {status} is not between 200 and 599"))?;
            s.status_changed = true;
            Ok(())
        },
    );
    register_headers::<ResponseView>(engine);
}

/// A head whose headers a script reads and edits: the request, or the response until it is
/// sent.
trait HeadView: Clone + Send + Sync + 'static {
    fn headers<R>(&self, read: impl FnOnce(&HeaderMap) -> R) -> R;
    /// Records `edit` and applies it to the view's copy, so later reads see it.
    fn edit(&self, edit: Edit) -> Fallible<()>;
}

fn apply_to_copy(headers: &mut HeaderMap, edits: &mut Vec<Edit>, edit: Edit) {
    match &edit {
        Edit::Set(name, value) => {
            headers.insert(name.name.clone(), value.clone());
        }
        Edit::Remove(name) => {
            headers.remove(name);
        }
    }
    edits.push(edit);
}

impl HeadView for RequestView {
    fn headers<R>(&self, read: impl FnOnce(&HeaderMap) -> R) -> R {
        read(&self.state().headers)
    }
    fn edit(&self, edit: Edit) -> Fallible<()> {
        let s = &mut *self.state();
        apply_to_copy(&mut s.headers, &mut s.edits, edit);
        Ok(())
    }
}

impl HeadView for ResponseView {
    fn headers<R>(&self, read: impl FnOnce(&HeaderMap) -> R) -> R {
        read(&self.state().headers)
    }
    fn edit(&self, edit: Edit) -> Fallible<()> {
        let s = &mut *writable(self)?;
        apply_to_copy(&mut s.headers, &mut s.edits, edit);
        Ok(())
    }
}

/// `header(name)`, `headers`, `set_header(name, value)` and `remove_header(name)` on `T`.
fn register_headers<T: HeadView>(engine: &mut Engine) {
    engine.register_fn("header", |v: &mut T, name: &str| {
        v.headers(|h| header_of(h, name))
    });
    engine.register_get("headers", |v: &mut T| v.headers(headers_map));
    engine.register_fn(
        "set_header",
        |v: &mut T, name: &str, value: Dynamic| -> Fallible<()> {
            let (name, value) = header_pair(name, &value.to_string())?;
            v.edit(Edit::Set(name, value))
        },
    );
    engine.register_fn("remove_header", |v: &mut T, name: &str| -> Fallible<()> {
        v.edit(Edit::Remove(header_name(name)?))
    });
}

fn writable(r: &ResponseView) -> Fallible<MutexGuard<'_, ResponseState>> {
    let s = r.state();
    if s.sent {
        return Err("the response head was sent already: change it in on_response".into());
    }
    Ok(s)
}
