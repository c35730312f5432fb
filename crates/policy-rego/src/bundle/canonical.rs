//! The byte form OPA hashes for structured bundle files (`data.json`, `data.yaml`,
//! `.manifest`) when it checks a bundle signature.
//!
//! OPA parses the file (keeping numbers as written), then writes it back compactly with object
//! keys in byte order and strings escaped the way Go's `encoding/json` does with HTML escaping
//! off. Hashing that form makes the digest independent of whitespace and key order. This module
//! reproduces it with a small parser so number literals keep their exact text (`1.50` stays
//! `1.50`), which a round trip through `serde_json::Value` would not guarantee.

/// Nesting deeper than this is refused (keeps recursion bounded on hostile input).
const MAX_DEPTH: usize = 256;

/// Writes the canonical form of the JSON text `src` into `out`.
pub(crate) fn canonical_json(src: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut p = Parser { src, pos: 0 };
    p.skip_ws();
    let node = p.value(0)?;
    p.skip_ws();
    if p.pos != src.len() {
        return Err(format!("trailing characters at byte {}", p.pos));
    }
    write_node(&node, out);
    Ok(())
}

/// Writes the canonical form of an already parsed value (used for YAML data files, which OPA
/// converts to JSON before hashing).
pub(crate) fn canonical_value(v: &serde_json::Value, out: &mut Vec<u8>) {
    match v {
        serde_json::Value::Null => out.extend_from_slice(b"null"),
        serde_json::Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        serde_json::Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        serde_json::Value::String(s) => write_go_string(s, out),
        serde_json::Value::Array(a) => {
            out.push(b'[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_value(e, out);
            }
            out.push(b']');
        }
        serde_json::Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_go_string(k, out);
                out.push(b':');
                if let Some(v) = o.get(k) {
                    canonical_value(v, out);
                }
            }
            out.push(b'}');
        }
    }
}

enum Node {
    Lit(&'static [u8]),
    Num(String),
    Str(String),
    Arr(Vec<Node>),
    Obj(Vec<(String, Node)>),
}

fn write_node(n: &Node, out: &mut Vec<u8>) {
    match n {
        Node::Lit(l) => out.extend_from_slice(l),
        Node::Num(s) => out.extend_from_slice(s.as_bytes()),
        Node::Str(s) => write_go_string(s, out),
        Node::Arr(a) => {
            out.push(b'[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_node(e, out);
            }
            out.push(b']');
        }
        Node::Obj(o) => {
            out.push(b'{');
            for (i, (k, v)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_go_string(k, out);
                out.push(b':');
                write_node(v, out);
            }
            out.push(b'}');
        }
    }
}

/// Go `encoding/json` string escaping with `SetEscapeHTML(false)`.
fn write_go_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                let b = c as u32 as usize;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) & 0xf]);
                out.push(HEX[b & 0xf]);
            }
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn err(&self, what: &str) -> String {
        format!("{what} at byte {}", self.pos)
    }

    fn expect_lit(&mut self, lit: &'static [u8]) -> Result<Node, String> {
        if self.src.get(self.pos..self.pos + lit.len()) == Some(lit) {
            self.pos += lit.len();
            Ok(Node::Lit(lit))
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        match self.peek() {
            Some(b'n') => self.expect_lit(b"null"),
            Some(b't') => self.expect_lit(b"true"),
            Some(b'f') => self.expect_lit(b"false"),
            Some(b'"') => Ok(Node::Str(self.string()?)),
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                self.skip_ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(Node::Arr(items));
                }
                loop {
                    self.skip_ws();
                    items.push(self.value(depth + 1)?);
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Node::Arr(items));
                        }
                        _ => return Err(self.err("expected ',' or ']'")),
                    }
                }
            }
            Some(b'{') => {
                self.pos += 1;
                let mut entries: Vec<(String, Node)> = Vec::new();
                self.skip_ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(Node::Obj(entries));
                }
                loop {
                    self.skip_ws();
                    if self.peek() != Some(b'"') {
                        return Err(self.err("expected object key"));
                    }
                    let k = self.string()?;
                    self.skip_ws();
                    if self.peek() != Some(b':') {
                        return Err(self.err("expected ':'"));
                    }
                    self.pos += 1;
                    self.skip_ws();
                    let v = self.value(depth + 1)?;
                    entries.push((k, v));
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            break;
                        }
                        _ => return Err(self.err("expected ',' or '}'")),
                    }
                }
                // Go decodes into a map: the last duplicate wins; keys are then sorted.
                let mut dedup: Vec<(String, Node)> = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    if let Some(slot) = dedup.iter_mut().find(|(dk, _)| *dk == k) {
                        slot.1 = v;
                    } else {
                        dedup.push((k, v));
                    }
                }
                dedup.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(Node::Obj(dedup))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.err("unexpected character")),
        }
    }

    fn number(&mut self) -> Result<Node, String> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.pos += 1;
                }
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("invalid number"));
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.pos += 1;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("invalid number"));
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.pos += 1;
            }
        }
        let text = self.src.get(start..self.pos).unwrap_or_default();
        Ok(Node::Num(String::from_utf8_lossy(text).into_owned()))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.err("invalid \\u escape")),
            };
            v = v * 16 + u32::from(d);
            self.pos += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, String> {
        // Opening quote.
        self.pos += 1;
        let mut bytes: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err("unterminated string"));
            };
            self.pos += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.pos += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            if (0xD800..0xDC00).contains(&hi) {
                                // A surrogate pair, if the low half follows.
                                let save = self.pos;
                                if self.src.get(self.pos..self.pos + 2) == Some(b"\\u") {
                                    self.pos += 2;
                                    let lo = self.hex4()?;
                                    if (0xDC00..0xE000).contains(&lo) {
                                        let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                                        char::from_u32(cp).unwrap_or('\u{fffd}')
                                    } else {
                                        self.pos = save;
                                        '\u{fffd}'
                                    }
                                } else {
                                    '\u{fffd}'
                                }
                            } else {
                                char::from_u32(hi).unwrap_or('\u{fffd}')
                            }
                        }
                        _ => return Err(self.err("invalid escape")),
                    };
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                c if c < 0x20 => return Err(self.err("control character in string")),
                c => bytes.push(c),
            }
        }
        // Go replaces invalid UTF-8 with U+FFFD when it encodes.
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        let mut out = Vec::new();
        canonical_json(s.as_bytes(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn sorts_keys_and_drops_whitespace() {
        assert_eq!(
            canon(r#" { "b" : [1, 2.50, -3e+2], "a": {"y": null, "x": true} } "#),
            r#"{"a":{"x":true,"y":null},"b":[1,2.50,-3e+2]}"#
        );
    }

    #[test]
    fn escapes_like_go_without_html_escaping() {
        assert_eq!(
            canon(r#"["<a>&", "\u0001\b\f\n\t\"\\", "\u2028", "é\/"]"#),
            "[\"<a>&\",\"\\u0001\\b\\f\\n\\t\\\"\\\\\",\"\\u2028\",\"é/\"]"
        );
    }

    #[test]
    fn last_duplicate_key_wins() {
        assert_eq!(canon(r#"{"a":1,"a":2}"#), r#"{"a":2}"#);
    }

    #[test]
    fn rejects_malformed_and_deep_input() {
        let mut out = Vec::new();
        assert!(canonical_json(b"{\"a\":}", &mut out).is_err());
        assert!(canonical_json(b"[1] x", &mut out).is_err());
        let deep = "[".repeat(MAX_DEPTH + 2);
        assert!(canonical_json(deep.as_bytes(), &mut out).is_err());
    }

    #[test]
    fn value_form_matches_text_form() {
        let text = r#"{"z":[true,"x\ny"],"a":{"k":"v"}}"#;
        let mut a = Vec::new();
        canonical_json(text.as_bytes(), &mut a).unwrap();
        let mut b = Vec::new();
        canonical_value(&serde_json::from_str(text).unwrap(), &mut b);
        assert_eq!(a, b);
    }
}
