//! Where the values of a JSON object's members begin and end, without parsing them.
//!
//! serde_json finds a value's end only by validating all of it, which is most of what a body
//! hook pays when it names a few members of a large body. Members it converts are still
//! parsed (and so checked) by serde_json; the others only need their bounds, and are written
//! back as the upstream sent them, as they would be without a script.

use std::borrow::Cow;

/// The members of the JSON object `text`: each name (unescaped) and its value's text, in
/// order. `None` when the object's structure is broken.
pub fn members(text: &str) -> Option<Vec<(Cow<'_, str>, &str)>> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    let mut out = Vec::new();
    if b.get(i) == Some(&b'}') {
        return (skip_ws(b, i + 1) == b.len()).then_some(out);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(b, i)?;
        let key = &text[i..key_end];
        let key = match key.contains('\\') {
            true => Cow::Owned(serde_json::from_str::<String>(key).ok()?),
            false => Cow::Borrowed(&key[1..key.len() - 1]),
        };
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let value_end = value_end(b, i)?;
        out.push((key, &text[i..value_end]));
        i = skip_ws(b, value_end);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return (skip_ws(b, i + 1) == b.len()).then_some(out),
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The end (exclusive) of the string whose opening quote is at `start`.
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The end (exclusive) of the value starting at `start`: strings by their quotes, objects and
/// arrays by bracket depth (skipping strings), anything else up to a delimiter.
fn value_end(b: &[u8], start: usize) -> Option<usize> {
    match *b.get(start)? {
        b'"' => string_end(b, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while i < b.len() {
                match b[i] {
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let mut i = start;
            while i < b.len() && !matches!(b[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                i += 1;
            }
            (i > start).then_some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_split_at_their_bounds() {
        let text =
            r#" { "a" : {"x": "}\"]", "y": [1, {"z": 2}]}, "b\u0041": [ ], "c":-1.5e3 ,"d":"s"} "#;
        let m = members(text).unwrap();
        let got: Vec<(&str, &str)> = m.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
        assert_eq!(
            got,
            [
                ("a", r#"{"x": "}\"]", "y": [1, {"z": 2}]}"#),
                ("bA", "[ ]"),
                ("c", "-1.5e3"),
                ("d", "\"s\""),
            ]
        );
        assert_eq!(members("{}").unwrap().len(), 0);
        for broken in [
            r#"{"a":1"#,
            r#"{"a" 1}"#,
            r#"{"a":{"b":1}"#,
            r#"{"a":1} x"#,
            r#"{a:1}"#,
            r#"{"a":}"#,
        ] {
            assert!(members(broken).is_none(), "{broken}");
        }
    }
}
