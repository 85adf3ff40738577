//! JSON bodies to script values and back.
//!
//! Written here rather than through Rhai's own serde support: building the values directly
//! from serde_json's borrowed keys and strings, and writing them back in one pass that also
//! refuses anything that is not data, costs about half as much per body (bench/script.sh).

use rhai::{Array, Dynamic, ImmutableString, Map};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Serialize, SerializeMap, SerializeSeq, Serializer};
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
pub struct RawJson(Box<serde_json::value::RawValue>);

/// Parses a JSON object body converting only the members in `named` (and scalar members, which
/// cost nothing to convert); other objects and arrays stay as [`RawJson`]. A body that is not
/// an object is parsed whole.
pub fn parse_members(body: &[u8], named: &HashSet<String>) -> Result<Dynamic, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError)?;
    if !text.trim_start().starts_with('{') {
        return parse(body);
    }
    let members: Vec<(Key<'_>, &serde_json::value::RawValue)> =
        serde_json::from_str::<RawMembers<'_>>(text)
            .map_err(|_| ParseError)?
            .0;
    let mut map = Map::new();
    for (key, raw) in members {
        let text = raw.get();
        let nested = text.starts_with('{') || text.starts_with('[');
        let value = if nested && !named.contains(key.as_str()) {
            Dynamic::from(RawJson(raw.to_owned()))
        } else {
            serde_json::from_str::<Value>(text)
                .map_err(|_| ParseError)?
                .0
        };
        map.insert(key.as_str().into(), value);
    }
    Ok(Dynamic::from_map(map))
}

/// A JSON object's members in order, their values unparsed.
struct RawMembers<'de>(Vec<(Key<'de>, &'de serde_json::value::RawValue)>);

impl<'de> Deserialize<'de> for RawMembers<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = RawMembers<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(key) = access.next_key::<Key<'de>>()? {
                    members.push((key, access.next_value()?));
                }
                Ok(RawMembers(members))
            }
        }
        d.deserialize_map(MembersVisitor)
    }
}

/// Writes a script value as JSON; `None` when it holds something that is not data (a
/// request, a response, a function).
pub fn write(value: &Dynamic) -> Option<Vec<u8>> {
    serde_json::to_vec(&Data(value)).ok()
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

/// A script value serialized as JSON, refusing what is not data.
struct Data<'a>(&'a Dynamic);

impl Serialize for Data<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        // The commonest kinds first; each check is a tag compare.
        if v.is_string() {
            if let Ok(text) = v.as_immutable_string_ref() {
                return s.serialize_str(text.as_str());
            }
        } else if v.is_map() {
            if let Some(map) = v.read_lock::<Map>() {
                let mut out = s.serialize_map(Some(map.len()))?;
                for (key, value) in map.iter() {
                    out.serialize_entry(key.as_str(), &Data(value))?;
                }
                return out.end();
            }
        } else if v.is_array() {
            if let Some(array) = v.read_lock::<Array>() {
                let mut out = s.serialize_seq(Some(array.len()))?;
                for value in array.iter() {
                    out.serialize_element(&Data(value))?;
                }
                return out.end();
            }
        } else if let Ok(i) = v.as_int() {
            return s.serialize_i64(i);
        } else if let Ok(f) = v.as_float() {
            return s.serialize_f64(f);
        } else if let Ok(b) = v.as_bool() {
            return s.serialize_bool(b);
        } else if v.is_unit() {
            return s.serialize_unit();
        } else if let Ok(c) = v.as_char() {
            return s.serialize_char(c);
        } else if v.is_shared() {
            return Data(&v.flatten_clone()).serialize(s);
        } else if let Some(raw) = v.read_lock::<RawJson>() {
            return raw.0.serialize(s);
        }
        Err(ser::Error::custom(format!("{} is not data", v.type_name())))
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
