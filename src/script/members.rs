//! Which members of a JSON body a script can reach, read from its syntax once at compile time.
//!
//! Converting a whole body into script values costs more than the rest of the request
//! (bench/README.md, "Route scripts"). When every use of the body parameter names a member
//! (`body.total`, `body["items"]`, `body.remove("internal")`) or hands the body back as it is
//! (`return body`), the members never named cannot be observed, so they are kept as the text
//! they came as and written back verbatim. Any other use (`keys()`, a loop, passing the body
//! on, a computed index) makes the whole body reachable and it is converted whole.

use rhai::{AST, ASTNode, Expr, Stmt};
use std::collections::HashSet;

/// The members of `param` the script names, or `None` when it may reach any member.
pub fn named(ast: &AST, param: &str) -> Option<HashSet<String>> {
    let mut members = HashSet::new();
    let mut whole = false;
    ast.walk(&mut |path: &[ASTNode]| {
        let Some(ASTNode::Expr(node @ Expr::Variable(var, ..))) = path.last() else {
            return true;
        };
        if var.1.as_str() != param {
            return true;
        }
        let parent = path.len().checked_sub(2).map(|i| &path[i]);
        let member = match parent {
            Some(ASTNode::Expr(Expr::Dot(b, ..))) if std::ptr::eq(&b.lhs, *node) => {
                first_member(&b.rhs, false)
            }
            Some(ASTNode::Expr(Expr::Index(b, ..))) if std::ptr::eq(&b.lhs, *node) => {
                first_member(&b.rhs, true)
            }
            Some(ASTNode::Stmt(Stmt::Return(Some(e), ..))) if std::ptr::eq(&**e, *node) => {
                Some(None)
            }
            Some(ASTNode::Stmt(Stmt::Expr(e))) if std::ptr::eq(&**e, *node) => Some(None),
            _ => None,
        };
        match member {
            Some(Some(name)) => {
                members.insert(name);
                true
            }
            Some(None) => true,
            None => {
                whole = true;
                false
            }
        }
    });
    (!whole).then_some(members)
}

/// The member an access chain starts with: `Some(Some(name))`, or `None` when the chain does
/// something else with the body itself (a method other than `remove` with a constant, a
/// computed index).
fn first_member(rhs: &Expr, indexed: bool) -> Option<Option<String>> {
    match rhs {
        Expr::Property(p, ..) if !indexed => Some(Some(p.2.to_string())),
        Expr::StringConstant(s, ..) if indexed => Some(Some(s.to_string())),
        Expr::Dot(b, ..) | Expr::Index(b, ..) => first_member(&b.lhs, indexed),
        Expr::MethodCall(f, ..) if !indexed && f.name == "remove" && f.args.len() == 1 => {
            match &f.args[0] {
                Expr::StringConstant(s, ..) => Some(Some(s.to_string())),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(body: &str) -> Option<Vec<String>> {
        let ast = rhai::Engine::new()
            .compile(format!("fn on_response_body(req, res, body) {{ {body} }}"))
            .unwrap();
        named(&ast, "body").map(|set| {
            let mut v: Vec<_> = set.into_iter().collect();
            v.sort();
            v
        })
    }

    #[test]
    fn member_uses_are_collected_and_other_uses_make_it_whole() {
        let named = members(
            "body.a = body.b; body.remove(\"c\"); body[\"d\"].x = 1; body.e[0].f += 1; body",
        );
        assert_eq!(named.unwrap(), ["a", "b", "c", "d", "e"]);
        assert_eq!(members("return body;").unwrap(), Vec::<String>::new());
        for whole in [
            "body.keys()",
            "for k in body {} body",
            "let k = \"a\"; body[k]",
            "#{wrapped: body}",
            "json_encode(body)",
            "let b = body; b",
            "body.remove(req.x)",
            "body == #{}",
            "body.len()",
        ] {
            assert_eq!(members(whole), None, "{whole}");
        }
    }
}
