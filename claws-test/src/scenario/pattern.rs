//! `{{var}}` substitution and binding, and matching expected packets (XML, JSON, raw text)
//! against received ones.

use std::collections::HashMap;

use claws_core::stanza::{Element, Node};

/// Variables bound so far: `{{name}}` is replaced by the value.
pub type Vars = HashMap<String, String>;

/// A piece of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Lit(String),
    Var(String),
}

fn tokens(pattern: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find("{{") {
        let Some(close) = rest[open + 2..].find("}}") else {
            break;
        };
        if open > 0 {
            out.push(Token::Lit(rest[..open].to_owned()));
        }
        out.push(Token::Var(
            rest[open + 2..open + 2 + close].trim().to_owned(),
        ));
        rest = &rest[open + 2 + close + 2..];
    }
    if !rest.is_empty() {
        out.push(Token::Lit(rest.to_owned()));
    }
    out
}

/// Replaces every bound `{{var}}` in `text`; unbound ones stay as written.
pub fn substitute(text: &str, vars: &Vars) -> String {
    tokens(text)
        .into_iter()
        .map(|t| match t {
            Token::Lit(l) => l,
            Token::Var(v) => vars
                .get(&v)
                .cloned()
                .unwrap_or_else(|| format!("{{{{{v}}}}}")),
        })
        .collect()
}

/// The names of the `{{var}}`s in `text` that are not bound.
pub fn unbound(text: &str, vars: &Vars) -> Vec<String> {
    tokens(text)
        .into_iter()
        .filter_map(|t| match t {
            Token::Var(v) if v != "_" && !vars.contains_key(&v) => Some(v),
            _ => None,
        })
        .collect()
}

/// Matches `actual` against `pattern`: literal text must be equal, a bound `{{var}}` must equal
/// its value, an unbound one matches any text and binds it (`{{_}}` matches without binding).
/// On success the new bindings are added to `vars`.
pub fn match_text(pattern: &str, actual: &str, vars: &mut Vars) -> bool {
    let toks: Vec<Token> = tokens(pattern)
        .into_iter()
        .map(|t| match t {
            Token::Var(v) if vars.contains_key(&v) => Token::Lit(vars[&v].clone()),
            t => t,
        })
        .collect();
    let mut binds = Vars::new();
    if rec(&toks, actual, &mut binds) {
        vars.extend(binds);
        true
    } else {
        false
    }
}

fn rec(toks: &[Token], actual: &str, binds: &mut Vars) -> bool {
    match toks.split_first() {
        None => actual.is_empty(),
        Some((Token::Lit(l), rest)) => actual
            .strip_prefix(l.as_str())
            .is_some_and(|a| rec(rest, a, binds)),
        Some((Token::Var(v), rest)) => {
            if let Some(value) = binds.get(v).cloned() {
                return actual
                    .strip_prefix(value.as_str())
                    .is_some_and(|a| rec(rest, a, binds));
            }
            // Try the shortest value first.
            for end in (0..=actual.len()).filter(|i| actual.is_char_boundary(*i)) {
                let mut attempt = binds.clone();
                if v != "_" {
                    attempt.insert(v.clone(), actual[..end].to_owned());
                }
                if rec(rest, &actual[end..], &mut attempt) {
                    *binds = attempt;
                    return true;
                }
            }
            false
        }
    }
}

fn significant(el: &Element) -> (String, Vec<&Element>) {
    let text: String = el
        .nodes()
        .iter()
        .filter_map(|n| match n {
            Node::Text(t) => Some(t.as_str()),
            Node::Element(_) => None,
        })
        .collect();
    (text.trim().to_owned(), el.children().collect())
}

fn is_decl(name: &str) -> bool {
    name == "xmlns" || name.starts_with("xmlns:")
}

/// Matches a received element against an expected one: same name, the namespace when the
/// expected element names one, the same attributes (values as patterns), the same text (trimmed,
/// as a pattern) and the same child elements in order. Returns where and how they differ.
pub fn match_element(expected: &Element, actual: &Element, vars: &mut Vars) -> Result<(), String> {
    let mut trial = vars.clone();
    match_el(
        expected,
        actual,
        &mut trial,
        &format!("/{}", expected.name()),
    )?;
    *vars = trial;
    Ok(())
}

fn match_el(exp: &Element, act: &Element, vars: &mut Vars, path: &str) -> Result<(), String> {
    if exp.name() != act.name() {
        return Err(format!(
            "{path}: expected element <{}>, got <{}>",
            exp.name(),
            act.name()
        ));
    }
    if let Some(ns) = exp.ns() {
        if act.ns() != Some(ns) {
            return Err(format!(
                "{path}: expected namespace `{ns}`, got {:?}",
                act.ns()
            ));
        }
    }
    for (k, v) in exp.attrs().filter(|(k, _)| !is_decl(k)) {
        match act.attr(k) {
            None => {
                return Err(format!(
                    "{path}: attribute `{k}` missing (expected `{}`)",
                    substitute(v, vars)
                ))
            }
            Some(a) if !match_text(v, a, vars) => {
                return Err(format!(
                    "{path}: attribute `{k}`: expected `{}`, got `{a}`",
                    substitute(v, vars)
                ))
            }
            Some(_) => {}
        }
    }
    if let Some((k, v)) = act
        .attrs()
        .find(|(k, _)| !is_decl(k) && exp.attr(k).is_none())
    {
        return Err(format!("{path}: unexpected attribute {k}=\"{v}\""));
    }
    let (exp_text, exp_children) = significant(exp);
    let (act_text, act_children) = significant(act);
    if !match_text(&exp_text, &act_text, vars) {
        return Err(format!(
            "{path}: text: expected `{}`, got `{act_text}`",
            substitute(&exp_text, vars)
        ));
    }
    if exp_children.len() != act_children.len() {
        let names = |c: &[&Element]| {
            c.iter()
                .map(|e| format!("<{}>", e.name()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        return Err(format!(
            "{path}: expected {} child element(s) [{}], got {} [{}]",
            exp_children.len(),
            names(&exp_children),
            act_children.len(),
            names(&act_children)
        ));
    }
    for (e, a) in exp_children.iter().zip(&act_children) {
        match_el(e, a, vars, &format!("{path}/{}", e.name()))?;
    }
    Ok(())
}

/// Matches received JSON against expected JSON: same structure, strings as patterns.
pub fn match_json(
    expected: &serde_json::Value,
    actual: &serde_json::Value,
    vars: &mut Vars,
) -> Result<(), String> {
    let mut trial = vars.clone();
    match_js(expected, actual, &mut trial, "$")?;
    *vars = trial;
    Ok(())
}

fn match_js(
    exp: &serde_json::Value,
    act: &serde_json::Value,
    vars: &mut Vars,
    path: &str,
) -> Result<(), String> {
    use serde_json::Value;
    match (exp, act) {
        (Value::String(e), Value::String(a)) => {
            if match_text(e, a, vars) {
                Ok(())
            } else {
                Err(format!(
                    "{path}: expected \"{}\", got \"{a}\"",
                    substitute(e, vars)
                ))
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Err(format!(
                    "{path}: expected {} item(s), got {}",
                    e.len(),
                    a.len()
                ));
            }
            for (i, (e, a)) in e.iter().zip(a).enumerate() {
                match_js(e, a, vars, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let av = a.get(k).ok_or_else(|| format!("{path}.{k}: missing"))?;
                match_js(ev, av, vars, &format!("{path}.{k}"))?;
            }
            if let Some(k) = a.keys().find(|k| !e.contains_key(*k)) {
                return Err(format!("{path}.{k}: unexpected key"));
            }
            Ok(())
        }
        (e, a) if e == a => Ok(()),
        (e, a) => Err(format!("{path}: expected {e}, got {a}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_and_substitutes() {
        let mut vars = Vars::new();
        assert!(match_text("id-{{n}}-x", "id-42-x", &mut vars));
        assert_eq!(vars["n"], "42");
        assert!(match_text("{{n}}", "42", &mut vars));
        assert!(!match_text("{{n}}", "43", &mut vars));
        assert!(match_text("{{_}}!", "anything!", &mut vars));
        assert!(!vars.contains_key("_"));
        assert_eq!(substitute("a {{n}} {{m}}", &vars), "a 42 {{m}}");
        assert_eq!(unbound("a {{n}} {{m}}", &vars), ["m"]);
        assert!(match_text("{{a}}@{{b}}", "x@y@z", &mut vars));
        assert_eq!((vars["a"].as_str(), vars["b"].as_str()), ("x", "y@z"));
    }

    #[test]
    fn elements_match_with_bindings_and_say_where_they_differ() {
        let exp: Element = r#"<iq type="result" id="{{id}}"><q xmlns="urn:x">{{v}}</q></iq>"#
            .parse()
            .unwrap();
        let ok: Element =
            r#"<iq xmlns="jabber:client" id="7" type="result"><q xmlns="urn:x"> 3 </q></iq>"#
                .parse()
                .unwrap();
        let mut vars = Vars::new();
        match_element(&exp, &ok, &mut vars).unwrap();
        assert_eq!((vars["id"].as_str(), vars["v"].as_str()), ("7", "3"));
        let bad: Element = r#"<iq type="error" id="7"><q xmlns="urn:x">3</q></iq>"#
            .parse()
            .unwrap();
        let err = match_element(&exp, &bad, &mut Vars::new()).unwrap_err();
        assert_eq!(err, "/iq: attribute `type`: expected `result`, got `error`");
        let extra: Element = r#"<iq type="result" id="7" to="a"><q xmlns="urn:x">3</q></iq>"#
            .parse()
            .unwrap();
        assert!(match_element(&exp, &extra, &mut Vars::new())
            .unwrap_err()
            .contains("unexpected attribute to"));
    }

    #[test]
    fn json_matches_structurally() {
        let exp: serde_json::Value =
            serde_json::from_str(r#"{"op":"sum","r":"{{r}}","l":[1,2]}"#).unwrap();
        let act: serde_json::Value =
            serde_json::from_str(r#"{"l":[1,2],"r":"3","op":"sum"}"#).unwrap();
        let mut vars = Vars::new();
        match_json(&exp, &act, &mut vars).unwrap();
        assert_eq!(vars["r"], "3");
        let act: serde_json::Value =
            serde_json::from_str(r#"{"l":[1],"r":"3","op":"sum"}"#).unwrap();
        assert_eq!(
            match_json(&exp, &act, &mut Vars::new()).unwrap_err(),
            "$.l: expected 2 item(s), got 1"
        );
    }
}
