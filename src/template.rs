//! Value templates shared by transforms and aggregate calls: literal text with `{param}` (a route
//! parameter), `{claim.a.b}` (a verified claim), `{request_id}` and `{client_ip}`.
//!
//! Templates are parsed when the config is compiled, so a name that cannot resolve (an unknown
//! parameter, a claim on a route without auth) is a config error, not a runtime surprise.

use crate::identity::{ClaimPath, Identity, strings_at};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Param(String),
    Claim(ClaimPath),
    RequestId,
    ClientIp,
}

/// What a template may refer to where it is used.
pub struct TemplateScope<'a> {
    /// Parameter names of the route's path pattern.
    pub params: &'a [String],
    /// Whether the route can have a verified identity (`auth: required` or `optional`).
    pub claims: bool,
}

/// The per-request values a template is rendered with.
pub struct TemplateVars<'a> {
    pub params: &'a [(Arc<str>, String)],
    pub identity: Option<&'a Identity>,
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
}

#[cfg(test)]
impl TemplateVars<'static> {
    /// Values for tests of code that renders templates: no parameters, no caller.
    pub(crate) fn for_test(request_id: &'static str) -> Self {
        TemplateVars {
            params: &[],
            identity: None,
            request_id,
            client_ip: None,
        }
    }
}

/// A value the request does not have (an anonymous caller on an `auth: optional` route, a claim
/// the token lacks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub String);

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} missing", self.0)
    }
}

impl Template {
    /// Parses `text`; errors say which `{name}` is not available in `scope`.
    pub fn parse(text: &str, scope: &TemplateScope<'_>) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{text:?}: unclosed `{{`"))?;
            let name = &rest[open + 1..open + close];
            parts.push(Self::variable(text, name, scope)?);
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    fn variable(text: &str, name: &str, scope: &TemplateScope<'_>) -> Result<Part, String> {
        if let Some(claim) = name.strip_prefix("claim.") {
            if !scope.claims {
                return Err(format!(
                    "{text:?} uses {{{name}}}: claims need `auth: required` (or `optional`) on the route"
                ));
            }
            return Ok(Part::Claim(ClaimPath::parse(claim)?));
        }
        match name {
            "request_id" => Ok(Part::RequestId),
            "client_ip" => Ok(Part::ClientIp),
            _ if scope.params.iter().any(|p| p == name) => Ok(Part::Param(name.to_string())),
            _ => Err(format!(
                "{text:?} uses {{{name}}}: not a route parameter (defined: {:?}), claim.NAME, \
                 request_id or client_ip",
                scope.params
            )),
        }
    }

    /// The literal pieces between the variables.
    pub fn literal_text(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Literal(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// The text, if the template has no variables.
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// Renders the template; claim values pass through `encode_claim` (e.g. percent-encoding
    /// for paths), everything else is inserted as is.
    pub fn render(
        &self,
        vars: &TemplateVars<'_>,
        encode_claim: impl Fn(&str, &mut String),
    ) -> Result<String, Missing> {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Param(name) => {
                    let value = vars
                        .params
                        .iter()
                        .find(|(n, _)| **n == **name)
                        .ok_or_else(|| Missing(format!("route parameter {name}")))?;
                    out.push_str(&value.1);
                }
                Part::Claim(path) => {
                    let values = vars
                        .identity
                        .map(|i| strings_at(&i.claims, path))
                        .unwrap_or_default();
                    let value = values
                        .first()
                        .ok_or_else(|| Missing(format!("claim {path}")))?;
                    encode_claim(value, &mut out);
                }
                Part::RequestId => out.push_str(vars.request_id),
                Part::ClientIp => match vars.client_ip {
                    Some(ip) => out.push_str(&ip.to_string()),
                    None => return Err(Missing("client_ip".into())),
                },
            }
        }
        Ok(out)
    }
}

/// Inserts a claim value unchanged.
pub fn verbatim(value: &str, out: &mut String) {
    out.push_str(value);
}

/// Everything but RFC 3986 unreserved characters gets percent-encoded, so a value placed in a
/// path or a query can never add segments, parameters, a query or a fragment.
pub const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Inserts a claim value percent-encoded (see [`UNRESERVED`]).
pub fn percent_encoded(value: &str, out: &mut String) {
    out.extend(percent_encoding::utf8_percent_encode(value, UNRESERVED));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(claims: bool) -> TemplateScope<'static> {
        static PARAMS: [String; 0] = [];
        TemplateScope {
            params: &PARAMS,
            claims,
        }
    }

    #[test]
    fn parses_and_renders_every_variable() {
        let params = vec!["id".to_string()];
        let s = TemplateScope {
            params: &params,
            claims: true,
        };
        let t = Template::parse("u={id};r={request_id};ip={client_ip};s={claim.sub}", &s).unwrap();
        let values = vec![(Arc::<str>::from("id"), "42".to_string())];
        let vars = TemplateVars {
            params: &values,
            identity: None,
            request_id: "rid",
            client_ip: Some([127, 0, 0, 1].into()),
        };
        assert_eq!(t.render(&vars, verbatim), Err(Missing("claim sub".into())));
        let t = Template::parse("u={id};r={request_id};ip={client_ip}", &s).unwrap();
        assert_eq!(
            t.render(&vars, verbatim).unwrap(),
            "u=42;r=rid;ip=127.0.0.1"
        );
        assert_eq!(
            Template::parse("plain", &s).unwrap().as_literal(),
            Some("plain")
        );
    }

    #[test]
    fn unknown_names_are_config_errors() {
        assert!(Template::parse("{nope}", &scope(true)).is_err());
        assert!(Template::parse("{claim.sub}", &scope(false)).is_err());
        assert!(Template::parse("{unclosed", &scope(true)).is_err());
    }
}
