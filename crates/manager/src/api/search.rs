//! oVirt's search language, as the engine's search backend reads a `search=` query:
//!
//! ```text
//! query     := [expr] ["sortby" field ["asc" | "desc"]] ["page" N]
//! expr      := and-expr ("or" and-expr)*
//! and-expr  := condition ("and" condition)*
//! condition := field op value | value          (a bare value is name=value)
//! op        := "=" | "!=" | "<" | ">" | "<=" | ">="
//! ```
//!
//! Values may be quoted (`"a b"`); `*` is a wildcard for `=` and `!=`. Conditions on
//! other objects name them as the engine does: `cluster=Default`, `Clusters.name=x`,
//! `datacenter=Default`, `Vms.status=up`, `host=h1`. Matching is case-sensitive unless
//! the request says `case_sensitive=false` (the API's default). `<`, `>`, `<=`, `>=`
//! compare numbers as numbers, everything else as text. `!=` holds when no value of the
//! field matches. Anything else is refused with a message naming it rather than ignored,
//! so a client never acts on the wrong object.

use std::cmp::Ordering;

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Ge => ">=",
        }
    }
}

/// `field op value`; `field` is normalised (lower case, `Clusters.name` -> `cluster`).
#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    pub field: String,
    pub op: Op,
    pub value: String,
}

/// A parsed query: conditions in disjunctive normal form (`or` of `and`s, as the
/// grammar has no parentheses), the order and the page.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub any: Vec<Vec<Cond>>,
    /// (field, descending)
    pub sort: Option<(String, bool)>,
    /// 1-based.
    pub page: Option<usize>,
    pub case_sensitive: bool,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            any: Vec::new(),
            sort: None,
            page: None,
            case_sensitive: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid search: {0}")]
pub struct SearchError(pub String);

/// Longest query and most conditions accepted.
pub const MAX_QUERY: usize = 4096;
pub const MAX_CONDITIONS: usize = 64;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Op(Op),
}

fn tokens(q: &str) -> Result<Vec<Tok>, SearchError> {
    let c: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
            continue;
        }
        if ch == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match c.get(i) {
                    None => return Err(SearchError("unterminated quote".into())),
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some('\\') if matches!(c.get(i + 1), Some('"') | Some('\\')) => {
                        s.push(c[i + 1]);
                        i += 2;
                    }
                    Some(x) => {
                        s.push(*x);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Quoted(s));
            continue;
        }
        let two: String = c[i..(i + 2).min(c.len())].iter().collect();
        let op = match two.as_str() {
            "!=" => Some((Op::Ne, 2)),
            "<=" => Some((Op::Le, 2)),
            ">=" => Some((Op::Ge, 2)),
            _ => match ch {
                '=' => Some((Op::Eq, 1)),
                '<' => Some((Op::Lt, 1)),
                '>' => Some((Op::Gt, 1)),
                _ => None,
            },
        };
        if let Some((op, n)) = op {
            out.push(Tok::Op(op));
            i += n;
            continue;
        }
        if ch == '!' {
            return Err(SearchError("'!' must be followed by '='".into()));
        }
        let mut s = String::new();
        while i < c.len() && !c[i].is_whitespace() && !"=!<>\"".contains(c[i]) {
            s.push(c[i]);
            i += 1;
        }
        out.push(Tok::Word(s));
    }
    Ok(out)
}

fn keyword(t: &Tok, k: &str) -> bool {
    matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case(k))
}

/// The engine's names of other objects, singular: `Clusters.name` and `cluster` are
/// one field.
fn entity(prefix: &str) -> &str {
    match prefix {
        "clusters" | "cluster" => "cluster",
        "datacenters" | "datacenter" | "data_center" | "data_centers" => "datacenter",
        "hosts" | "host" => "host",
        "vms" | "vm" => "vm",
        "templates" | "template" => "template",
        "storage" | "storages" | "storagedomains" | "storagedomain" | "storage_domain" => "storage",
        "networks" | "network" => "network",
        "tags" | "tag" => "tag",
        "disks" | "disk" => "disk",
        "users" | "user" => "user",
        "pools" | "pool" | "vmpools" | "vmpool" => "pool",
        other => other,
    }
}

/// Normalises a field name; checks it against the collection's `fields`.
fn field_name(raw: &str, fields: &[&str]) -> Result<String, SearchError> {
    let l = raw.to_ascii_lowercase();
    let norm = match l.split_once('.') {
        Some((e, f)) => {
            let e = entity(e);
            if f == "name" && fields.contains(&e) {
                e.to_string()
            } else {
                format!("{e}.{f}")
            }
        }
        None => l,
    };
    if fields.contains(&norm.as_str()) {
        Ok(norm)
    } else {
        Err(SearchError(format!(
            "unknown field {raw:?} (known: {})",
            fields.join(", ")
        )))
    }
}

fn value_of(t: Option<&Tok>) -> Result<String, SearchError> {
    match t {
        Some(Tok::Word(w)) => Ok(w.clone()),
        Some(Tok::Quoted(q)) => Ok(q.clone()),
        Some(Tok::Op(o)) => Err(SearchError(format!(
            "a value was expected after {}",
            o.as_str()
        ))),
        None => Err(SearchError("a value was expected".into())),
    }
}

/// Parses a query; `fields` are the names this collection knows (`name` first: bare
/// values match it).
pub fn parse(q: &str, fields: &[&str], case_sensitive: bool) -> Result<Query, SearchError> {
    if q.len() > MAX_QUERY {
        return Err(SearchError("query too long".into()));
    }
    let t = tokens(q)?;
    let mut query = Query {
        case_sensitive,
        ..Query::default()
    };
    let mut i = 0;
    let mut and: Vec<Cond> = Vec::new();
    let mut count = 0;
    let mut expect_cond = true;
    while i < t.len() {
        if keyword(&t[i], "sortby") || keyword(&t[i], "page") {
            break;
        }
        if !expect_cond {
            if keyword(&t[i], "and") {
                expect_cond = true;
                i += 1;
                continue;
            }
            if keyword(&t[i], "or") {
                query.any.push(std::mem::take(&mut and));
                expect_cond = true;
                i += 1;
                continue;
            }
            return Err(SearchError(format!(
                "'and' or 'or' expected before {:?}",
                describe(&t[i])
            )));
        }
        count += 1;
        if count > MAX_CONDITIONS {
            return Err(SearchError(format!(
                "more than {MAX_CONDITIONS} conditions"
            )));
        }
        let cond = match (&t[i], t.get(i + 1)) {
            (Tok::Word(f), Some(Tok::Op(op))) => {
                let c = Cond {
                    field: field_name(f, fields)?,
                    op: *op,
                    value: value_of(t.get(i + 2))?,
                };
                i += 3;
                c
            }
            (Tok::Op(o), _) => {
                return Err(SearchError(format!(
                    "a field was expected before {}",
                    o.as_str()
                )))
            }
            (v, _) => {
                let value = value_of(Some(v))?;
                if !fields.contains(&"name") {
                    return Err(SearchError(format!(
                        "{value:?}: a field=value is needed here"
                    )));
                }
                i += 1;
                Cond {
                    field: "name".into(),
                    op: Op::Eq,
                    value,
                }
            }
        };
        and.push(cond);
        expect_cond = false;
    }
    if expect_cond && (count > 0 || !query.any.is_empty()) {
        return Err(SearchError(
            "a condition is missing after 'and'/'or'".into(),
        ));
    }
    if !and.is_empty() {
        query.any.push(and);
    }
    if i < t.len() && keyword(&t[i], "sortby") {
        let f = match t.get(i + 1) {
            Some(Tok::Word(w)) => field_name(w, fields)?,
            _ => return Err(SearchError("sortby needs a field".into())),
        };
        i += 2;
        let mut desc = false;
        if let Some(k) = t.get(i) {
            if keyword(k, "desc") {
                desc = true;
                i += 1;
            } else if keyword(k, "asc") {
                i += 1;
            }
        }
        query.sort = Some((f, desc));
    }
    if i < t.len() && keyword(&t[i], "page") {
        let n = match t.get(i + 1) {
            Some(Tok::Word(w)) => w.parse::<usize>().ok().filter(|n| *n >= 1),
            _ => None,
        }
        .ok_or_else(|| SearchError("page needs a number from 1".into()))?;
        query.page = Some(n);
        i += 2;
    }
    if let Some(rest) = t.get(i) {
        return Err(SearchError(format!("unexpected {:?}", describe(rest))));
    }
    Ok(query)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => w.clone(),
        Tok::Quoted(q) => format!("\"{q}\""),
        Tok::Op(o) => o.as_str().into(),
    }
}

/// Glob with `*`, case-sensitive or not.
pub fn glob_case(pattern: &str, s: &str, case_sensitive: bool) -> bool {
    let fold = |x: &str| -> Vec<char> {
        if case_sensitive {
            x.chars().collect()
        } else {
            x.to_lowercase().chars().collect()
        }
    };
    let (p, t) = (fold(pattern), fold(s));
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

/// Case-insensitive glob with `*` (patterns in configuration).
pub fn glob(pattern: &str, s: &str) -> bool {
    glob_case(pattern, s, false)
}

/// Orders two values: as numbers when both are, else as text.
pub fn compare(a: &str, b: &str, case_sensitive: bool) -> Ordering {
    match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ if case_sensitive => a.cmp(b),
        _ => a.to_lowercase().cmp(&b.to_lowercase()),
    }
}

impl Cond {
    fn holds(&self, vals: &[String], cs: bool) -> bool {
        let any = |f: &dyn Fn(&String) -> bool| vals.iter().any(f);
        match self.op {
            Op::Eq => any(&|v| glob_case(&self.value, v, cs)),
            Op::Ne => !any(&|v| glob_case(&self.value, v, cs)),
            Op::Lt => any(&|v| compare(v, &self.value, cs) == Ordering::Less),
            Op::Gt => any(&|v| compare(v, &self.value, cs) == Ordering::Greater),
            Op::Le => any(&|v| compare(v, &self.value, cs) != Ordering::Greater),
            Op::Ge => any(&|v| compare(v, &self.value, cs) != Ordering::Less),
        }
    }
}

impl Query {
    pub fn is_empty(&self) -> bool {
        self.any.is_empty()
    }

    /// The value of `field` when every match must have exactly it (one `and` group
    /// holding `field=value` without wildcards, case-sensitive): an index gives the
    /// candidates, the whole query still decides.
    pub fn exact(&self, field: &str) -> Option<&str> {
        if !self.case_sensitive || self.any.len() != 1 {
            return None;
        }
        self.any[0]
            .iter()
            .find(|c| c.field == field && c.op == Op::Eq && !c.value.contains('*'))
            .map(|c| c.value.as_str())
    }

    /// True if the object matches; `value_of(field)` gives the object's values for a
    /// field (several for fields such as tags or the names of linked objects).
    pub fn matches(&self, value_of: impl Fn(&str) -> Vec<String>) -> bool {
        self.any.is_empty()
            || self.any.iter().any(|all| {
                all.iter()
                    .all(|c| c.holds(&value_of(&c.field), self.case_sensitive))
            })
    }

    /// Orders matching objects (by `sortby`, else as given) and picks the page
    /// (`page N` of `page_size`, then at most `max`).
    pub fn arrange<T>(
        &self,
        mut items: Vec<T>,
        value_of: impl Fn(&T, &str) -> Vec<String>,
        max: Option<usize>,
    ) -> Vec<T> {
        if let Some((f, desc)) = &self.sort {
            let cs = self.case_sensitive;
            let key = |t: &T| value_of(t, f).into_iter().next().unwrap_or_default();
            let mut keyed: Vec<(String, T)> = items.into_iter().map(|t| (key(&t), t)).collect();
            keyed.sort_by(|a, b| {
                let o = compare(&a.0, &b.0, cs);
                if *desc {
                    o.reverse()
                } else {
                    o
                }
            });
            items = keyed.into_iter().map(|(_, t)| t).collect();
        }
        let size = max.unwrap_or(DEFAULT_PAGE_SIZE);
        let skip = self.page.map(|p| (p - 1).saturating_mul(size)).unwrap_or(0);
        items
            .into_iter()
            .skip(skip)
            .take(max.unwrap_or(usize::MAX))
            .collect()
    }
}

/// Page size of `page N` without `max` (the engine's `SearchResultsLimit`).
pub const DEFAULT_PAGE_SIZE: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;

    const F: &[&str] = &[
        "name",
        "status",
        "cluster",
        "datacenter",
        "memory",
        "vm.status",
        "tag",
    ];

    fn p(q: &str) -> Query {
        parse(q, F, true).unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    #[test]
    fn the_engines_syntax() {
        let q = p("name=web* and cluster=Default or status!=up sortby name desc page 2");
        assert_eq!(q.any.len(), 2);
        assert_eq!(q.any[0].len(), 2);
        assert_eq!(q.sort, Some(("name".into(), true)));
        assert_eq!(q.page, Some(2));
        let q = p("Clusters.name=c1 and Datacenter.name = \"Default\" and Vms.status=up");
        assert_eq!(q.any[0][0].field, "cluster");
        assert_eq!(q.any[0][1].field, "datacenter");
        assert_eq!(q.any[0][2].field, "vm.status");
        assert_eq!(q.any[0][1].value, "Default");
        let q = p("memory >= 1024 and memory<4096");
        assert_eq!(q.any[0][0].op, Op::Ge);
        assert_eq!(q.any[0][1].op, Op::Lt);
        let q = p("web01");
        assert_eq!(
            q.any[0][0],
            Cond {
                field: "name".into(),
                op: Op::Eq,
                value: "web01".into()
            }
        );
        assert_eq!(p("sortby name").sort, Some(("name".into(), false)));
        assert_eq!(p("page 3").page, Some(3));
        assert!(p("").is_empty());
        for bad in [
            "bogus=1",
            "name=\"unterminated",
            "name=a b",
            "name=",
            "=a",
            "name=a and",
            "name=a or",
            "sortby",
            "sortby bogus",
            "page 0",
            "page x",
            "name ! a",
            "name=a sortby name page 1 extra",
        ] {
            assert!(parse(bad, F, true).is_err(), "{bad}");
        }
        // SQL-like text inside quotes is just a value.
        let q = p("name=\"x'; DROP TABLE objects; --\"");
        assert!(q.matches(|_| vec!["x'; DROP TABLE objects; --".into()]));
    }

    #[test]
    fn matching_and_order() {
        let objs = vec![
            ("web1", "up", "2048"),
            ("Web2", "down", "512"),
            ("db", "up", "4096"),
        ];
        let val = |o: &(&str, &str, &str), f: &str| -> Vec<String> {
            match f {
                "name" => vec![o.0.into()],
                "status" => vec![o.1.into()],
                "memory" => vec![o.2.into()],
                _ => vec![],
            }
        };
        let run = |q: &str, cs: bool| -> Vec<&str> {
            let q = parse(q, F, cs).expect("parses");
            let hits: Vec<_> = objs
                .iter()
                .filter(|o| q.matches(|f| val(o, f)))
                .cloned()
                .collect();
            q.arrange(hits, val, None)
                .into_iter()
                .map(|o| o.0)
                .collect()
        };
        assert_eq!(run("name=web*", true), vec!["web1"]);
        assert_eq!(run("name=web*", false), vec!["web1", "Web2"]);
        assert_eq!(
            run("memory > 1000 sortby memory desc", true),
            vec!["db", "web1"]
        );
        assert_eq!(run("status=down or name=db", true), vec!["Web2", "db"]);
        assert_eq!(run("status!=up", true), vec!["Web2"]);
        assert_eq!(run("sortby memory", true), vec!["Web2", "web1", "db"]);
        let q = parse("sortby memory page 2", F, true).expect("ok");
        let page: Vec<_> = q
            .arrange(objs.clone(), val, Some(2))
            .into_iter()
            .map(|o| o.0)
            .collect();
        assert_eq!(page, vec!["db"]);
        // A field with no value: != holds, = does not.
        assert_eq!(run("tag=x", true), Vec::<&str>::new());
        assert_eq!(run("tag!=x", true).len(), 3);
    }

    #[test]
    fn globs() {
        assert!(glob("a*c", "abbbc"));
        assert!(glob("*", ""));
        assert!(!glob("a*c", "abd"));
        assert!(glob("A?", "a?"));
        assert!(!glob_case("A*", "a", true));
    }

    /// A reference evaluator: the meaning of a condition, written as plainly as
    /// possible, to check the parser and evaluator against.
    fn reference(
        any: &[Vec<(String, Op, String)>],
        obj: &[(String, Vec<String>)],
        cs: bool,
    ) -> bool {
        let norm = |s: &str| if cs { s.to_string() } else { s.to_lowercase() };
        let wild = |p: &str, v: &str| -> bool {
            // Regex-free: split the pattern on '*' and find the pieces in order.
            let (p, v) = (norm(p), norm(v));
            let parts: Vec<&str> = p.split('*').collect();
            if parts.len() == 1 {
                return p == v;
            }
            let mut rest = v.as_str();
            if !rest.starts_with(parts[0]) {
                return false;
            }
            rest = &rest[parts[0].len()..];
            for mid in &parts[1..parts.len() - 1] {
                match rest.find(mid) {
                    Some(i) => rest = &rest[i + mid.len()..],
                    None => return false,
                }
            }
            rest.ends_with(parts[parts.len() - 1])
        };
        any.iter().any(|all| {
            all.iter().all(|(f, op, val)| {
                let vals: Vec<String> = obj
                    .iter()
                    .find(|(k, _)| k == f)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                let ord = |v: &String| compare(v, val, cs);
                match op {
                    Op::Eq => vals.iter().any(|v| wild(val, v)),
                    Op::Ne => !vals.iter().any(|v| wild(val, v)),
                    Op::Lt => vals.iter().any(|v| ord(v).is_lt()),
                    Op::Gt => vals.iter().any(|v| ord(v).is_gt()),
                    Op::Le => vals.iter().any(|v| ord(v).is_le()),
                    Op::Ge => vals.iter().any(|v| ord(v).is_ge()),
                }
            })
        })
    }

    fn print(any: &[Vec<(String, Op, String)>]) -> String {
        any.iter()
            .map(|all| {
                all.iter()
                    .map(|(f, op, v)| {
                        format!(
                            "{f} {} \"{}\"",
                            op.as_str(),
                            v.replace('\\', "\\\\").replace('"', "\\\"")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" and ")
            })
            .collect::<Vec<_>>()
            .join(" or ")
    }

    proptest::prop_compose! {
        fn cond()(f in proptest::sample::select(vec!["name", "status", "memory"]),
                  op in proptest::sample::select(vec![Op::Eq, Op::Ne, Op::Lt, Op::Gt, Op::Le, Op::Ge]),
                  v in "[a-cA-C0-9*\" ]{0,4}") -> (String, Op, String) {
            let v = if matches!(op, Op::Eq | Op::Ne) { v } else { v.replace('*', "") };
            (f.to_string(), op, v)
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = parse(&s, F, true);
        }

        #[test]
        fn agrees_with_the_reference(
            any in proptest::collection::vec(proptest::collection::vec(cond(), 1..4), 1..4),
            objs in proptest::collection::vec(proptest::collection::vec("[a-cA-C0-9]{0,3}", 0..3), 3),
            cs in proptest::bool::ANY,
        ) {
            let q = parse(&print(&any), F, cs).expect("a printed query parses");
            let parsed: Vec<Vec<(String, Op, String)>> = q.any.iter()
                .map(|all| all.iter().map(|c| (c.field.clone(), c.op, c.value.clone())).collect())
                .collect();
            proptest::prop_assert_eq!(&parsed, &any);
            let obj: Vec<(String, Vec<String>)> = ["name", "status", "memory"]
                .iter()
                .zip(objs)
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            let got = q.matches(|f| obj.iter().find(|(k, _)| k == f).map(|(_, v)| v.clone()).unwrap_or_default());
            proptest::prop_assert_eq!(got, reference(&any, &obj, cs));
        }
    }
}
