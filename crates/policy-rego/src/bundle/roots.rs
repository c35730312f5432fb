//! The manifest's roots: which data and package paths a bundle owns.

use regorus::Value;

use super::Manifest;
use crate::error::{PolicyError, Result};

/// `None` = everything; otherwise the list of root paths split into segments.
pub(crate) type Roots = Option<Vec<Vec<String>>>;

pub(crate) fn manifest_roots_of(m: &Manifest) -> Result<Roots> {
    let Some(roots) = &m.roots else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for r in roots {
        let r = r.trim_matches('/');
        if r.is_empty() {
            return Ok(None);
        }
        out.push(r.split('/').map(str::to_owned).collect::<Vec<_>>());
    }
    // Overlapping roots are ambiguous (OPA refuses them too).
    for (i, a) in out.iter().enumerate() {
        for b in out.iter().skip(i + 1) {
            if a.starts_with(b) || b.starts_with(a) {
                return Err(PolicyError::Manifest(format!(
                    "roots {} and {} overlap",
                    a.join("/"),
                    b.join("/")
                )));
            }
        }
    }
    Ok(Some(out))
}

/// Whether `path` lies under one of `roots`.
pub(crate) fn under_roots(path: &[&str], roots: &Roots) -> bool {
    match roots {
        None => true,
        Some(roots) => roots
            .iter()
            .any(|r| r.len() <= path.len() && r.iter().zip(path).all(|(a, b)| a.as_str() == *b)),
    }
}

fn is_prefix_of_root(path: &[&str], roots: &Roots) -> bool {
    match roots {
        None => true,
        Some(roots) => roots.iter().any(|r| {
            path.len() < r.len() && path.iter().zip(r.iter()).all(|(a, b)| *a == b.as_str())
        }),
    }
}

pub(super) fn check_data_roots(file: &str, at: &[&str], doc: &Value, roots: &Roots) -> Result<()> {
    if under_roots(at, roots) {
        return Ok(());
    }
    if is_prefix_of_root(at, roots)
        && let Ok(obj) = doc.as_object()
    {
        for (k, v) in obj.iter() {
            let key = match k.as_string() {
                Ok(s) => s.to_string(),
                Err(_) => k.to_string(),
            };
            let mut p: Vec<&str> = at.to_vec();
            p.push(&key);
            check_data_roots(file, &p, v, roots)?;
        }
        return Ok(());
    }
    Err(PolicyError::Manifest(format!(
        "{file}: data path /{} is outside the manifest roots",
        at.join("/")
    )))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_contain_paths() {
        let m = Manifest {
            roots: Some(vec!["http/authz".into(), "roles".into()]),
            ..Manifest::default()
        };
        let r = manifest_roots_of(&m).unwrap();
        assert!(under_roots(&["http", "authz"], &r));
        assert!(under_roots(&["roles", "x"], &r));
        assert!(!under_roots(&["http"], &r));
        assert!(!under_roots(&["other"], &r));
        let overlapping = Manifest {
            roots: Some(vec!["a".into(), "a/b".into()]),
            ..Manifest::default()
        };
        assert!(manifest_roots_of(&overlapping).is_err());
    }

    #[test]
    fn data_above_a_root_must_stay_inside_it() {
        let m = Manifest {
            roots: Some(vec!["a/b".into()]),
            ..Manifest::default()
        };
        let r = manifest_roots_of(&m).unwrap();
        let inside = Value::from_json_str(r#"{"b": {"x": 1}}"#).unwrap();
        assert!(check_data_roots("data.json", &["a"], &inside, &r).is_ok());
        let outside = Value::from_json_str(r#"{"c": 1}"#).unwrap();
        assert!(check_data_roots("data.json", &["a"], &outside, &r).is_err());
        assert!(check_data_roots("data.json", &["z"], &inside, &r).is_err());
    }
}
