//! The inputs a set's `test_*` rules decide on, so the compiled form can be checked against
//! the interpreter on them before it decides anything.
//!
//! regorus's bytecode does not run `with`, so a test cannot run on it as written. What a test
//! exercises is the decision under the input it supplies with `with input as <literal>`: those
//! inputs are read from the parsed test rules and the decision rule is evaluated on each by both
//! evaluators. A test that supplies its input any other way (a computed value, `with
//! input.field as …`) cannot be replayed, and the set is not shown equal on it.

use std::collections::{BTreeMap, BTreeSet};

use regorus::Value;
use regorus::unstable::{Expr, Literal, Query, Ref, Rule};

/// Every literal input of every test rule, in order, or the first test rule whose input is
/// not a literal.
pub(super) fn collect<'a>(
    rules: impl IntoIterator<Item = (&'a String, &'a Vec<Ref<Rule>>)>,
) -> Result<Vec<(String, Value)>, String> {
    let mut out = Vec::new();
    for (path, defs) in rules {
        let name = path.rsplit('.').next().unwrap_or_default();
        if !name.starts_with("test_") {
            continue;
        }
        for rule in defs {
            if let Rule::Spec { bodies, .. } = rule.as_ref() {
                for body in bodies {
                    query_inputs(&body.query, path, &mut out)?;
                }
            }
        }
    }
    Ok(out)
}

fn query_inputs(q: &Query, test: &str, out: &mut Vec<(String, Value)>) -> Result<(), String> {
    for stmt in &q.stmts {
        for w in &stmt.with_mods {
            match w.refr.as_ref() {
                Expr::Var { span, .. } if span.text() == "input" => {
                    let value = literal_value(&w.r#as).ok_or_else(|| test.to_owned())?;
                    out.push((test.to_owned(), value));
                }
                // `with input.x as …` changes part of an input the test does not spell out.
                e if root_is_input(e) => return Err(test.to_owned()),
                _ => {}
            }
        }
        if let Literal::Every { query, .. } = &stmt.literal {
            query_inputs(query, test, out)?;
        }
    }
    Ok(())
}

fn root_is_input(e: &Expr) -> bool {
    match e {
        Expr::Var { span, .. } => span.text() == "input",
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => root_is_input(refr),
        _ => false,
    }
}

/// The value of a literal expression (scalars and collections of literals).
pub(super) fn literal_value(e: &Expr) -> Option<Value> {
    Some(match e {
        Expr::String { value, .. }
        | Expr::RawString { value, .. }
        | Expr::Number { value, .. }
        | Expr::Bool { value, .. }
        | Expr::Null { value, .. } => value.clone(),
        Expr::Array { items, .. } => Value::from(
            items
                .iter()
                .map(|i| literal_value(i))
                .collect::<Option<Vec<_>>>()?,
        ),
        Expr::Set { items, .. } => Value::from(
            items
                .iter()
                .map(|i| literal_value(i))
                .collect::<Option<BTreeSet<_>>>()?,
        ),
        Expr::Object { fields, .. } => Value::from(
            fields
                .iter()
                .map(|(_, k, v)| Some((literal_value(k)?, literal_value(v)?)))
                .collect::<Option<BTreeMap<_, _>>>()?,
        ),
        _ => return None,
    })
}
