#![allow(clippy::unwrap_used, clippy::expect_used)]
use regorus::Engine;
use regorus::unstable::*;
#[test]
fn spans() {
    let src = "package p\nr if {\n x := (1) + (2)\n x2 := (\"a\")\n x3 := \"a\" # c\n x4 := \"a\"; x5 := \"]\" \n x6 = (7)\n (8) = x7\n x := \"ab\"\n y := `raw`\n z := \"a\" + \"b\"\n w := f(1)\n v := input[\"k\"]\n u := {\"a\": 1}\n t := [1, \"s\"]\n s := {1}\n q := -1\n o := (1 + 2)\n n := \"é\"\n m := data.x.y\n l := count([1])\n k := \"x\" in {\"x\"}\n j := 1 == 2\n h := [a | a := 1]\n}\nf(a) := a\n";
    let mut e = Engine::new();
    e.add_policy("p.rego".into(), src.into()).unwrap();
    for m in e.get_modules().iter() {
        for r in &m.policy {
            if let Rule::Spec { bodies, .. } = r.as_ref() {
                for b in bodies {
                    for s in &b.query.stmts {
                        println!(
                            "stmt {:?}",
                            &src[s.span.start as usize..s.span.end as usize]
                        );
                        if let Literal::Expr { expr, .. } = &s.literal {
                            println!(
                                "  expr {:?}",
                                &src[expr.span().start as usize..expr.span().end as usize]
                            );
                            if let Expr::AssignExpr { lhs, rhs, .. } = expr.as_ref() {
                                let sp = rhs.span();
                                println!(
                                    "lhs {:?} rhs text={:?} src={:?}",
                                    lhs.span().text(),
                                    sp.text(),
                                    &src[sp.start as usize..sp.end as usize]
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
