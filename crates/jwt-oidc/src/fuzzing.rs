//! Differential checks of the crate's own JSON reader against serde_json, for the `jwt_json`
//! fuzz target and the unit tests. Not a stable API: enabled by the `fuzzing` feature.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::json::{JsonError, MAX_DEPTH, Reader};
use crate::token::{self, StrList};

/// A JSON value as serde_json reads it, keeping duplicate object members in order.
#[derive(Debug)]
enum Tree {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(String),
    Arr(Vec<Tree>),
    Obj(Vec<(String, Tree)>),
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tree;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Tree, E> {
                Ok(Tree::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Tree, E> {
                Ok(Tree::Bool(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Tree, E> {
                Ok(Tree::U64(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Tree, E> {
                Ok(Tree::I64(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Tree, E> {
                Ok(Tree::F64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Tree, E> {
                Ok(Tree::Str(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Tree::Arr(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Tree::Obj(members))
            }
        }
        d.deserialize_any(V)
    }
}

impl Tree {
    fn depth(&self) -> usize {
        match self {
            Tree::Arr(items) => 1 + items.iter().map(Tree::depth).max().unwrap_or(0),
            Tree::Obj(members) => 1 + members.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// The member `name` as the validator reads it: `Ok(None)` when absent or null,
    /// `Err(())` when it appears twice.
    fn member(&self, name: &str) -> Result<Option<&Tree>, ()> {
        let Tree::Obj(members) = self else {
            return Err(());
        };
        let mut found = members.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
        match (found.next(), found.next()) {
            (_, Some(_)) => Err(()),
            (Some(Tree::Null) | None, None) => Ok(None),
            (Some(v), None) => Ok(Some(v)),
        }
    }

    fn string(&self) -> Result<&str, ()> {
        match self {
            Tree::Str(s) => Ok(s),
            _ => Err(()),
        }
    }

    fn strings(&self) -> Result<Vec<&str>, ()> {
        match self {
            Tree::Str(s) => Ok(vec![s]),
            Tree::Arr(items) => items.iter().map(Tree::string).collect(),
            _ => Err(()),
        }
    }

    /// A NumericDate, and whether it came from a fraction or exponent (serde_json may round
    /// those one unit in the last place differently from `str::parse`).
    fn date(&self) -> Result<(u64, bool), ()> {
        match *self {
            Tree::U64(v) => Ok((v, false)),
            Tree::I64(v) => u64::try_from(v).map(|v| (v, false)).map_err(drop),
            Tree::F64(v) if v.is_finite() && (0.0..9.0e15).contains(&v) =>
            {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok((v.trunc() as u64, true))
            }
            _ => Err(()),
        }
    }
}

fn opt<'t, T>(
    tree: &'t Tree,
    name: &str,
    read: impl Fn(&'t Tree) -> Result<T, ()>,
) -> Result<Option<T>, ()> {
    tree.member(name)?.map(read).transpose()
}

/// What serde_json says the claims parser must return.
#[derive(Debug, PartialEq)]
struct ClaimsView {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Vec<String>>,
    dates: [Option<(u64, bool)>; 3],
    scope: Option<String>,
    scp: Option<Vec<String>>,
    cnf: Option<(Option<String>, bool)>,
    client_id: Option<String>,
}

fn expected_claims(tree: &Tree) -> Result<ClaimsView, ()> {
    let owned = |s: &str| s.to_owned();
    let list = |t: &Tree| t.strings().map(|v| v.into_iter().map(owned).collect());
    Ok(ClaimsView {
        iss: opt(tree, "iss", Tree::string)?.map(owned),
        sub: opt(tree, "sub", Tree::string)?.map(owned),
        aud: opt(tree, "aud", list)?,
        dates: [
            opt(tree, "exp", Tree::date)?,
            opt(tree, "nbf", Tree::date)?,
            opt(tree, "iat", Tree::date)?,
        ],
        scope: opt(tree, "scope", Tree::string)?.map(owned),
        scp: opt(tree, "scp", list)?,
        cnf: opt(tree, "cnf", |cnf| {
            let Tree::Obj(members) = cnf else {
                return Err(());
            };
            let mut thumbprint = None;
            for (name, value) in members {
                if name == "x5t#S256" {
                    if thumbprint.is_some() {
                        return Err(());
                    }
                    thumbprint = Some(value.string()?.to_owned());
                }
            }
            let other = members.iter().any(|(n, _)| n != "x5t#S256");
            Ok((thumbprint, other))
        })?,
        client_id: opt(tree, "client_id", Tree::string)?.map(owned),
    })
}

fn actual_claims(text: &str) -> Option<ClaimsView> {
    let c = token::parse_claims(text, false).ok()?;
    let owned = |s: Cow<'_, str>| s.into_owned();
    let list = |l: StrList<'_>| l.iter().map(str::to_owned).collect();
    Some(ClaimsView {
        iss: c.iss.map(owned),
        sub: c.sub.map(owned),
        aud: c.aud.map(list),
        dates: [c.exp, c.nbf, c.iat].map(|d| d.map(|d| (d.0, false))),
        scope: c.scope.map(owned),
        scp: c.scp.map(list),
        cnf: c.cnf.map(|c| (c.x5t_s256.map(owned), c.other_methods)),
        client_id: c.client_id.map(owned),
    })
}

fn same_dates(expected: &ClaimsView, actual: &ClaimsView) -> bool {
    expected
        .dates
        .iter()
        .zip(&actual.dates)
        .all(|(e, a)| match (e, a) {
            (Some((e, true)), Some((a, _))) => e.abs_diff(*a) <= 1,
            (Some((e, false)), Some((a, _))) => e == a,
            (None, None) => true,
            _ => false,
        })
}

/// Equal JSON values; floats may differ in the last bits (serde_json's default float parser
/// is not always correctly rounded; the reader's, Rust's own, is).
fn same_value(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => {
                    x == y || (x - y).abs() <= x.abs().max(y.abs()) * 4.0 * f64::EPSILON
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && same_value(vx, vy))
        }
        _ => a == b,
    }
}

/// Parses `input` with this crate's reader and with serde_json, and panics where they
/// disagree: on what is JSON at all, and on every header member and claim the validator reads.
///
/// # Panics
/// On a disagreement, naming the input.
pub fn check_json_against_serde(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        assert!(
            token::parse_header(input).is_err(),
            "non-UTF-8 header accepted"
        );
        return;
    };
    let reference = serde_json::from_str::<Tree>(text);
    let mut reader = Reader::new(text);
    let ours = reader.skip_value().and_then(|()| reader.finish());
    let tree = match (reference, ours) {
        (Ok(tree), Ok(())) => {
            assert!(tree.depth() <= MAX_DEPTH, "nesting not limited: {text:?}");
            tree
        }
        (Ok(tree), Err(JsonError::TooDeep)) if tree.depth() > MAX_DEPTH => return,
        (Ok(_), Err(e)) => panic!("serde_json accepts, the reader refuses ({e:?}): {text:?}"),
        (Err(e), Ok(())) => panic!("the reader accepts, serde_json refuses ({e}): {text:?}"),
        (Err(_), Err(_)) => return,
    };
    // The value the reader builds is serde_json's.
    let expected_value = serde_json::from_str::<serde_json::Value>(text);
    let actual_value = Reader::new(text).value();
    match (&expected_value, &actual_value) {
        (Ok(e), Ok(a)) => assert!(same_value(e, a), "values differ: {e} vs {a}: {text:?}"),
        (e, a) => panic!("value: serde_json says {e:?}, the reader {a:?}: {text:?}"),
    }
    // A claims set the validation pass accepts: `Claims::raw` (built later, on first use) is
    // serde_json's value of it, and the member names the required-claim check sees are
    // serde_json's non-null members (the last of duplicates counts).
    let accepted = token::parse_claims(text, true);
    assert_eq!(
        accepted.is_ok(),
        token::parse_claims(text, false).is_ok(),
        "collecting names changed the verdict: {text:?}"
    );
    if let (Ok(serde_json::Value::Object(expected)), Ok(claims)) = (&expected_value, &accepted) {
        let raw = crate::json::claims_value(text);
        let expected_object = serde_json::Value::Object(expected.clone());
        assert!(
            same_value(&expected_object, &raw),
            "Claims::raw differs: {expected_object} vs {raw}: {text:?}"
        );
        for (name, _) in &claims.names {
            assert_eq!(
                claims.has_non_null(name),
                expected.get(&**name).is_some_and(|v| !v.is_null()),
                "required claim {name:?}: {text:?}"
            );
        }
        assert!(
            expected
                .keys()
                .all(|k| claims.names.iter().any(|(n, _)| n == k)),
            "a member name was not collected: {text:?}"
        );
    }
    if !matches!(tree, Tree::Obj(_)) {
        assert!(
            token::parse_claims(text, false).is_err(),
            "non-object claims: {text:?}"
        );
        assert!(
            token::parse_header(input).is_err(),
            "non-object header: {text:?}"
        );
        return;
    }

    match (expected_claims(&tree), actual_claims(text)) {
        (Ok(expected), Some(actual)) => {
            assert!(
                same_dates(&expected, &actual),
                "dates differ: {expected:?} vs {actual:?}: {text:?}"
            );
            let no_dates = |v: ClaimsView| ClaimsView {
                dates: [None; 3],
                ..v
            };
            assert_eq!(
                no_dates(expected),
                no_dates(actual),
                "claims differ: {text:?}"
            );
        }
        (Err(()), None) => {}
        (expected, actual) => {
            panic!("claims: serde_json says {expected:?}, the reader {actual:?}: {text:?}")
        }
    }

    let expected_header = (|| {
        let owned = |s: &str| s.to_owned();
        Ok::<_, ()>((
            opt(&tree, "alg", Tree::string)?.map(owned),
            opt(&tree, "kid", Tree::string)?.map(owned),
            opt(&tree, "typ", Tree::string)?.map(owned),
            opt(&tree, "crit", |t| match t {
                Tree::Arr(items) => items.iter().map(|i| i.string().map(owned)).collect(),
                _ => Err(()),
            })?,
            opt(&tree, "b64", |t| match t {
                Tree::Bool(b) => Ok(*b),
                _ => Err(()),
            })?,
            matches!(&tree, Tree::Obj(m) if m.iter().any(|(n, _)| ["jwk", "jku", "x5u", "x5c"].contains(&n.as_str()))),
        ))
    })();
    let actual_header = token::parse_header(input).ok().map(|h| {
        let owned = |s: Cow<'_, str>| s.into_owned();
        (
            h.alg.map(owned),
            h.kid.map(owned),
            h.typ.map(owned),
            h.crit.map(|c| c.into_iter().map(owned).collect::<Vec<_>>()),
            h.b64,
            h.key_reference.is_some(),
        )
    });
    assert_eq!(
        expected_header.ok(),
        actual_header,
        "header differs: {text:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEEDS: &[&str] = &[
        r#"{"iss":"https://idp.example.com","sub":"u1","aud":["a","b"],"exp":1700000000,"nbf":1.5e9,"iat":-0,"scope":"a b","client_id":"c"}"#,
        r#"{"aud":"x","scp":["r","w"],"cnf":{"x5t#S256":"abc","jkt":1},"realm_access":{"roles":["r\u00e9"]}}"#,
        r#"{"alg":"ES256","kid":"k\"1","typ":"at+jwt","crit":["b64"],"b64":false,"jku":null}"#,
        r#" { "iss" : null , "exp" : 12345678901234567890 , "x" : [ true , false , null , -1.25E-3 ] } "#,
        r#"{"iss":"a","iss":"b"}"#,
        r#"{"exp":"soon","sub":5,"aud":[1]}"#,
        r#"[{"iss":"a"}]"#,
        r#""\ud83d\ude00""#,
        r#"{"x":1,"x":null,"y":null,"y":{"x":[1,1.5,-0]},"iss":null,"sub":"s"}"#,
    ];

    #[test]
    fn agrees_with_serde_json_on_seeds() {
        for seed in SEEDS {
            check_json_against_serde(seed.as_bytes());
        }
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(60), "]".repeat(60));
        check_json_against_serde(deep.as_bytes());
        check_json_against_serde(b"{\"iss\":\"\xff\"}");
    }

    /// A few thousand deterministic byte mutations of the seeds: a fuzzer in miniature, so that
    /// plain `cargo test` exercises the differential check too.
    #[test]
    fn agrees_with_serde_json_on_mutations() {
        let alphabet = b"{}[]\",:\\u0123456789abcdefE.-+ \ttrue\x01\xc3\xa9nulsx5";
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in SEEDS {
            for _ in 0..3000 {
                let mut bytes = seed.as_bytes().to_vec();
                for _ in 0..1 + next() % 3 {
                    let at = (next() % bytes.len() as u64) as usize;
                    let byte = alphabet[(next() % alphabet.len() as u64) as usize];
                    match next() % 3 {
                        0 => bytes[at] = byte,
                        1 => bytes.insert(at, byte),
                        _ => {
                            bytes.remove(at);
                        }
                    }
                    if bytes.is_empty() {
                        bytes.push(byte);
                    }
                }
                check_json_against_serde(&bytes);
            }
        }
    }
}
