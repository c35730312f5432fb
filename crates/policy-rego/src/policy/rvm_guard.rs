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

/// Returns the module's source with every plain-variable assignment statement rewritten as
/// `[lhs] := [rhs]`, or `None` if the spans do not line up with the source (then the caller
/// does not use the bytecode form).
pub(super) fn guarded_source(module: &Module) -> Option<String> {
    let src = module.package.span.source.contents();
    let mut inserts: Vec<(usize, char)> = Vec::new();
    let mut v = Visitor::Guard {
        src,
        inserts: &mut inserts,
        ok: true,
    };
    for rule in &module.policy {
        walk_rule(rule, &mut v);
    }
    if let Visitor::Guard { ok: false, .. } = v {
        return None;
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

/// The leftmost token of an expression (string literal spans leave out their quotes, and
/// composite expressions inherit that from their first and last tokens).
fn leftmost(e: &Expr) -> &Expr {
    match e {
        Expr::BinExpr { lhs, .. }
        | Expr::BoolExpr { lhs, .. }
        | Expr::ArithExpr { lhs, .. }
        | Expr::AssignExpr { lhs, .. } => leftmost(lhs),
        Expr::Membership { key: Some(key), .. } => leftmost(key),
        Expr::Membership { value, .. } => leftmost(value),
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => leftmost(refr),
        Expr::Call { fcn, .. } => leftmost(fcn),
        e => e,
    }
}

fn rightmost(e: &Expr) -> &Expr {
    match e {
        Expr::BinExpr { rhs, .. }
        | Expr::BoolExpr { rhs, .. }
        | Expr::ArithExpr { rhs, .. }
        | Expr::AssignExpr { rhs, .. } => rightmost(rhs),
        Expr::Membership { collection, .. } => rightmost(collection),
        Expr::UnaryExpr { expr, .. } => rightmost(expr),
        e => e,
    }
}

fn is_string(e: &Expr) -> bool {
    matches!(e, Expr::String { .. } | Expr::RawString { .. })
}

/// Records the insertions that turn `lhs OP rhs` (the statement's expression `e`) into
/// `[lhs] OP [rhs]`. Returns `false` if the source does not look as expected.
fn guard_assignment(
    src: &str,
    e: &Expr,
    op: &AssignOp,
    lhs: &Expr,
    rhs: &Expr,
    inserts: &mut Vec<(usize, char)>,
) -> bool {
    let span = e.span();
    let mut start = span.start as usize;
    let mut end = span.end as usize;
    // String literal spans leave out their quotes; so does a composite expression that
    // begins or ends with one (unless a parenthesis closes it).
    let first = leftmost(lhs);
    if is_string(first) && first.span().start as usize == start {
        start = start.saturating_sub(1);
    }
    let last = rightmost(rhs);
    if is_string(last) && last.span().end as usize == end {
        end += 1;
    }
    let bytes = src.as_bytes();
    let quote_ok = |i: usize| matches!(bytes.get(i), Some(b'"' | b'`'));
    if (start as u32) < span.start && !quote_ok(start) {
        return false;
    }
    if end as u32 > span.end && !quote_ok(end - 1) {
        return false;
    }
    // The operator follows the left side, after closing parentheses and blanks.
    let mut op_at = lhs.span().end as usize;
    if is_string(rightmost(lhs)) {
        op_at += 1;
    }
    while matches!(bytes.get(op_at), Some(b' ' | b'\t' | b'\r' | b'\n' | b')')) {
        op_at += 1;
    }
    let op_len = match op {
        AssignOp::ColEq if src.get(op_at..op_at + 2) == Some(":=") => 2,
        AssignOp::Eq if bytes.get(op_at) == Some(&b'=') && bytes.get(op_at + 1) != Some(&b'=') => 1,
        _ => return false,
    };
    // The operator must not sit inside the left side's parentheses: `(x) := ...` keeps them.
    let lhs_text = src.get(start..op_at).unwrap_or_default();
    if lhs_text.matches('(').count() != lhs_text.matches(')').count() {
        return false;
    }
    inserts.push((start, '['));
    inserts.push((op_at, ']'));
    inserts.push((op_at + op_len, '['));
    inserts.push((end, ']'));
    true
}

/// Every string literal of a module, in source order. The guarded copy must have exactly the
/// same ones, or a bracket landed inside a string.
pub(super) fn string_literals(module: &Module) -> Vec<String> {
    let mut out = Vec::new();
    let src = module.package.span.source.contents();
    let mut spans: Vec<(u32, u32)> = Vec::new();
    let mut v = Visitor::Strings(&mut spans);
    for rule in &module.policy {
        walk_rule(rule, &mut v);
    }
    spans.sort_unstable();
    for (a, b) in spans {
        out.push(
            src.get(a as usize..b as usize)
                .unwrap_or("\u{0}")
                .to_owned(),
        );
    }
    out
}

/// What a walk over the AST does.
enum Visitor<'a> {
    /// Records bracket insertions around guarded assignments in `src`; `ok` turns false if
    /// one could not be placed.
    Guard {
        src: &'a str,
        inserts: &'a mut Vec<(usize, char)>,
        ok: bool,
    },
    /// Records the spans of string literals.
    Strings(&'a mut Vec<(u32, u32)>),
}

fn walk_rule(rule: &Rule, v: &mut Visitor<'_>) {
    match rule {
        Rule::Spec { head, bodies, .. } => {
            match head {
                RuleHead::Compr { refr, assign, .. } => {
                    walk_expr(refr, v);
                    if let Some(a) = assign {
                        walk_expr(&a.value, v);
                    }
                }
                RuleHead::Set { refr, key, .. } => {
                    walk_expr(refr, v);
                    if let Some(k) = key {
                        walk_expr(k, v);
                    }
                }
                RuleHead::Func {
                    refr, args, assign, ..
                } => {
                    walk_expr(refr, v);
                    for a in args {
                        walk_expr(a, v);
                    }
                    if let Some(a) = assign {
                        walk_expr(&a.value, v);
                    }
                }
            }
            for body in bodies {
                if let Some(a) = &body.assign {
                    walk_expr(&a.value, v);
                }
                walk_query(&body.query, v);
            }
        }
        Rule::Default {
            refr, value, args, ..
        } => {
            walk_expr(refr, v);
            for a in args {
                walk_expr(a, v);
            }
            walk_expr(value, v);
        }
    }
}

fn walk_query(q: &Query, v: &mut Visitor<'_>) {
    for stmt in &q.stmts {
        match &stmt.literal {
            Literal::Expr { expr, .. } => {
                if let (
                    Expr::AssignExpr { op, lhs, rhs, .. },
                    Visitor::Guard { src, inserts, ok },
                ) = (expr.as_ref(), &mut *v)
                {
                    let needs_guard = match op {
                        AssignOp::ColEq => is_plain_var(lhs),
                        AssignOp::Eq => is_plain_var(lhs) || is_plain_var(rhs),
                    };
                    if needs_guard && !guard_assignment(src, expr, op, lhs, rhs, inserts) {
                        *ok = false;
                    }
                }
                walk_expr(expr, v);
            }
            Literal::NotExpr { expr, .. } => walk_expr(expr, v),
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(k) = key {
                    walk_expr(k, v);
                }
                walk_expr(value, v);
                walk_expr(collection, v);
            }
            Literal::Every { domain, query, .. } => {
                walk_expr(domain, v);
                walk_query(query, v);
            }
            Literal::SomeVars { .. } => {}
        }
        for w in &stmt.with_mods {
            walk_expr(&w.refr, v);
            walk_expr(&w.r#as, v);
        }
    }
}

fn walk_expr(e: &Expr, v: &mut Visitor<'_>) {
    match e {
        Expr::String { span, .. } | Expr::RawString { span, .. } => {
            if let Visitor::Strings(spans) = v {
                spans.push((span.start, span.end));
            }
        }
        Expr::Number { .. } | Expr::Bool { .. } | Expr::Null { .. } | Expr::Var { .. } => {}
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            for i in items {
                walk_expr(i, v);
            }
        }
        Expr::Object { fields, .. } => {
            for (_, k, val) in fields {
                walk_expr(k, v);
                walk_expr(val, v);
            }
        }
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
            walk_expr(term, v);
            walk_query(query, v);
        }
        Expr::ObjectCompr {
            key, value, query, ..
        } => {
            walk_expr(key, v);
            walk_expr(value, v);
            walk_query(query, v);
        }
        Expr::Call { fcn, params, .. } => {
            walk_expr(fcn, v);
            for p in params {
                walk_expr(p, v);
            }
        }
        Expr::UnaryExpr { expr, .. } => walk_expr(expr, v),
        Expr::RefDot { refr, field, .. } => {
            walk_expr(refr, v);
            // `.field` is an identifier, but record it so a bracket inside it is noticed.
            if let Visitor::Strings(spans) = v {
                spans.push((field.0.start, field.0.end));
            }
        }
        Expr::RefBrack { refr, index, .. } => {
            walk_expr(refr, v);
            walk_expr(index, v);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            walk_expr(lhs, v);
            walk_expr(rhs, v);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => {
            if let Some(k) = key {
                walk_expr(k, v);
            }
            walk_expr(value, v);
            walk_expr(collection, v);
        }
        // Variants behind regorus features this crate does not enable.
        #[allow(unreachable_patterns)]
        _ => {}
    }
}
