//! One walk over regorus's parsed rules, shared by the checks that read policy structure
//! ([`bytecode_scope`](super::bytecode_scope), [`opa_semantics`](super::opa_semantics)).

use regorus::unstable::{Expr, Literal, LiteralStmt, Query, Rule, RuleHead};

/// What a check looks at; the walk visits every part of a rule once, outer before inner.
pub(super) trait Visitor {
    /// Every statement, before its parts.
    fn statement(&mut self, _stmt: &LiteralStmt) {}

    /// Every expression, before its parts. `statement_level` is true for the expression a
    /// statement (or a `not` statement) consists of, false for every expression inside one
    /// and for rule heads, `some … in` parts and `with` targets.
    fn expression(&mut self, _expr: &Expr, _statement_level: bool) {}

    /// An expression kind this walk does not know (a newer regorus).
    fn unknown(&mut self, _expr: &Expr) {}
}

/// Walks a rule definition: its head, each body (and `else`), its default value.
pub(super) fn rule(rule: &Rule, v: &mut impl Visitor) {
    match rule {
        Rule::Spec { head, bodies, .. } => {
            match head {
                RuleHead::Compr { refr, assign, .. } => {
                    expr(refr, false, v);
                    if let Some(a) = assign {
                        expr(&a.value, false, v);
                    }
                }
                RuleHead::Set { refr, key, .. } => {
                    expr(refr, false, v);
                    if let Some(k) = key {
                        expr(k, false, v);
                    }
                }
                RuleHead::Func {
                    refr, args, assign, ..
                } => {
                    expr(refr, false, v);
                    args.iter().for_each(|a| expr(a, false, v));
                    if let Some(a) = assign {
                        expr(&a.value, false, v);
                    }
                }
            }
            for body in bodies {
                if let Some(a) = &body.assign {
                    expr(&a.value, false, v);
                }
                query(&body.query, v);
            }
        }
        Rule::Default { value, .. } => expr(value, false, v),
    }
}

fn query(q: &Query, v: &mut impl Visitor) {
    for stmt in &q.stmts {
        statement(stmt, v);
    }
}

fn statement(stmt: &LiteralStmt, v: &mut impl Visitor) {
    v.statement(stmt);
    match &stmt.literal {
        Literal::SomeVars { .. } => {}
        Literal::SomeIn {
            key,
            value,
            collection,
            ..
        } => membership(key.as_deref(), value, collection, v),
        Literal::Expr { expr: e, .. } | Literal::NotExpr { expr: e, .. } => expr(e, true, v),
        Literal::Every {
            domain, query: q, ..
        } => {
            expr(domain, false, v);
            query(q, v);
        }
    }
    for w in &stmt.with_mods {
        expr(&w.refr, false, v);
        expr(&w.r#as, false, v);
    }
}

/// `key, value in collection`, as a statement (`some … in`) or an expression.
fn membership(key: Option<&Expr>, value: &Expr, collection: &Expr, v: &mut impl Visitor) {
    if let Some(k) = key {
        expr(k, false, v);
    }
    expr(value, false, v);
    expr(collection, false, v);
}

fn expr(e: &Expr, statement_level: bool, v: &mut impl Visitor) {
    v.expression(e, statement_level);
    match e {
        Expr::ArrayCompr { term, query: q, .. } | Expr::SetCompr { term, query: q, .. } => {
            expr(term, false, v);
            query(q, v);
        }
        Expr::ObjectCompr {
            key,
            value,
            query: q,
            ..
        } => {
            expr(key, false, v);
            expr(value, false, v);
            query(q, v);
        }
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            items.iter().for_each(|i| expr(i, false, v));
        }
        Expr::Object { fields, .. } => {
            for (_, k, val) in fields {
                expr(k, false, v);
                expr(val, false, v);
            }
        }
        Expr::Call { fcn, params, .. } => {
            expr(fcn, false, v);
            params.iter().for_each(|p| expr(p, false, v));
        }
        Expr::UnaryExpr { expr: inner, .. } => expr(inner, false, v),
        Expr::RefDot { refr, .. } => expr(refr, false, v),
        Expr::RefBrack { refr, index, .. } => {
            expr(refr, false, v);
            expr(index, false, v);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            expr(lhs, false, v);
            expr(rhs, false, v);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => membership(key.as_deref(), value, collection, v),
        Expr::String { .. }
        | Expr::RawString { .. }
        | Expr::Number { .. }
        | Expr::Bool { .. }
        | Expr::Null { .. }
        | Expr::Var { .. } => {}
        #[allow(unreachable_patterns)]
        _ => v.unknown(e),
    }
}
