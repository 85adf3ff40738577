//! The path a matched request is forwarded with: the path as received, the path with the
//! matched prefix stripped, or a template in the gateway's one template language (`{param}`,
//! a path parameter or the named `*tail` as `{name}`, `{claim.a.b}`, `{request_id}`, `{client_ip}`; see [`crate::template`]).

use crate::template::{Missing, Template, TemplateScope, TemplateVars, percent_encoded};

/// How a route builds its upstream path.
#[derive(Debug)]
pub enum PathRewrite {
    /// The normalized request path, unchanged (`strip_prefix: false`).
    Keep,
    /// What follows the matched pattern (the default).
    StripPrefix,
    /// `rewrite:`; rendered after authentication, since it may use claims.
    Template(Template),
}

impl PathRewrite {
    /// Compiles a route's `rewrite` (if any) or its `strip_prefix` choice.
    pub(super) fn compile(
        rewrite: Option<&str>,
        strip_prefix: bool,
        scope: &TemplateScope<'_>,
    ) -> Result<Self, String> {
        let Some(text) = rewrite else {
            return Ok(if strip_prefix {
                PathRewrite::StripPrefix
            } else {
                PathRewrite::Keep
            });
        };
        if !text.starts_with('/') {
            return Err(format!("template {text:?} must start with `/`"));
        }
        let template =
            Template::parse(text, scope).map_err(|reason| format!("template {reason}"))?;
        if template.literal_text().any(|t| t.contains('}')) {
            return Err(format!("template {text:?}: unmatched `}}`"));
        }
        Ok(PathRewrite::Template(template))
    }

    /// Renders a template rewrite. Parameter values are still percent-encoded path text and go
    /// in as they are; claim values are percent-encoded so they can never add segments.
    pub fn render(template: &Template, vars: &TemplateVars<'_>) -> Result<String, Missing> {
        let mut out = template.render(vars, percent_encoded)?;
        // A template ending in an empty tail can leave `//`; collapse so upstreams see one form.
        while out.contains("//") {
            out = out.replace("//", "/");
        }
        if out.is_empty() {
            out.push('/');
        }
        Ok(out)
    }
}
