//! Data documents merged into one `data` tree, as OPA merges them.

use regorus::Value;

/// Deep-merges `doc` into `root` at `path`. Objects merge key by key; any other collision is
/// an error (as in OPA).
pub(super) fn merge_at(root: &mut Value, path: &[&str], doc: Value) -> Result<(), String> {
    let mut cur = root;
    for seg in path {
        let obj = cur
            .as_object_mut()
            .map_err(|_| format!("data path /{} collides with a non-object", path.join("/")))?;
        let key = Value::from(*seg);
        if obj.get(&key).is_none() {
            obj.insert(key.clone(), Value::new_object());
        }
        cur = obj
            .get_mut(&key)
            .ok_or_else(|| "internal: inserted key vanished".to_owned())?;
    }
    merge_values(
        cur,
        doc,
        &mut path.iter().map(|s| (*s).to_owned()).collect(),
    )
}

fn merge_values(dst: &mut Value, src: Value, at: &mut Vec<String>) -> Result<(), String> {
    let src_obj = match src.as_object() {
        Ok(o) => o.clone(),
        Err(_) => return Err(format!("conflicting values at /{}", at.join("/"))),
    };
    let dst_obj = dst
        .as_object_mut()
        .map_err(|_| format!("conflicting values at /{}", at.join("/")))?;
    for (k, v) in src_obj.iter() {
        match dst_obj.get_mut(k) {
            Some(existing) if existing.as_object().is_ok() && v.as_object().is_ok() => {
                at.push(k.as_string().map(|s| s.to_string()).unwrap_or_default());
                merge_values(existing, v.clone(), at)?;
                at.pop();
            }
            Some(_) => {
                let key = k.as_string().map(|s| s.to_string()).unwrap_or_default();
                return Err(format!("conflicting values at /{}/{key}", at.join("/")));
            }
            None => {
                dst_obj.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_conflicts_are_errors() {
        let mut root = Value::new_object();
        merge_at(
            &mut root,
            &["a"],
            Value::from_json_str(r#"{"x": {"y": 1}}"#).unwrap(),
        )
        .unwrap();
        merge_at(
            &mut root,
            &["a"],
            Value::from_json_str(r#"{"x": {"z": 2}}"#).unwrap(),
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&root).unwrap(),
            serde_json::json!({"a": {"x": {"y": 1, "z": 2}}})
        );
        assert!(
            merge_at(
                &mut root,
                &["a", "x"],
                Value::from_json_str(r#"{"y": 3}"#).unwrap()
            )
            .is_err()
        );
    }
}
