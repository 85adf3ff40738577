//! `Accept-Encoding` (RFC 9110 §12.5.3) with q-values: which of our codings a client takes.
//!
//! Pingora's compression module takes the first listed coding and ignores q-values, so the
//! choice is made here; Pingora's streaming encoders still do the work.

use super::Coding;

/// What a request's `Accept-Encoding` allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accepted {
    /// q-value per coding, in [`Coding::ALL`] order (0: not acceptable).
    q: [f32; Coding::ALL.len()],
    /// Whether an uncompressed answer is acceptable (`identity;q=0` or `*;q=0` says no).
    pub identity: bool,
}

impl Accepted {
    /// Reads every `Accept-Encoding` value; `None` when the request has none (then nothing
    /// is compressed: nginx and Envoy do the same, though RFC 9110 allows any coding).
    pub fn parse<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<Self> {
        let mut explicit: [Option<f32>; Coding::ALL.len()] = [None; Coding::ALL.len()];
        let (mut any, mut identity, mut seen) = (None, None, false);
        for value in values {
            seen = true;
            let Ok(text) = std::str::from_utf8(value) else {
                continue;
            };
            for item in text.split(',') {
                let mut parts = item.split(';');
                let name = parts.next().unwrap_or("").trim();
                if name.is_empty() {
                    continue;
                }
                let q = parts.find_map(parse_q).unwrap_or(1.0);
                if name == "*" {
                    any = Some(q);
                } else if name.eq_ignore_ascii_case("identity") {
                    identity = Some(q);
                } else if let Some(c) = Coding::from_token(name) {
                    explicit[c as usize] = Some(q);
                }
            }
        }
        if !seen {
            return None;
        }
        let mut q = [0.0; Coding::ALL.len()];
        for (i, e) in explicit.iter().enumerate() {
            q[i] = e.or(any).unwrap_or(0.0);
        }
        // identity is acceptable unless excluded by name, or by `*;q=0` without naming it.
        let identity = identity
            .or(any.filter(|q| *q == 0.0))
            .is_none_or(|q| q > 0.0);
        Some(Accepted { q, identity })
    }

    /// The coding to use among `preference` (the server's order): the highest q-value, ties
    /// going to the earlier one; `None` when none is acceptable.
    pub fn choose(&self, preference: &[Coding]) -> Option<Coding> {
        let mut best: Option<(Coding, f32)> = None;
        for &c in preference {
            let q = self.q[c as usize];
            if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((c, q));
            }
        }
        best.map(|(c, _)| c)
    }
}

/// `q=0.5` → 0.5; anything else (another parameter, a malformed value) → `None`.
fn parse_q(param: &str) -> Option<f32> {
    let (k, v) = param.split_once('=')?;
    if !k.trim().eq_ignore_ascii_case("q") {
        return None;
    }
    let q: f32 = v.trim().parse().ok()?;
    // RFC 9110's qvalue is 0 to 1; out of range is treated as the nearest bound.
    Some(q.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Coding::*;

    const PREF: &[Coding] = &[Zstd, Brotli, Gzip];

    fn choose(header: &str) -> Option<Coding> {
        Accepted::parse(std::iter::once(header.as_bytes()))?.choose(PREF)
    }

    #[test]
    fn q_values_decide_then_the_server_preference() {
        assert_eq!(
            choose("gzip, deflate, br"),
            Some(Brotli),
            "ties: server order"
        );
        assert_eq!(choose("gzip;q=1.0, br;q=0.5, zstd;q=0.1"), Some(Gzip));
        assert_eq!(choose("GZIP"), Some(Gzip), "case-insensitive");
        assert_eq!(choose("x-gzip"), Some(Gzip), "RFC 9110 alias");
        assert_eq!(choose("br;q=0, gzip"), Some(Gzip));
        assert_eq!(choose("deflate"), None, "nothing we speak");
        assert_eq!(choose(""), None, "an empty value accepts only identity");
    }

    #[test]
    fn star_covers_unnamed_codings_and_zero_excludes() {
        assert_eq!(choose("*"), Some(Zstd));
        assert_eq!(choose("*;q=0.5, gzip"), Some(Gzip));
        assert_eq!(choose("zstd;q=0, *"), Some(Brotli));
        assert_eq!(choose("*;q=0"), None);
    }

    #[test]
    fn identity_is_acceptable_unless_excluded() {
        let parse = |h: &str| Accepted::parse(std::iter::once(h.as_bytes())).unwrap();
        assert!(parse("gzip").identity);
        assert!(!parse("gzip, identity;q=0").identity);
        assert!(!parse("gzip, *;q=0").identity);
        assert!(parse("gzip, *;q=0, identity").identity);
        assert!(Accepted::parse(std::iter::empty()).is_none(), "no header");
    }
}
