//! The canonical-path checks (spec "Target and path", checks 1-4), shared by request paths
//! and rule paths.

/// Why `path` is not canonical, or `Ok` when it is. `path` is the target's bytes before the
/// query (`?`), already bounded by the caller.
pub(crate) fn check_canonical(path: &[u8]) -> Result<(), &'static str> {
    // 1. origin-form only.
    if path.first() != Some(&b'/') {
        return Err("does not start with '/'");
    }
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        // 2. visible ASCII only, no backslash, no fragment.
        if !(0x21..=0x7e).contains(&b) {
            return Err("has a byte outside 0x21..=0x7e");
        }
        match b {
            b'\\' => return Err("has a backslash"),
            b'#' => return Err("has a '#'"),
            b'%' => check_percent(path.get(i + 1..i + 3))?,
            // 3. empty and dot segments: look at what follows each '/'.
            b'/' => match (path.get(i + 1), path.get(i + 2), path.get(i + 3)) {
                (Some(b'/'), _, _) => return Err("has an empty segment '//'"),
                (Some(b'.'), None | Some(b'/'), _) => return Err("has a '.' segment"),
                (Some(b'.'), Some(b'.'), None | Some(b'/')) => {
                    return Err("has a '..' segment");
                }
                _ => {}
            },
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// 4. `%XX`: two upper-case hex digits encoding a byte that has no unencoded canonical form.
fn check_percent(hex: Option<&[u8]>) -> Result<(), &'static str> {
    let Some(&[hi, lo]) = hex else {
        return Err("has a '%' without two hex digits");
    };
    let (Some(hi), Some(lo)) = (upper_hex(hi), upper_hex(lo)) else {
        return Err("has a '%' without two upper-case hex digits");
    };
    let decoded = hi << 4 | lo;
    if decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~') {
        return Err("percent-encodes an unreserved character");
    }
    if matches!(decoded, b'/' | b'\\') {
        return Err("percent-encodes '/' or '\\'");
    }
    Ok(())
}

fn upper_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::check_canonical;

    #[test]
    fn canonical_paths_pass() {
        for p in [
            "/",
            "/health",
            "/api/orders/7",
            "/api/orders/",
            "/a.b/c..d/.e/f.",
            "/files/my%20doc",
            "/x%3Ay%00",
            "/pkg.Service/Method",
            "/...",
            "/a/...b",
            "/~user_x-1",
        ] {
            assert_eq!(check_canonical(p.as_bytes()), Ok(()), "{p}");
        }
    }

    #[test]
    fn tricks_are_refused() {
        for p in [
            "",
            "admin",
            "http://host/admin",
            "*",
            "//admin",
            "/api//orders",
            "/api/./orders",
            "/api/../admin",
            "/api/.",
            "/api/..",
            "/.",
            "/..",
            "/%2e%2e/admin",
            "/%2E",
            "/a%2Fb",
            "/a%2fb",
            "/a%5Cb",
            "/%41dmin",
            "/%7E",
            "/a%3ab",
            "/a%",
            "/a%2",
            "/a%zz",
            "/a\\b",
            "/a#b",
            "/a b",
            "/a\tb",
            "/a\u{7f}",
            "/caf\u{e9}",
        ] {
            assert!(check_canonical(p.as_bytes()).is_err(), "{p:?} passed");
        }
    }
}
