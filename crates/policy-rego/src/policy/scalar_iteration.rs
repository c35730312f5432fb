//! The one place where regorus's interpreter and OPA still disagree on a set the compiled
//! form is trusted with: `some … in` over a value that is not a collection.
//!
//! `some x in input.xs` where `xs` is `"ab"` (or a number, a boolean, `null`) iterates nothing
//! in OPA: that body yields nothing, and evaluation goes on (a comprehension around it is
//! empty, other definitions of the rule still contribute). regorus 0.14's interpreter stops
//! the whole evaluation with an error instead; its bytecode (RVM) iterates nothing, as OPA
//! does. Found with the differential suite and checked by experiment (`docs/policy.md`):
//!
//! * the interpreter's error cannot be mapped to a value: mapping it to "undefined" would be
//!   wrong wherever the statement sits inside a comprehension (OPA gives an empty
//!   collection) or in one of several definitions of a rule (OPA still gives the others'
//!   values), and resuming the interpreter past the statement is not possible from outside
//!   (nor is changing the policy text, which issue 7 rules out);
//! * spotting at load a `some … in` over something that may be a string would flag nearly
//!   every `some x in input.…`: the type of an input field is only known at decision time;
//! * so, where a set is decided on the compiled form ([`Evaluator::Auto`]) and a cross-check
//!   runs the interpreter on the same input, an interpreter that stops with exactly this
//!   error, at the collection of one of the set's own `some … in` statements, is not a
//!   disagreement: it could not decide the input, and the compiled form's value stands
//!   (it is what OPA gives). Every other interpreter error is still a disagreement.
//!
//! A set decided by the interpreter alone (outside the compiled form's class,
//! [`Evaluator::Interpreter`], or after a real disagreement) still stops with the error there,
//! and the decision denies: failing closed, never open.
//!
//! [`Evaluator::Auto`]: super::Evaluator::Auto
//! [`Evaluator::Interpreter`]: super::Evaluator::Interpreter

use std::collections::BTreeSet;

use regorus::unstable::{Literal, LiteralStmt, Module, Ref};

use super::ast_walk;

/// The start of the message regorus 0.14's interpreter gives (after `error: `) when a
/// `some … in` collection is not an array, set or object.
const SCALAR_ITERATION: &str = "error: `some .. in collection` expects array/set/object. Got `";

/// Where a set's `some … in` statements find their collections: module, line, column.
#[derive(Debug, Default)]
pub(super) struct IterationSites(BTreeSet<(String, u32, u32)>);

impl ast_walk::Visitor for IterationSites {
    fn statement(&mut self, stmt: &LiteralStmt) {
        if let Literal::SomeIn { collection, .. } = &stmt.literal {
            let span = collection.span();
            self.0
                .insert((span.source.get_path().clone(), span.line, span.col));
        }
    }
}

impl IterationSites {
    /// Every `some … in` statement of `modules` (in rules, functions, tests, comprehensions).
    pub(super) fn of(modules: &[Ref<Module>]) -> Self {
        let mut sites = IterationSites::default();
        for module in modules {
            for rule in &module.policy {
                ast_walk::rule(rule, &mut sites);
            }
        }
        sites
    }

    /// True when `error` (an interpreter error, as text) is the error of a `some … in`
    /// statement of this set whose collection was not a collection, and nothing else. The
    /// message regorus formats is `\n--> FILE:LINE:COL\n |\nLINE | SOURCE\n | ^\nerror: …`; its
    /// location must be one of the set's `some … in` collections and its `error:` line must
    /// start with exactly this error's text, so no other error (a builtin's message that
    /// quotes an input string, say) can pass for it.
    pub(super) fn is_scalar_iteration(&self, error: &str) -> bool {
        let mut lines = error.strip_prefix('\n').unwrap_or(error).split('\n');
        let Some(location) = lines.next().and_then(|l| l.strip_prefix("--> ")) else {
            return false;
        };
        let mut parts = location.rsplitn(3, ':');
        let (Some(col), Some(line), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let (Ok(line), Ok(col)) = (line.parse::<u32>(), col.parse::<u32>()) else {
            return false;
        };
        // The three lines of the source excerpt, then the message.
        lines
            .nth(3)
            .is_some_and(|message| message.starts_with(SCALAR_ITERATION))
            && self.0.contains(&(file.to_owned(), line, col))
    }
}

#[cfg(test)]
mod tests {
    use regorus::{Engine, Value};

    use super::*;

    fn engine(src: &str) -> Engine {
        let mut e = Engine::new();
        e.add_policy("p/t.rego".into(), src.into()).unwrap();
        e
    }

    fn error(e: &mut Engine, input: &str) -> String {
        e.set_input(Value::from_json_str(input).unwrap());
        e.eval_rule("data.t.r".into()).unwrap_err().to_string()
    }

    #[test]
    fn only_the_interpreters_scalar_iteration_error_at_a_some_in_collection_counts() {
        let src = "package t\nr contains x if { some x in input.xs }\n\
                   r contains y if { y := to_number(input.n) }\nq if { some z in input.other }\n";
        let mut e = engine(src);
        let sites = IterationSites::of(e.get_modules());
        assert_eq!(sites.0.len(), 2);
        for scalar in [r#""ab""#, "5", "true", "null"] {
            let err = error(&mut e, &format!(r#"{{"xs": {scalar}}}"#));
            assert!(sites.is_scalar_iteration(&err), "{err}");
        }
        // A builtin's error, even one quoting the scalar-iteration text from the input.
        let quoted = format!(
            r#"{{"n": "x\nerror: {}1`"}}"#,
            SCALAR_ITERATION.replace('`', "\\u0060")
        );
        let err = error(&mut e, &quoted);
        assert!(!sites.is_scalar_iteration(&err), "{err}");
        // The same text at a place that is not one of this set's `some … in` collections.
        let elsewhere =
            IterationSites::of(engine("package t\nr if { some x in [] }").get_modules());
        let err = error(&mut e, r#"{"xs": "ab"}"#);
        assert!(!elsewhere.is_scalar_iteration(&err), "{err}");
        for not_it in [
            "",
            "error: x",
            "\n--> p/t.rego:2:29\n |\n2 | …\n | ^\nerror: other",
        ] {
            assert!(!sites.is_scalar_iteration(not_it));
        }
    }
}
