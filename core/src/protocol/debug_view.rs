//! Reads a value's `{:?}` text back into a tree, so that two codecs' views of one message can
//! be compared field by field even where their Rust types differ (newtypes, string types).
//! Test-only.

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum View {
    /// `Name { field: value, .. }`
    Struct(String, Vec<(String, View)>),
    /// `Name(value, ..)`: `Some(..)`, enum variants, tuple structs.
    Tuple(String, Vec<View>),
    /// `[a, b]`
    List(Vec<View>),
    /// `{k: v, ..}`
    Map(Vec<(View, View)>),
    /// A literal: number, string, byte string, identifier (`None`, `true`), uuid.
    Atom(String),
}

pub(crate) fn parse(text: &str) -> View {
    let tokens = tokenize(text);
    let mut at = 0;
    let view = value(&tokens, &mut at);
    assert_eq!(at, tokens.len(), "trailing tokens in {text}");
    view
}

fn tokenize(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if "{}[](),:".contains(c) {
            tokens.push(c.to_string());
            i += 1;
        } else if c == '"' || (c == 'b' && chars.get(i + 1) == Some(&'"')) {
            let start = i;
            i += if c == 'b' { 2 } else { 1 };
            while chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            tokens.push(chars[start..i].iter().collect());
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && !"{}[](),:\"".contains(chars[i]) {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        }
    }
    tokens
}

fn value(tokens: &[String], at: &mut usize) -> View {
    let token = tokens[*at].clone();
    *at += 1;
    match token.as_str() {
        "[" => {
            let mut items = Vec::new();
            while tokens[*at] != "]" {
                items.push(value(tokens, at));
                if tokens[*at] == "," {
                    *at += 1;
                }
            }
            *at += 1;
            View::List(items)
        }
        "{" => {
            let mut entries = Vec::new();
            while tokens[*at] != "}" {
                let key = value(tokens, at);
                assert_eq!(tokens[*at], ":");
                *at += 1;
                entries.push((key, value(tokens, at)));
                if tokens[*at] == "," {
                    *at += 1;
                }
            }
            *at += 1;
            View::Map(entries)
        }
        _ if tokens.get(*at).map(String::as_str) == Some("{") => {
            *at += 1;
            let mut fields = Vec::new();
            while tokens[*at] != "}" {
                let name = tokens[*at].clone();
                assert_eq!(tokens[*at + 1], ":");
                *at += 2;
                fields.push((name, value(tokens, at)));
                if tokens[*at] == "," {
                    *at += 1;
                }
            }
            *at += 1;
            View::Struct(token, fields)
        }
        _ if tokens.get(*at).map(String::as_str) == Some("(") => {
            *at += 1;
            let mut items = Vec::new();
            while tokens[*at] != ")" {
                items.push(value(tokens, at));
                if tokens[*at] == "," {
                    *at += 1;
                }
            }
            *at += 1;
            View::Tuple(token, items)
        }
        _ => View::Atom(token),
    }
}

/// Checks that `theirs` says what `ours` says. Fields `theirs` has and `ours` lacks (from
/// versions beyond ours) are ignored; every field of ours must be there, in the same order.
pub(crate) fn compare(ours: &View, theirs: &View, path: &str) -> Result<(), String> {
    match (ours, theirs) {
        (View::Struct(_, a), View::Struct(_, b)) => {
            let mut rest = b.iter();
            for (name, mine) in a {
                let Some((_, other)) = rest.find(|(n, _)| n == name) else {
                    return Err(format!(
                        "{path}.{name}: missing or out of order in the oracle's view"
                    ));
                };
                compare(mine, other, &format!("{path}.{name}"))?;
            }
            Ok(())
        }
        (View::Tuple(x, a), View::Tuple(y, b)) if x == y && a.len() == b.len() => {
            for (i, (mine, other)) in a.iter().zip(b).enumerate() {
                compare(mine, other, &format!("{path}.{x}{i}"))?;
            }
            Ok(())
        }
        (View::List(a), View::List(b)) if a.len() == b.len() => {
            for (i, (mine, other)) in a.iter().zip(b).enumerate() {
                compare(mine, other, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (View::Map(a), View::Map(b)) if a.len() == b.len() => {
            for ((k1, v1), (k2, v2)) in a.iter().zip(b) {
                compare(k1, k2, path)?;
                compare(v1, v2, path)?;
            }
            Ok(())
        }
        (View::Atom(a), View::Atom(b)) if a == b => Ok(()),
        _ => Err(format!("{path}: keel {ours:?} but oracle {theirs:?}")),
    }
}
