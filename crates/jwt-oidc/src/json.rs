//! A strict JSON reader (RFC 8259) for the two small objects of a compact JWS.
//!
//! Why not serde_json: decoding the header and the claims set through `serde::Deserialize`
//! cost more than half of the time a validation spends outside the signature check (an RS256
//! check is ≈ 11 µs, and the issue's target leaves ≈ 0.6 µs for everything else). This reader
//! walks the text once, borrows every string without escapes, and enforces the nesting limit as
//! it goes, so the separate depth scan is gone too.
//!
//! It accepts exactly the JSON serde_json accepts, minus nesting deeper than [`MAX_DEPTH`]
//! (serde_json allows 128), and [`Reader::value`] builds the [`serde_json::Value`] serde_json
//! would. The differential check in [`crate::fuzzing`] and the `jwt_json` fuzz target hold it
//! to both.
//!
//! Validation reads a claims set once, acting on the registered claims and checking and
//! skipping the rest ([`crate::token::parse_claims`]); `Claims::raw` builds the whole value
//! only when first asked ([`claims_value`]), from the same text with this same reader. A
//! server that never reads `raw()` pays nothing for it; one that does (the policy layer)
//! pays one extra walk over text that is known to be valid, never a second parser with its
//! own rules.

use std::borrow::Cow;

/// Deepest nesting of objects and arrays accepted in a header or claims set.
pub(crate) const MAX_DEPTH: usize = 32;

/// Why a JSON text was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JsonError {
    /// Not JSON.
    Syntax,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Valid JSON, but a member the caller reads has the wrong type.
    WrongType,
    /// A member the caller reads appears twice.
    Duplicate,
}

/// A cursor over one JSON text.
pub(crate) struct Reader<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

/// The first quote, backslash or control character, eight bytes at a time: claim strings are
/// short, and memchr's setup cost and a byte loop were both a visible share of a validation.
#[inline]
fn special_byte(s: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    // `(x - ONES) & !x & HIGH` flags every zero byte of `x` (and `(x - 0x20 * ONES) & !x &
    // HIGH` every byte below 0x20); borrows can only add flags above a real hit, so the
    // lowest flag is exact.
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = s.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let hits = zero_bytes(w ^ (ONES * u64::from(b'"')))
            | zero_bytes(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGH);
        if hits != 0 {
            return Some(offset + (hits.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|p| offset + p)
}

impl<'a> Reader<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self {
            text,
            pos: 0,
            depth: 0,
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// Skips whitespace and returns the next byte without consuming it.
    #[inline]
    pub(crate) fn peek(&mut self) -> Result<u8, JsonError> {
        let bytes = self.bytes();
        while let Some(&b) = bytes.get(self.pos) {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => self.pos += 1,
                _ => return Ok(b),
            }
        }
        Err(JsonError::Syntax)
    }

    fn eat(&mut self, expected: u8) -> Result<(), JsonError> {
        if self.peek()? == expected {
            self.pos += 1;
            Ok(())
        } else {
            Err(JsonError::Syntax)
        }
    }

    /// Only whitespace may follow the top-level value.
    pub(crate) fn finish(&mut self) -> Result<(), JsonError> {
        match self.peek() {
            Err(_) => Ok(()),
            Ok(_) => Err(JsonError::Syntax),
        }
    }

    fn enter(&mut self) -> Result<(), JsonError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err(JsonError::TooDeep)
        } else {
            Ok(())
        }
    }

    /// Consumes `null` if it comes next.
    pub(crate) fn null(&mut self) -> Result<bool, JsonError> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        let end = self.pos + word.len();
        if self.bytes().get(self.pos..end) == Some(word) {
            self.pos = end;
            Ok(())
        } else {
            Err(JsonError::Syntax)
        }
    }

    /// Walks an object: `member` gets each name and must consume the value.
    pub(crate) fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, Cow<'a, str>) -> Result<(), JsonError>,
    ) -> Result<(), JsonError> {
        if self.peek()? != b'{' {
            return self.wrong_type();
        }
        self.pos += 1;
        self.enter()?;
        if self.peek()? == b'}' {
            self.pos += 1;
        } else {
            loop {
                if self.peek()? != b'"' {
                    return Err(JsonError::Syntax);
                }
                let name = self.string()?;
                self.eat(b':')?;
                member(self, name)?;
                match self.peek()? {
                    b',' => self.pos += 1,
                    b'}' => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(JsonError::Syntax),
                }
            }
        }
        self.depth -= 1;
        Ok(())
    }

    /// Walks an array: `item` must consume each element.
    pub(crate) fn array(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), JsonError>,
    ) -> Result<(), JsonError> {
        if self.peek()? != b'[' {
            return self.wrong_type();
        }
        self.pos += 1;
        self.enter()?;
        if self.peek()? == b']' {
            self.pos += 1;
        } else {
            loop {
                item(self)?;
                match self.peek()? {
                    b',' => self.pos += 1,
                    b']' => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(JsonError::Syntax),
                }
            }
        }
        self.depth -= 1;
        Ok(())
    }

    /// A value of the wrong type is only reported as such when it is valid JSON: a syntax
    /// error further on must win, as it does in serde_json.
    fn wrong_type<T>(&mut self) -> Result<T, JsonError> {
        self.skip_value()?;
        Err(JsonError::WrongType)
    }

    /// A string, borrowed from the text unless it has escapes.
    #[inline]
    pub(crate) fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        let bytes = self.bytes();
        // Compact JSON has no whitespace before a string; `peek` only when there is some.
        if bytes.get(self.pos) != Some(&b'"') && self.peek()? != b'"' {
            return self.wrong_type();
        }
        let start = self.pos + 1;
        let rest = bytes.get(start..).unwrap_or_default();
        let end = special_byte(rest).ok_or(JsonError::Syntax)?;
        self.pos = start + end;
        match rest.get(end) {
            Some(b'"') => {
                let s = self.text.get(start..self.pos).ok_or(JsonError::Syntax)?;
                self.pos += 1;
                return Ok(Cow::Borrowed(s));
            }
            Some(b'\\') => {}
            // Control characters must be escaped.
            _ => return Err(JsonError::Syntax),
        }
        self.escaped_string(start)
    }

    /// The rest of a string with escapes, from `start` (the backslash is at `self.pos`).
    #[cold]
    fn escaped_string(&mut self, start: usize) -> Result<Cow<'a, str>, JsonError> {
        let bytes = self.bytes();
        let mut out = String::with_capacity(self.pos - start + 16);
        out.push_str(self.text.get(start..self.pos).ok_or(JsonError::Syntax)?);
        loop {
            match bytes.get(self.pos) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    let escape = bytes.get(self.pos + 1).ok_or(JsonError::Syntax)?;
                    self.pos += 2;
                    out.push(match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(JsonError::Syntax),
                    });
                }
                Some(0..=0x1f) | None => return Err(JsonError::Syntax),
                Some(_) => {
                    // A run of plain characters; it ends on an ASCII byte, so on a boundary.
                    let run = self.pos;
                    while bytes
                        .get(self.pos)
                        .is_some_and(|&b| b != b'"' && b != b'\\' && b > 0x1f)
                    {
                        self.pos += 1;
                    }
                    out.push_str(self.text.get(run..self.pos).ok_or(JsonError::Syntax)?);
                }
            }
        }
    }

    /// The four hex digits after `\u`, and a low surrogate after a high one; lone surrogates
    /// are refused (as serde_json does).
    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let high = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&high) {
            if self.bytes().get(self.pos..self.pos + 2) != Some(b"\\u") {
                return Err(JsonError::Syntax);
            }
            self.pos += 2;
            let low = self.hex4()?;
            if !(0xDC00..0xE000).contains(&low) {
                return Err(JsonError::Syntax);
            }
            0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
        } else {
            high
        };
        char::from_u32(code).ok_or(JsonError::Syntax)
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .bytes()
            .get(self.pos..self.pos + 4)
            .ok_or(JsonError::Syntax)?;
        let mut value = 0u32;
        for &d in digits {
            let nibble = char::from(d).to_digit(16).ok_or(JsonError::Syntax)?;
            value = value << 4 | nibble;
        }
        self.pos += 4;
        Ok(value)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.bytes().get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// A number's text, checked against the JSON grammar, and its value when it is a plain
    /// non-negative integer that fits in a u64 (every NumericDate in practice).
    fn number(&mut self) -> Result<(&'a str, Option<u64>), JsonError> {
        let start = self.pos;
        let bytes = self.bytes();
        let negative = bytes.get(self.pos) == Some(&b'-');
        let integer_start = self.pos + usize::from(negative);
        // A local cursor and wrapping arithmetic: exact for up to 19 digits, which is all a
        // u64 date can need; longer integers are re-read below.
        let (mut i, mut value) = (integer_start, 0u64);
        while let Some(&d) = bytes.get(i) {
            if !d.is_ascii_digit() {
                break;
            }
            value = value.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            i += 1;
        }
        let integer_digits = i - integer_start;
        match bytes.get(integer_start) {
            // A leading zero stands alone ("01" is not JSON).
            Some(b'0') if integer_digits > 1 => return Err(JsonError::Syntax),
            Some(b'0'..=b'9') => {}
            _ => return Err(JsonError::Syntax),
        }
        self.pos = i;
        let mut value = Some(value).filter(|_| integer_digits <= 19);
        let mut float = false;
        if bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            float = true;
            if self.digits() == 0 {
                return Err(JsonError::Syntax);
            }
        }
        if matches!(bytes.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            float = true;
            if matches!(bytes.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(JsonError::Syntax);
            }
        }
        let text = self.text.get(start..self.pos).ok_or(JsonError::Syntax)?;
        // serde_json reads what is not a 64-bit integer as f64 and refuses it when that
        // overflows; `Claims::raw` must not meet a number it cannot read.
        if (float || integer_digits > 18) && text.parse::<f64>().map_or(true, f64::is_infinite) {
            return Err(JsonError::Syntax);
        }
        if integer_digits > 19 && !float {
            value = text.parse::<u64>().ok();
        }
        Ok((text, value.filter(|_| !negative && !float)))
    }

    /// A NumericDate (RFC 7519 §2): seconds since the epoch. Fractions are truncated;
    /// negative, non-finite and absurdly large values are refused.
    pub(crate) fn numeric_date(&mut self) -> Result<u64, JsonError> {
        if !matches!(self.peek()?, b'-' | b'0'..=b'9') {
            return self.wrong_type();
        }
        let (text, value) = self.number()?;
        if let Some(v) = value {
            return Ok(v);
        }
        if !text.contains(['.', 'e', 'E'])
            && let Ok(v) = text.parse::<i64>()
        {
            // "-0" is zero; every other negative date is refused.
            return u64::try_from(v).map_err(|_| JsonError::WrongType);
        }
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() && (0.0..9.0e15).contains(&v) =>
            {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok(v.trunc() as u64)
            }
            _ => Err(JsonError::WrongType),
        }
    }

    pub(crate) fn boolean(&mut self) -> Result<bool, JsonError> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|()| true),
            b'f' => self.literal(b"false").map(|()| false),
            _ => self.wrong_type(),
        }
    }

    /// Reads any value into a [`serde_json::Value`], as `serde_json::from_str` would: objects
    /// keep the last of duplicate members, integers that fit are `u64`/`i64`, everything else
    /// (and `-0`) is `f64`. [`crate::Claims::raw`] is built with it ([`claims_value`]).
    pub(crate) fn value(&mut self) -> Result<serde_json::Value, JsonError> {
        use serde_json::Value;
        Ok(match self.peek()? {
            b'"' => Value::String(self.string()?.into_owned()),
            b'{' => {
                let mut map = serde_json::Map::new();
                self.object(|r, name| {
                    let value = r.value()?;
                    map.insert(name.into_owned(), value);
                    Ok(())
                })?;
                Value::Object(map)
            }
            b'[' => {
                let mut items = Vec::new();
                self.array(|r| {
                    items.push(r.value()?);
                    Ok(())
                })?;
                Value::Array(items)
            }
            b't' => self.literal(b"true").map(|()| Value::Bool(true))?,
            b'f' => self.literal(b"false").map(|()| Value::Bool(false))?,
            b'n' => self.literal(b"null").map(|()| Value::Null)?,
            b'-' | b'0'..=b'9' => Value::Number(self.number_value()?),
            _ => return Err(JsonError::Syntax),
        })
    }

    fn number_value(&mut self) -> Result<serde_json::Number, JsonError> {
        let (text, value) = self.number()?;
        if let Some(v) = value {
            return Ok(v.into());
        }
        if text.starts_with('-')
            && !text.contains(['.', 'e', 'E'])
            && let Ok(v) = text.parse::<i64>()
            && v != 0
        {
            return Ok(v.into());
        }
        // `number` refused what does not parse to a finite f64.
        text.parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .ok_or(JsonError::Syntax)
    }

    /// Checks and skips any value.
    pub(crate) fn skip_value(&mut self) -> Result<(), JsonError> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(|r, _| r.skip_value()),
            b'[' => self.array(Self::skip_value),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            _ => Err(JsonError::Syntax),
        }
    }
}

/// The whole claims set as a [`serde_json::Value`], for [`crate::Claims::raw`]: the text that
/// [`crate::token::parse_claims`] accepted, read again by the same reader, so the same rules
/// (syntax, nesting limit, numbers) hold for everything the value exposes. A text that
/// `parse_claims` accepted always reads (both walks apply the same checks); should that ever
/// fail, the value is an empty object (fail closed: no claim is exposed).
pub(crate) fn claims_value(text: &str) -> serde_json::Value {
    let mut r = Reader::new(text);
    match r.value() {
        Ok(value @ serde_json::Value::Object(_)) if r.finish().is_ok() => value,
        _ => serde_json::Value::Object(serde_json::Map::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip(text: &str) -> Result<(), JsonError> {
        let mut r = Reader::new(text);
        r.skip_value()?;
        r.finish()
    }

    fn string(text: &str) -> Result<Cow<'_, str>, JsonError> {
        let mut r = Reader::new(text);
        let s = r.string()?;
        r.finish()?;
        Ok(s)
    }

    #[test]
    fn accepts_what_rfc_8259_allows() {
        for ok in [
            "{}",
            " [ ] ",
            r#"{"a":[1,-0,0.5,1e5,1E+5,-1.5e-3,true,false,null,"x",{"b":{}}]}"#,
            "\t\r\n\"\"",
            "12345678901234567890123",
        ] {
            assert_eq!(skip(ok), Ok(()), "{ok}");
            assert!(
                serde_json::from_str::<serde_json::Value>(ok).is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn refuses_what_rfc_8259_does_not() {
        for bad in [
            "",
            "{",
            "}",
            "[1,]",
            "{\"a\":1,}",
            "{a:1}",
            "{'a':1}",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "0x10",
            "tru",
            "nul",
            "NaN",
            "Infinity",
            "[1 2]",
            "{\"a\" 1}",
            "\"\u{1}\"",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "\"abc",
            "{} {}",
            "[]]",
            "\u{feff}{}",
        ] {
            assert_eq!(skip(bad).err().map(|_| ()), Some(()), "{bad:?}");
            assert!(
                serde_json::from_str::<serde_json::Value>(bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        assert!(matches!(
            string(r#""plain é""#),
            Ok(Cow::Borrowed("plain é"))
        ));
        assert_eq!(
            string(r#""a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00""#).unwrap(),
            "a\"b\\c/d\u{8}\u{c}\n\r\té😀"
        );
        assert!(matches!(string(r#""\u0041""#), Ok(Cow::Owned(s)) if s == "A"));
    }

    #[test]
    fn special_byte_finds_the_first_quote_backslash_or_control_character() {
        for len in 0..40 {
            for at in 0..len {
                for special in [b'"', b'\\', 0, 0x1f] {
                    // Neighbours that trip naive zero-byte tricks: 0x01, 0x20, 0x21, 0x5d, 0xff.
                    let mut s: Vec<u8> = (0..len)
                        .map(|i| [b'a', 0x20, 0x21, 0x5d, 0xff, 0x23][i % 6])
                        .collect();
                    s[at] = special;
                    if at + 1 < len {
                        s[at + 1] = b'"';
                    }
                    assert_eq!(special_byte(&s), Some(at), "{s:?}");
                }
            }
            let plain: Vec<u8> = (0..len)
                .map(|i| [b'a', 0x20, 0x21, 0x5d, 0xff, 0x80][i % 6])
                .collect();
            assert_eq!(special_byte(&plain), None);
        }
    }

    #[test]
    fn nesting_is_limited_outside_strings_only() {
        let at_limit = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(skip(&at_limit), Ok(()));
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(40), "]".repeat(40));
        assert_eq!(skip(&deep), Err(JsonError::TooDeep));
        let in_string = format!("{{\"a\":\"{}\"}}", "[".repeat(400));
        assert_eq!(skip(&in_string), Ok(()));
        let wide = format!("[{}]", vec!["[]"; 1000].join(","));
        assert_eq!(skip(&wide), Ok(()));
    }

    #[test]
    fn values_are_what_serde_json_reads() {
        let text = r#"{"u":18446744073709551615,"big":18446744073709551616,"i":-5,"z":-0,"f":1.5e3,"s":"a\u00e9","d":1,"d":[true,null],"o":{}}"#;
        let mut r = Reader::new(text);
        let ours = r.value().unwrap();
        r.finish().unwrap();
        let theirs: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(ours, theirs);
        assert!(ours["z"].is_f64() && ours["big"].is_f64() && ours["i"].is_i64());
        assert_eq!(ours["d"], serde_json::json!([true, null]));
        assert_eq!(Reader::new("[1,]").value(), Err(JsonError::Syntax));
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        assert_eq!(Reader::new(&deep).value(), Err(JsonError::TooDeep));
    }

    #[test]
    fn numeric_dates() {
        let date = |t: &str| Reader::new(t).numeric_date();
        assert_eq!(date("1700000000"), Ok(1_700_000_000));
        assert_eq!(date("1.9e9"), Ok(1_900_000_000));
        assert_eq!(date("1700000000.99"), Ok(1_700_000_000));
        assert_eq!(date("-0"), Ok(0));
        assert_eq!(date("-1"), Err(JsonError::WrongType));
        assert_eq!(date("-0.5"), Err(JsonError::WrongType));
        assert_eq!(date("1e300"), Err(JsonError::WrongType));
        assert_eq!(date("1e400"), Err(JsonError::Syntax));
        assert_eq!(date("99999999999999999999"), Err(JsonError::WrongType));
        assert_eq!(date("\"tomorrow\""), Err(JsonError::WrongType));
        assert_eq!(date("\"unterminated"), Err(JsonError::Syntax));
    }
}
