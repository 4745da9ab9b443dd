//! oVirt search queries: `name=web*`, `name="a b"`, `status=up and cluster=Default`,
//! `name!=x`. Matching is case-insensitive (as the engine's default); `*` is a
//! wildcard. Anything else is refused with a clear message rather than ignored, so a
//! client never acts on the wrong object.

#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub field: String,
    pub negated: bool,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    pub terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid search: {0}")]
pub struct SearchError(pub String);

fn split_and(q: &str) -> Result<Vec<String>, SearchError> {
    // Split on the word `and` outside quotes.
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut in_q = false;
    let words: Vec<char> = q.chars().collect();
    let mut i = 0;
    while i < words.len() {
        let c = words[i];
        if c == '"' {
            in_q = !in_q;
            cur.push(c);
            i += 1;
            continue;
        }
        if !in_q && c.is_whitespace() {
            // " and " ?
            let rest: String = words[i..].iter().collect();
            let lower = rest.to_ascii_lowercase();
            if lower.starts_with(" and ") || lower.starts_with("\tand ") {
                parts.push(cur.trim().to_string());
                cur.clear();
                i += 5;
                continue;
            }
        }
        cur.push(c);
        i += 1;
    }
    if in_q {
        return Err(SearchError("unterminated quote".into()));
    }
    parts.push(cur.trim().to_string());
    Ok(parts.into_iter().filter(|p| !p.is_empty()).collect())
}

/// Parses a query; `fields` are the names this collection knows.
pub fn parse(q: &str, fields: &[&str]) -> Result<Query, SearchError> {
    let q = q.trim();
    if q.is_empty() {
        return Ok(Query::default());
    }
    if q.len() > 1024 {
        return Err(SearchError("query too long".into()));
    }
    let mut terms = Vec::new();
    for part in split_and(q)? {
        if part.to_ascii_lowercase().contains(" or ") {
            return Err(SearchError("'or' is not supported".into()));
        }
        let (field, negated, value) = if let Some((f, v)) = part.split_once("!=") {
            (f, true, v)
        } else if let Some((f, v)) = part.split_once('=') {
            (f, false, v)
        } else {
            return Err(SearchError(format!("expected field=value, got {part:?}")));
        };
        let field = field.trim().to_ascii_lowercase();
        if !fields.contains(&field.as_str()) {
            return Err(SearchError(format!(
                "unknown field {field:?} (known: {})",
                fields.join(", ")
            )));
        }
        let v = value.trim();
        let v = if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
            &v[1..v.len() - 1]
        } else {
            if v.contains('"') || v.chars().any(char::is_whitespace) {
                return Err(SearchError(format!("quote values with spaces: {v:?}")));
            }
            v
        };
        terms.push(Term {
            field,
            negated,
            value: v.to_string(),
        });
    }
    Ok(Query { terms })
}

/// Case-insensitive glob with `*`.
pub fn glob(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = s.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

impl Query {
    /// True if the object matches; `value_of(field)` gives the object's values for a
    /// field (several for fields such as names of linked objects).
    pub fn matches(&self, value_of: impl Fn(&str) -> Vec<String>) -> bool {
        self.terms.iter().all(|t| {
            let vals = value_of(&t.field);
            let hit = vals.iter().any(|v| glob(&t.value, v));
            hit != t.negated
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_clients_send() {
        let f = &[
            "name",
            "status",
            "cluster",
            "datacenter",
            "storage.name",
            "vm_names",
        ];
        let q = parse("name=web*", f).expect("ok");
        assert!(q.matches(|_| vec!["Web01".into()]));
        assert!(!q.matches(|_| vec!["db".into()]));
        let q = parse("name=\"a b\" and cluster=Default", f).expect("ok");
        assert_eq!(q.terms.len(), 2);
        assert_eq!(q.terms[0].value, "a b");
        let q = parse("name!=x", f).expect("ok");
        assert!(q.matches(|_| vec!["y".into()]));
        let q = parse("name=\"D\" and Storage.name=\"S\" and vm_names=\"V\"", f).expect("ok");
        assert_eq!(q.terms[1].field, "storage.name");
        assert_eq!(parse("", f).expect("ok"), Query::default());
        for bad in [
            "name",
            "bogus=1",
            "name=\"unterminated",
            "name=a b",
            "name=x or name=y",
            "name='; DROP TABLE objects; --",
        ] {
            assert!(parse(bad, f).is_err(), "{bad}");
        }
        // SQL-like text inside quotes is just a value.
        let q = parse("name=\"x'; DROP TABLE objects; --\"", f).expect("quoted");
        assert!(q.matches(|_| vec!["x'; DROP TABLE objects; --".into()]));
    }

    #[test]
    fn globs() {
        assert!(glob("a*c", "abbbc"));
        assert!(glob("*", ""));
        assert!(!glob("a*c", "abd"));
        assert!(glob("A?", "a?"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = parse(&s, &["name"]);
        }
    }
}
