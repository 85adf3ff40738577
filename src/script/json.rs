//! JSON bodies to script values and back.
//!
//! Written here rather than through Rhai's own serde support: building the values directly
//! from serde_json's borrowed keys and strings costs about half as much per body, and a body
//! hook that names only some members gets the others as raw text, found by a structural scan
//! (`scan.rs`) and written back as they came (bench/README.md, "Route scripts").

use rhai::{Array, Dynamic, ImmutableString, Map};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;
use std::fmt;

/// Parses a JSON text into a script value: objects become maps, arrays arrays, numbers
/// integers (when they fit) or floats, `null` becomes `()`.
pub fn parse(body: &[u8]) -> Result<Dynamic, ParseError> {
    // One UTF-8 check of the whole body: serde_json then skips it string by string.
    let text = std::str::from_utf8(body).map_err(|_| ParseError)?;
    serde_json::from_str::<Value>(text)
        .map(|v| v.0)
        .map_err(|_| ParseError)
}

/// A body that is not JSON.
#[derive(Debug)]
pub struct ParseError;

/// A member of a JSON body that the script never names, kept as the text it came as: it
/// cannot be reached from the script (see `members::named`) and is written back verbatim.
#[derive(Clone)]
pub struct RawJson(Box<str>);

/// Parses a JSON object body converting only the members in `named` (and scalar members, which
/// cost nothing to convert); other objects and arrays stay as [`RawJson`]. A body that is not
/// an object is parsed whole.
pub fn parse_members(body: &[u8], named: &HashSet<String>) -> Result<Dynamic, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError)?;
    if !text.trim_start().starts_with('{') {
        return parse(body);
    }
    let mut map = Map::new();
    for (key, raw) in super::scan::members(text).ok_or(ParseError)? {
        let nested = raw.starts_with('{') || raw.starts_with('[');
        let value = if nested && !named.contains(&*key) {
            Dynamic::from(RawJson(raw.into()))
        } else {
            serde_json::from_str::<Value>(raw)
                .map_err(|_| ParseError)?
                .0
        };
        map.insert(key.as_ref().into(), value);
    }
    Ok(Dynamic::from_map(map))
}

/// Writes a script value as JSON; `None` when it holds something that is not data (a
/// request, a response, a function). Raw members are copied as they came.
pub fn write(value: &Dynamic) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    write_value(value, &mut out)?;
    Some(out)
}

fn write_value(v: &Dynamic, out: &mut Vec<u8>) -> Option<()> {
    // The commonest kinds first; each check is a tag compare.
    if v.is_string() {
        let text = v.as_immutable_string_ref().ok()?;
        serde_json::to_writer(&mut *out, text.as_str()).ok()?;
    } else if v.is_map() {
        let map = v.read_lock::<Map>()?;
        out.push(b'{');
        for (i, (key, value)) in map.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, key.as_str()).ok()?;
            out.push(b':');
            write_value(value, out)?;
        }
        out.push(b'}');
    } else if v.is_array() {
        let array = v.read_lock::<Array>()?;
        out.push(b'[');
        for (i, value) in array.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_value(value, out)?;
        }
        out.push(b']');
    } else if let Ok(i) = v.as_int() {
        serde_json::to_writer(&mut *out, &i).ok()?;
    } else if let Ok(f) = v.as_float() {
        serde_json::to_writer(&mut *out, &f).ok()?;
    } else if let Ok(b) = v.as_bool() {
        out.extend_from_slice(if b { b"true" } else { b"false" });
    } else if v.is_unit() {
        out.extend_from_slice(b"null");
    } else if let Ok(c) = v.as_char() {
        serde_json::to_writer(&mut *out, &c).ok()?;
    } else if v.is_shared() {
        write_value(&v.flatten_clone(), out)?;
    } else {
        out.extend_from_slice(v.read_lock::<RawJson>()?.0.as_bytes());
    }
    Some(())
}

struct Value(Dynamic);

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor).map(Value)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Dynamic;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Dynamic, E> {
        Ok(Dynamic::UNIT)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Dynamic, E> {
        Ok(Dynamic::from_bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dynamic, E> {
        Ok(Dynamic::from_int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dynamic, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Dynamic::from_int(i),
            Err(_) => Dynamic::from_float(v as f64),
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dynamic, E> {
        Ok(Dynamic::from_float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Dynamic, E> {
        Ok(Dynamic::from(ImmutableString::from(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dynamic, A::Error> {
        let mut array = Array::with_capacity(seq.size_hint().unwrap_or(4));
        while let Some(Value(v)) = seq.next_element()? {
            array.push(v);
        }
        Ok(Dynamic::from_array(array))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Dynamic, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<Key<'de>>()? {
            let Value(v) = access.next_value()?;
            map.insert(key.as_str().into(), v);
        }
        Ok(Dynamic::from_map(map))
    }
}

/// A member name, borrowed from the body unless it had escapes.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(v.to_string()))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let text = br#"{"a":[1,-2,3.5,"x\"y",true,null],"b":{"c":{}},"big":18446744073709551615,"e\u0041":"\u00e9"}"#;
        let v = parse(text).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&write(&v).unwrap()).unwrap();
        let want: serde_json::Value = serde_json::from_slice(text).unwrap();
        assert_eq!(back["a"], want["a"]);
        assert_eq!(back["b"], want["b"]);
        assert_eq!(back["eA"], "é");
        assert_eq!(back["big"].as_f64(), Some(18446744073709551615.0));
    }

    #[test]
    fn unnamed_nested_members_are_kept_verbatim() {
        let text = br#"{"keep":{"deep":[1, 2.50, "x"]},"touch":{"a":1},"n":5,"list":[{"z":1}]}"#;
        let named: HashSet<String> = ["touch".to_string()].into();
        let v = parse_members(text, &named).unwrap();
        let map = v.read_lock::<Map>().unwrap();
        assert!(map["keep"].is::<RawJson>() && map["list"].is::<RawJson>());
        assert!(map["touch"].is_map() && map["n"].is_int());
        drop(map);
        let out = String::from_utf8(write(&v).unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"keep":{"deep":[1, 2.50, "x"]},"list":[{"z":1}],"n":5,"touch":{"a":1}}"#
        );
        assert!(parse_members(b"{\"a\":", &named).is_err());
        assert!(parse_members(b"[1,2]", &named).unwrap().is_array());
    }

    #[test]
    fn custom_values_are_not_data() {
        #[derive(Clone)]
        struct Opaque;
        let mut map = Map::new();
        map.insert("x".into(), Dynamic::from(Opaque));
        assert!(write(&Dynamic::from_map(map)).is_none());
        assert!(write(&Dynamic::from(Opaque)).is_none());
    }
}
