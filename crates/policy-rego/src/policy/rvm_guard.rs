//! A source rewrite that makes regorus's bytecode compiler (RVM, 0.14) agree with OPA on
//! assignments of undefined values.
//!
//! The RVM binds `x := expr` (and `x = expr` / `expr = x` when `x` is unbound) without
//! checking that `expr` is defined. OPA fails the body there. The difference shows whenever
//! `x` is not used afterwards in a way that fails on undefined: `allow if { r :=
//! data.roles[input.user] }` allows unknown users, `x := input.a; not x == 1` succeeds,
//! `r := x if { x := input.a } else := 2` yields undefined instead of `2`. Array
//! destructuring *is* checked, so each such statement is rewritten to its one-element array
//! form, `[x] := [expr]`, which means the same in Rego and compiles to a checked binding.
//! Only the copy compiled to bytecode is rewritten; the interpreter, tests and `eval` see the
//! original source.

use regorus::unstable::{AssignOp, Expr, Literal, Module, Query, Rule, RuleHead};

/// Returns the module's source with every plain-variable assignment statement wrapped as
/// `[lhs] := [rhs]`, or `None` if the spans do not line up with the source (then the caller
/// does not use the bytecode form).
pub(super) fn guarded_source(module: &Module) -> Option<String> {
    let src = module.package.span.source.contents();
    let mut inserts: Vec<(usize, char)> = Vec::new();
    for rule in &module.policy {
        walk_rule(rule, &mut inserts);
    }
    if inserts.is_empty() {
        return Some(src.clone());
    }
    // Insert from the back so earlier offsets stay valid.
    inserts.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    let mut out = src.clone();
    for (at, c) in inserts {
        if at > out.len() || !out.is_char_boundary(at) {
            return None;
        }
        out.insert(at, c);
    }
    Some(out)
}

fn is_plain_var(e: &Expr) -> bool {
    matches!(e, Expr::Var { span, .. } if span.text() != "_")
}

fn wrap(e: &Expr, inserts: &mut Vec<(usize, char)>) {
    let s = e.span();
    inserts.push((s.start as usize, '['));
    inserts.push((s.end as usize, ']'));
}

fn walk_rule(rule: &Rule, inserts: &mut Vec<(usize, char)>) {
    match rule {
        Rule::Spec { head, bodies, .. } => {
            match head {
                RuleHead::Compr { refr, assign, .. } => {
                    walk_expr(refr, inserts);
                    if let Some(a) = assign {
                        walk_expr(&a.value, inserts);
                    }
                }
                RuleHead::Set { refr, key, .. } => {
                    walk_expr(refr, inserts);
                    if let Some(k) = key {
                        walk_expr(k, inserts);
                    }
                }
                RuleHead::Func {
                    refr, args, assign, ..
                } => {
                    walk_expr(refr, inserts);
                    for a in args {
                        walk_expr(a, inserts);
                    }
                    if let Some(a) = assign {
                        walk_expr(&a.value, inserts);
                    }
                }
            }
            for body in bodies {
                if let Some(a) = &body.assign {
                    walk_expr(&a.value, inserts);
                }
                walk_query(&body.query, inserts);
            }
        }
        Rule::Default { value, args, .. } => {
            walk_expr(value, inserts);
            for a in args {
                walk_expr(a, inserts);
            }
        }
    }
}

fn walk_query(q: &Query, inserts: &mut Vec<(usize, char)>) {
    for stmt in &q.stmts {
        match &stmt.literal {
            Literal::Expr { expr, .. } => {
                if let Expr::AssignExpr { op, lhs, rhs, .. } = expr.as_ref() {
                    let needs_guard = match op {
                        AssignOp::ColEq => is_plain_var(lhs),
                        AssignOp::Eq => is_plain_var(lhs) || is_plain_var(rhs),
                    };
                    if needs_guard {
                        wrap(lhs, inserts);
                        wrap(rhs, inserts);
                    }
                    // Comprehensions inside either side.
                    walk_expr(lhs, inserts);
                    walk_expr(rhs, inserts);
                } else {
                    walk_expr(expr, inserts);
                }
            }
            Literal::NotExpr { expr, .. } => walk_expr(expr, inserts),
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(k) = key {
                    walk_expr(k, inserts);
                }
                walk_expr(value, inserts);
                walk_expr(collection, inserts);
            }
            Literal::Every { domain, query, .. } => {
                walk_expr(domain, inserts);
                walk_query(query, inserts);
            }
            Literal::SomeVars { .. } => {}
        }
        for w in &stmt.with_mods {
            walk_expr(&w.refr, inserts);
            walk_expr(&w.r#as, inserts);
        }
    }
}

fn walk_expr(e: &Expr, inserts: &mut Vec<(usize, char)>) {
    match e {
        Expr::String { .. }
        | Expr::RawString { .. }
        | Expr::Number { .. }
        | Expr::Bool { .. }
        | Expr::Null { .. }
        | Expr::Var { .. } => {}
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            for i in items {
                walk_expr(i, inserts);
            }
        }
        Expr::Object { fields, .. } => {
            for (_, k, v) in fields {
                walk_expr(k, inserts);
                walk_expr(v, inserts);
            }
        }
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
            walk_expr(term, inserts);
            walk_query(query, inserts);
        }
        Expr::ObjectCompr {
            key, value, query, ..
        } => {
            walk_expr(key, inserts);
            walk_expr(value, inserts);
            walk_query(query, inserts);
        }
        Expr::Call { fcn, params, .. } => {
            walk_expr(fcn, inserts);
            for p in params {
                walk_expr(p, inserts);
            }
        }
        Expr::UnaryExpr { expr, .. } => walk_expr(expr, inserts),
        Expr::RefDot { refr, .. } => walk_expr(refr, inserts),
        Expr::RefBrack { refr, index, .. } => {
            walk_expr(refr, inserts);
            walk_expr(index, inserts);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            walk_expr(lhs, inserts);
            walk_expr(rhs, inserts);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => {
            if let Some(k) = key {
                walk_expr(k, inserts);
            }
            walk_expr(value, inserts);
            walk_expr(collection, inserts);
        }
        // Variants behind regorus features this crate does not enable.
        #[allow(unreachable_patterns)]
        _ => {}
    }
}
