//! Statements whose meaning regorus (both its evaluators) and OPA disagree on, found in the
//! parsed modules so such a set is refused instead of deciding differently from OPA.
//!
//! Found with the differential suite against real OPA (`tests/differential.rs`):
//!
//! * **Negated operators and calls with an undefined operand.** OPA evaluates the operands of
//!   a call (a builtin or function call, `in`, `!=`, `<`, `<=`, `>`, `>=`, arithmetic, set
//!   operators) *before* the negation, so `not input.p in blocked`, `not startswith(input.p,
//!   "a")` and `not input.n < 3` fail the body when `input.p` / `input.n` is undefined.
//!   regorus evaluates the whole expression inside the negation, which succeeds. A deny list
//!   written `allow if not input.user in banned` lets a request without a user in under
//!   regorus and not under OPA. (`not input.p == "x"` and `not input.flag` mean the same in
//!   both and are accepted.)
//! * **Membership as a value.** `x := input.p in s` (or `in` inside a collection, an argument
//!   or a rule value) is undefined in OPA when an operand is undefined; regorus gives `false`.
//!
//! Operands that are literals or local variables are always defined and never flagged; so the
//! portable spelling of `not input.p in blocked` is `p := input.p; not p in blocked`, which
//! both evaluate alike. `test_*` rules are not checked.

use regorus::unstable::{BoolOp, Expr, Literal, LiteralStmt, Module, Ref, Rule, Span};

use super::ast_walk;

/// A statement regorus and OPA evaluate differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Divergence {
    /// The rule, as `data.package.rule`.
    pub(super) rule: String,
    /// Its module and line.
    pub(super) module: String,
    pub(super) line: u32,
    /// The offending expression's text.
    pub(super) text: String,
    /// Which kind.
    pub(super) kind: DivergenceKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DivergenceKind {
    NegatedOperand,
    MembershipValue,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            DivergenceKind::NegatedOperand => write!(
                f,
                "{}:{}: rule {}: `{}` negates an operator or call whose operand may be \
                 undefined; OPA then fails the body but regorus succeeds. Bind the operand \
                 first (`v := <operand>; not … v …`) so both agree",
                self.module, self.line, self.rule, self.text
            ),
            DivergenceKind::MembershipValue => write!(
                f,
                "{}:{}: rule {}: `{}` uses membership as a value with an operand that may be \
                 undefined; OPA gives undefined but regorus gives false. Bind the operand \
                 first (`v := <operand>`) so both agree",
                self.module, self.line, self.rule, self.text
            ),
        }
    }
}

/// Returns the first divergent statement of `rules` (path → definitions), tests excepted.
pub(super) fn check<'a>(
    rules: impl IntoIterator<Item = (&'a String, &'a Vec<Ref<Rule>>)> + Clone,
    modules: &[Ref<Module>],
) -> Result<(), Divergence> {
    let names = super::bytecode_scope::Names::of(rules.clone(), modules);
    for (path, defs) in rules {
        let name = path.rsplit('.').next().unwrap_or_default();
        if name.starts_with("test_") || name.starts_with("todo_test_") {
            continue;
        }
        for rule in defs {
            let mut w = Walker {
                names: &names,
                found: None,
            };
            ast_walk::rule(rule, &mut w);
            if let Some((span, kind)) = w.found {
                return Err(Divergence {
                    rule: path.clone(),
                    module: span.source.get_path().clone(),
                    line: span.line,
                    text: super::bytecode_scope::source_line(&span),
                    kind,
                });
            }
        }
    }
    Ok(())
}

struct Walker<'a> {
    names: &'a super::bytecode_scope::Names,
    found: Option<(Span, DivergenceKind)>,
}

impl Walker<'_> {
    fn flag(&mut self, span: &Span, kind: DivergenceKind) {
        if self.found.is_none() {
            self.found = Some((span.clone(), kind));
        }
    }

    /// Within a negated expression: the first operator or call (other than `==`) that has an
    /// operand that may be undefined.
    fn undefined_operand_under_negation(&self, e: &Expr) -> Option<Span> {
        let operands: Vec<&Ref<Expr>> = match e {
            Expr::Call { params, .. } => params.iter().collect(),
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => key.iter().chain([value, collection]).collect(),
            Expr::ArithExpr { lhs, rhs, .. } | Expr::BinExpr { lhs, rhs, .. } => vec![lhs, rhs],
            Expr::BoolExpr { op, lhs, rhs, .. } => {
                if *op != BoolOp::Eq {
                    vec![lhs, rhs]
                } else {
                    // `==` itself is evaluated inside the negation by both; look deeper.
                    return self
                        .undefined_operand_under_negation(lhs)
                        .or_else(|| self.undefined_operand_under_negation(rhs));
                }
            }
            Expr::AssignExpr { lhs, rhs, .. } => {
                return self
                    .undefined_operand_under_negation(lhs)
                    .or_else(|| self.undefined_operand_under_negation(rhs));
            }
            Expr::UnaryExpr { expr, .. } => vec![expr],
            _ => return None,
        };
        if operands.iter().any(|o| !self.always_defined(o)) {
            return Some(e.span().clone());
        }
        operands
            .into_iter()
            .find_map(|o| self.undefined_operand_under_negation(o))
    }

    fn always_defined(&self, e: &Expr) -> bool {
        self.names.always_defined(e)
    }
}

impl ast_walk::Visitor for Walker<'_> {
    fn statement(&mut self, stmt: &LiteralStmt) {
        if let Literal::NotExpr { expr, .. } = &stmt.literal
            && let Some(span) = self.undefined_operand_under_negation(expr)
        {
            self.flag(&span, DivergenceKind::NegatedOperand);
        }
    }

    // A statement's own result only decides whether the body goes on; false and undefined
    // both stop it, so a membership test is fine as a statement (a negated one is checked
    // above), and only as a value must its operands be defined.
    fn expression(&mut self, e: &Expr, statement_level: bool) {
        if let Expr::Membership {
            key,
            value,
            collection,
            span,
            ..
        } = e
            && !statement_level
            && !(key.iter().all(|k| self.always_defined(k))
                && self.always_defined(value)
                && self.always_defined(collection))
        {
            self.flag(span, DivergenceKind::MembershipValue);
        }
    }
}
