//! A JSON object read member by member: only the members an operation touches are parsed into
//! a tree; the others are validated by the parser and copied out as they came.
//!
//! Rewriting a 1 KB answer by parsing it whole into `serde_json::Value` and serializing it
//! again cost the route 38% of its throughput; most transforms touch a few top-level members.
//! serde_json's `RawValue` gives the untouched members' text without building their trees.

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;

/// One top-level member's value.
enum Member<'a> {
    /// As received: valid JSON text, copied out unchanged.
    Raw(&'a RawValue),
    /// Parsed, because an operation reads or writes inside it (or wrote it).
    Parsed(Value),
}

impl Member<'_> {
    fn into_value(self) -> Result<Value, ()> {
        match self {
            Member::Raw(raw) => serde_json::from_str(raw.get()).map_err(|_| ()),
            Member::Parsed(v) => Ok(v),
        }
    }
}

/// A JSON object body: its members in order.
pub(super) struct Members<'a> {
    members: Vec<(Cow<'a, str>, Member<'a>)>,
}

/// Why a body is not a [`Members`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NotMembers {
    /// Not JSON at all (or nested deeper than serde_json allows).
    Invalid,
    /// JSON, but not an object.
    NotAnObject,
}

impl<'a> Members<'a> {
    /// Reads a body. A repeated member keeps its first position and its last value, as
    /// `serde_json::Map` (with `preserve_order`) does.
    pub(super) fn parse(body: &'a [u8]) -> Result<Self, NotMembers> {
        let mut de = serde_json::Deserializer::from_slice(body);
        match Members::deserialize(&mut de).and_then(|m| de.end().map(|()| m)) {
            Ok(m) => Ok(m),
            // Only on the error path: tell "not JSON" from "not an object".
            Err(_) if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() => {
                Err(NotMembers::NotAnObject)
            }
            Err(_) => Err(NotMembers::Invalid),
        }
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.members.iter().position(|(k, _)| k == key)
    }

    /// The parsed value of top-level member `key`, parsing it on first use. With `create`,
    /// a missing member or one that is not an object becomes an empty object.
    fn object_mut(&mut self, key: &str, create: bool) -> Option<&mut Map<String, Value>> {
        let i = match self.position(key) {
            Some(i) => i,
            None if create => {
                self.members.push((
                    Cow::Owned(key.to_string()),
                    Member::Parsed(Map::new().into()),
                ));
                self.members.len() - 1
            }
            None => return None,
        };
        let slot = &mut self.members[i].1;
        if let Member::Raw(raw) = slot {
            *slot = Member::Parsed(serde_json::from_str(raw.get()).ok()?);
        }
        let Member::Parsed(value) = slot else {
            unreachable!("parsed just above")
        };
        if create && !value.is_object() {
            *value = Map::new().into();
        }
        value.as_object_mut()
    }

    /// Removes the value at `path` (a top-level member is dropped unparsed); whether there was
    /// one.
    pub(super) fn remove(&mut self, path: &[String]) -> bool {
        self.take_member(path).is_some()
    }

    fn take_member(&mut self, path: &[String]) -> Option<Member<'a>> {
        match path {
            [key] => {
                let i = self.position(key)?;
                Some(self.members.remove(i).1)
            }
            [key, rest @ ..] => {
                let obj = self.object_mut(key, false)?;
                let parent = nested_parent(obj, rest, false)?;
                parent
                    .shift_remove(&rest[rest.len() - 1])
                    .map(Member::Parsed)
            }
            [] => None,
        }
    }

    /// Moves the value at `from` to `to` (nothing when `from` is absent); a whole top-level
    /// member moved to the top level is not parsed.
    pub(super) fn rename(&mut self, from: &[String], to: &[String]) {
        let Some(member) = self.take_member(from) else {
            return;
        };
        match (to, member) {
            ([key], member) => self.put_member(key, member),
            (_, member) => {
                if let Ok(value) = member.into_value() {
                    self.put(to, value);
                }
            }
        }
    }

    fn put_member(&mut self, key: &str, member: Member<'a>) {
        match self.position(key) {
            Some(i) => self.members[i].1 = member,
            None => self.members.push((Cow::Owned(key.to_string()), member)),
        }
    }

    /// Sets the value at `path`, creating objects on the way.
    pub(super) fn put(&mut self, path: &[String], value: Value) {
        match path {
            [key] => self.put_member(key, Member::Parsed(value)),
            [key, rest @ ..] => {
                if let Some(obj) = self.object_mut(key, true)
                    && let Some(parent) = nested_parent(obj, rest, true)
                {
                    parent.insert(rest[rest.len() - 1].clone(), value);
                }
            }
            [] => {}
        }
    }

    /// Whether `path` holds a value.
    pub(super) fn exists(&mut self, path: &[String]) -> bool {
        match path {
            [key] => self.position(key).is_some(),
            [key, rest @ ..] => self
                .object_mut(key, false)
                .and_then(|obj| nested_parent(obj, rest, false))
                .is_some_and(|p| p.contains_key(&rest[rest.len() - 1])),
            [] => false,
        }
    }

    /// The object as compact JSON; untouched members are copied as they came.
    pub(super) fn to_vec(&self, size_hint: usize) -> Result<Vec<u8>, ()> {
        let mut out = Vec::with_capacity(size_hint + 64);
        out.push(b'{');
        for (i, (key, member)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, key.as_ref()).map_err(|_| ())?;
            out.push(b':');
            match member {
                Member::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
                Member::Parsed(v) => serde_json::to_writer(&mut out, v).map_err(|_| ())?,
            }
        }
        out.push(b'}');
        Ok(out)
    }
}

/// The object holding the last segment of `path` inside `obj`, creating objects if `create`.
fn nested_parent<'m>(
    obj: &'m mut Map<String, Value>,
    path: &[String],
    create: bool,
) -> Option<&'m mut Map<String, Value>> {
    let mut obj = obj;
    for seg in &path[..path.len() - 1] {
        if create && !obj.get(seg).is_some_and(Value::is_object) {
            obj.insert(seg.clone(), Value::Object(Map::new()));
        }
        obj = obj.get_mut(seg)?.as_object_mut()?;
    }
    Some(obj)
}

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Members {
                    members: Vec::with_capacity(m.size_hint().unwrap_or(8)),
                };
                while let Some((Key(key), raw)) = m.next_entry::<Key<'de>, &'de RawValue>()? {
                    match out.position(&key) {
                        Some(i) => out.members[i].1 = Member::Raw(raw),
                        None => out.members.push((key, Member::Raw(raw))),
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A member name, borrowed from the body unless it has escapes (serde's `Cow<str>` would
/// always copy).
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(String::from).collect()
    }

    #[test]
    fn untouched_members_are_copied_as_they_came() {
        let body = br#"{"keep": {"a" : [1, 2.50, "\u00e9"]}, "drop": 1, "n": {"x": 1}}"#;
        let mut doc = Members::parse(body).unwrap();
        assert!(doc.remove(&path("drop")));
        assert!(!doc.remove(&path("n.absent")));
        doc.put(&path("n.y"), Value::Bool(true));
        let out = String::from_utf8(doc.to_vec(body.len()).unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"keep":{"a" : [1, 2.50, "\u00e9"]},"n":{"x":1,"y":true}}"#
        );
    }

    #[test]
    fn repeated_members_keep_first_place_and_last_value() {
        let doc = Members::parse(br#"{"a":1,"b":2,"a":3}"#).unwrap();
        assert_eq!(doc.to_vec(0).unwrap(), br#"{"a":3,"b":2}"#);
    }

    #[test]
    fn escaped_names_and_bad_bodies() {
        let mut doc = Members::parse(br#"{"a\"b":1}"#).unwrap();
        assert!(doc.exists(&path("a\"b")));
        doc.rename(&path("a\"b"), &path("c.d"));
        assert_eq!(doc.to_vec(0).unwrap(), br#"{"c":{"d":1}}"#);
        assert_eq!(Members::parse(b"[1]").err(), Some(NotMembers::NotAnObject));
        assert_eq!(Members::parse(b"{\"a\":").err(), Some(NotMembers::Invalid));
        assert_eq!(Members::parse(b"{} x").err(), Some(NotMembers::Invalid));
    }
}
