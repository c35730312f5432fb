//! Which policy sets the compiled form (regorus's RVM bytecode) may decide.
//!
//! The differential suite (`tests/differential.rs`) shows where regorus 0.14's RVM gives other
//! values than its interpreter (and OPA):
//!
//! * it binds `x := expr` (and `x = expr`, `expr = x`, `[a, b] = expr`) without checking that
//!   `expr` is defined, where the interpreter and OPA fail the body;
//! * a builtin that fails (`to_number("x")`, `split(5, ",")`, division by zero) makes the
//!   expression undefined instead of an error, so `not` over it succeeds where the
//!   interpreter (and OPA with strict builtin errors) stops with an error, and a denial
//!   becomes an allow; arithmetic and set operators (`+`, `-`, `|`, `&`) fail the same way;
//! * two definitions of a complete rule that give different values make it undefined instead
//!   of a conflict error;
//! * `every x in xs { input.m[x] == true }` holds when `input.m[x]` is undefined for some `x`.
//!
//! A set that has any of these (outside its `test_*` rules) is decided by the interpreter, or
//! refused under [`Evaluator::Compiled`](super::Evaluator::Compiled). Calls of the set's own
//! functions are fine (their bodies are checked like any rule). The check reads the parsed
//! modules; the policy source is never changed. It is conservative: an expression counts as
//! always defined only when it is a literal, a local variable, a comprehension, or a
//! collection literal made of those.

use std::collections::BTreeSet;

use regorus::unstable::{Expr, Literal, LiteralStmt, Module, Ref, Rule, RuleHead};

use super::ast_walk;

/// A statement the compiled form is not trusted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OutOfScope {
    /// The rule it is in, as `data.package.rule`.
    pub(super) rule: String,
    /// Its line in its module.
    pub(super) line: u32,
    /// Its module.
    pub(super) module: String,
    /// The statement's text.
    pub(super) statement: String,
    /// What about it.
    pub(super) why: &'static str,
}

impl std::fmt::Display for OutOfScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rule {} ({}:{}) {} (`{}`), which regorus's bytecode does not evaluate as OPA does",
            self.rule, self.module, self.line, self.why, self.statement
        )
    }
}

const UNDEFINED_BINDING: &str = "binds a value that may be undefined";
const BUILTIN_CALL: &str = "calls a builtin, whose errors the bytecode turns into undefined";
const OPERATOR: &str =
    "uses an arithmetic or set operator, whose errors the bytecode turns into undefined";
const CONFLICT: &str = "has several definitions that may conflict";
const EVERY: &str = "uses `every`, whose body the bytecode can pass on an undefined value";

/// What a bare name in a rule body may denote.
pub(super) struct Names {
    /// Names that may denote a rule or an import rather than a local variable.
    global: BTreeSet<String>,
    /// Rule names that are always defined wherever they are used: partial set rules (at
    /// least the empty set) and rules with a `default`, unless another rule of the same name
    /// elsewhere is neither.
    always_defined_rules: BTreeSet<String>,
}

impl Names {
    pub(super) fn of<'a>(
        rules: impl IntoIterator<Item = (&'a String, &'a Vec<Ref<Rule>>)>,
        modules: &[Ref<Module>],
    ) -> Self {
        let mut global: BTreeSet<String> = ["input", "data"].map(str::to_owned).into();
        let mut defined = BTreeSet::new();
        let mut maybe_undefined = BTreeSet::new();
        for (path, defs) in rules {
            global.extend(path.split('.').map(str::to_owned));
            let Some(name) = path.rsplit('.').next() else {
                continue;
            };
            let has_default = defs
                .iter()
                .any(|r| matches!(r.as_ref(), Rule::Default { .. }));
            let partial_set = defs.iter().all(|r| {
                matches!(
                    r.as_ref(),
                    Rule::Spec {
                        head: RuleHead::Set { .. },
                        ..
                    }
                )
            });
            // `s := {"a", "b"}` with no body: a constant.
            let constant = defs.iter().any(|r| match r.as_ref() {
                Rule::Spec {
                    head:
                        RuleHead::Compr {
                            assign: Some(a), ..
                        },
                    bodies,
                    ..
                } => bodies.is_empty() && super::test_inputs::literal_value(&a.value).is_some(),
                _ => false,
            });
            if has_default || partial_set || constant {
                defined.insert(name.to_owned());
            } else {
                maybe_undefined.insert(name.to_owned());
            }
        }
        for module in modules {
            for import in &module.imports {
                if let Some(alias) = &import.r#as {
                    maybe_undefined.insert(alias.text().to_owned());
                    global.insert(alias.text().to_owned());
                }
                collect_names(&import.refr, &mut global);
            }
        }
        let always_defined_rules = defined.difference(&maybe_undefined).cloned().collect();
        Names {
            global,
            always_defined_rules,
        }
    }

    /// Whether `e` can never be undefined: literals, local variables, always-defined rules,
    /// comprehensions and collection literals of those.
    pub(super) fn always_defined(&self, e: &Expr) -> bool {
        match e {
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. }
            | Expr::ArrayCompr { .. }
            | Expr::SetCompr { .. }
            | Expr::ObjectCompr { .. } => true,
            Expr::Var { span, .. } => {
                let name = span.text();
                !self.global.contains(name) || self.always_defined_rules.contains(name)
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                items.iter().all(|i| self.always_defined(i))
            }
            Expr::Object { fields, .. } => fields
                .iter()
                .all(|(_, k, v)| self.always_defined(k) && self.always_defined(v)),
            _ => false,
        }
    }
}

/// Checks every rule of `rules` (path → definitions) except tests.
pub(super) fn check<'a>(
    rules: impl IntoIterator<Item = (&'a String, &'a Vec<Ref<Rule>>)> + Clone,
    modules: &[Ref<Module>],
) -> Result<(), OutOfScope> {
    let names = Names::of(rules.clone(), modules);
    let functions: BTreeSet<&str> = rules
        .clone()
        .into_iter()
        .filter(|(_, defs)| {
            defs.iter().any(|r| {
                matches!(
                    r.as_ref(),
                    Rule::Spec {
                        head: RuleHead::Func { .. },
                        ..
                    }
                )
            })
        })
        .filter_map(|(path, _)| path.rsplit('.').next())
        .collect();
    for (path, defs) in rules {
        let name = path.rsplit('.').next().unwrap_or_default();
        if name.starts_with("test_") || name.starts_with("todo_test_") {
            continue;
        }
        let out = |span: &regorus::unstable::Span, why| OutOfScope {
            rule: path.clone(),
            line: span.line,
            module: span.source.get_path().clone(),
            statement: source_line(span),
            why,
        };
        // Partial set rules (`contains`) take the union of their definitions; the others
        // conflict when two definitions give different values.
        let specs: Vec<&Ref<Rule>> = defs
            .iter()
            .filter(|r| {
                matches!(r.as_ref(), Rule::Spec { head, .. } if !matches!(head, RuleHead::Set { .. }))
            })
            .collect();
        if specs.len() > 1 && specs.iter().any(|r| !yields_true(r)) {
            return Err(out(specs[1].span(), CONFLICT));
        }
        for rule in defs {
            let mut walker = Walker {
                names: &names,
                functions: &functions,
                found: None,
            };
            ast_walk::rule(rule, &mut walker);
            if let Some((span, why)) = walker.found {
                return Err(out(&span, why));
            }
        }
    }
    Ok(())
}

/// Whether a rule definition can only give `true` (`allow if …`, `allow := true if …`), so
/// several of them cannot conflict.
fn yields_true(rule: &Rule) -> bool {
    let Rule::Spec {
        head: RuleHead::Compr { refr, assign, .. },
        bodies,
        ..
    } = rule
    else {
        return false;
    };
    let is_true =
        |e: &Expr| matches!(e, Expr::Bool { value, .. } if *value == regorus::Value::Bool(true));
    matches!(refr.as_ref(), Expr::Var { .. } | Expr::RefDot { .. })
        && assign.as_ref().is_none_or(|a| is_true(&a.value))
        && bodies
            .iter()
            .all(|b| b.assign.as_ref().is_none_or(|a| is_true(&a.value)))
}

fn collect_names(e: &Expr, out: &mut BTreeSet<String>) {
    match e {
        Expr::Var { span, .. } => {
            out.insert(span.text().to_owned());
        }
        Expr::RefDot { refr, field, .. } => {
            collect_names(refr, out);
            out.insert(field.0.text().to_owned());
        }
        Expr::RefBrack { refr, .. } => collect_names(refr, out),
        _ => {}
    }
}

struct Walker<'a> {
    names: &'a Names,
    functions: &'a BTreeSet<&'a str>,
    found: Option<(regorus::unstable::Span, &'static str)>,
}

impl Walker<'_> {
    fn flag(&mut self, span: &regorus::unstable::Span, why: &'static str) {
        if self.found.is_none() {
            self.found = Some((span.clone(), why));
        }
    }
}

impl ast_walk::Visitor for Walker<'_> {
    fn statement(&mut self, stmt: &LiteralStmt) {
        match &stmt.literal {
            Literal::Expr { expr, .. } => {
                if let Expr::AssignExpr { lhs, rhs, span, .. } = expr.as_ref()
                    && !(self.names.always_defined(lhs) && self.names.always_defined(rhs))
                {
                    self.flag(span, UNDEFINED_BINDING);
                }
            }
            Literal::Every { span, .. } => self.flag(span, EVERY),
            Literal::SomeVars { .. } | Literal::SomeIn { .. } | Literal::NotExpr { .. } => {}
        }
    }

    fn expression(&mut self, e: &Expr, _statement_level: bool) {
        match e {
            Expr::Call { fcn, span, .. } => {
                let own = fcn
                    .span()
                    .text()
                    .rsplit('.')
                    .next()
                    .is_some_and(|last| self.functions.contains(last));
                if !own {
                    self.flag(span, BUILTIN_CALL);
                }
            }
            Expr::UnaryExpr { span, .. }
            | Expr::BinExpr { span, .. }
            | Expr::ArithExpr { span, .. } => self.flag(span, OPERATOR),
            _ => {}
        }
    }

    fn unknown(&mut self, e: &Expr) {
        // An expression kind this check does not know: not trusted.
        self.flag(e.span(), OPERATOR);
    }
}

/// The trimmed source line of `span` (a span's own text leaves out the quotes of a string
/// literal at its edges, which would misquote the statement in an error).
pub(super) fn source_line(span: &regorus::unstable::Span) -> String {
    span.source
        .contents()
        .lines()
        .nth(span.line.saturating_sub(1) as usize)
        .unwrap_or_default()
        .trim()
        .to_owned()
}
