//! A small element tree for the API's documents: rendered as oVirt XML or JSON, and
//! parsed from request bodies (XML or JSON) with hard limits and no DTDs (no entity
//! expansion).

use quick_xml::events::Event;
use quick_xml::reader::Reader;
use serde_json::Value;

/// Limits of parsed request documents.
pub const MAX_DEPTH: usize = 32;
pub const MAX_NODES: usize = 20_000;

/// An element: attributes, children, text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
    pub text: Option<String>,
    /// Already serialised (XML or JSON, see [`Node::serialized`]): written as is.
    pub raw: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl Node {
    pub fn new(name: &str) -> Node {
        Node {
            name: name.to_string(),
            ..Node::default()
        }
    }

    /// `<name>text</name>`.
    pub fn leaf(name: &str, text: impl ToString) -> Node {
        Node {
            name: name.to_string(),
            text: Some(text.to_string()),
            ..Node::default()
        }
    }

    pub fn attr(mut self, k: &str, v: impl ToString) -> Node {
        self.attrs.push((k.to_string(), v.to_string()));
        self
    }

    /// Sets (or adds) an attribute.
    pub fn set_attr(&mut self, k: &str, v: impl ToString) {
        match self.attrs.iter_mut().find(|(x, _)| x == k) {
            Some(a) => a.1 = v.to_string(),
            None => self.attrs.push((k.to_string(), v.to_string())),
        }
    }

    pub fn push(&mut self, n: Node) {
        self.children.push(n);
    }

    pub fn with(mut self, n: Node) -> Node {
        self.children.push(n);
        self
    }

    /// Adds `<name>text</name>` when `v` is some.
    pub fn opt(mut self, name: &str, v: Option<impl ToString>) -> Node {
        if let Some(v) = v {
            self.children.push(Node::leaf(name, v));
        }
        self
    }

    /// A reference `<name href=".." id=".."/>`.
    pub fn reference(name: &str, href: &str, id: &str) -> Node {
        Node::new(name).attr("href", href).attr("id", id)
    }

    /// `<link rel=".." href=".."/>`.
    pub fn link(rel: &str, href: &str) -> Node {
        Node::new("link").attr("href", href).attr("rel", rel)
    }

    /// Replaces the first child called `name` (a reference) with `with` (the object).
    pub fn replace(&mut self, name: &str, with: Node) {
        if let Some(c) = self.children.iter_mut().find(|c| c.name == name) {
            *c = with;
        }
    }

    /// `n` serialised now in `json` or XML form, kept as text under `n`'s name: a long
    /// list holds one rendered item at a time instead of every item's tree.
    pub fn serialized(n: &Node, json: bool) -> Node {
        let mut s = String::with_capacity(4096);
        if json {
            super::json::write_item(n, &mut s);
        } else {
            n.write_xml(&mut s);
        }
        Node {
            name: n.name.clone(),
            raw: Some(s),
            ..Node::default()
        }
    }

    pub fn get(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    pub fn attr_of(&self, k: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }

    /// Text of a child element.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|n| n.text.as_deref())
    }

    /// A child's `id` attribute (references), or its `<id>` element in JSON bodies.
    pub fn id(&self) -> Option<&str> {
        self.attr_of("id").or_else(|| self.text_of("id"))
    }

    // ----- rendering ------------------------------------------------------------------

    pub fn to_xml(&self) -> String {
        let mut s = String::with_capacity(1024);
        s.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n");
        self.write_xml(&mut s);
        s
    }

    fn write_xml(&self, s: &mut String) {
        if let Some(r) = &self.raw {
            s.push_str(r);
            return;
        }
        s.push('<');
        s.push_str(&self.name);
        for (k, v) in &self.attrs {
            s.push(' ');
            s.push_str(k);
            s.push_str("=\"");
            escape_into(s, v, true);
            s.push('"');
        }
        if self.children.is_empty() && self.text.is_none() {
            s.push_str("/>");
            return;
        }
        s.push('>');
        if let Some(t) = &self.text {
            escape_into(s, t, false);
        }
        for c in &self.children {
            c.write_xml(s);
        }
        s.push_str("</");
        s.push_str(&self.name);
        s.push('>');
    }

    /// [`Node::to_json`] serialised, written straight from the tree (no intermediate
    /// `Value`: a 5,000-VM list would need it twice in memory). Same text as
    /// `to_json().to_string()`: keys sorted, a later key of the same name wins.
    pub fn to_json_string(&self) -> String {
        super::json::to_string(self)
    }

    /// oVirt's JSON shape (see `api::json`), as a value.
    pub fn to_json(&self) -> Value {
        serde_json::from_str(&self.to_json_string()).unwrap_or(Value::Null)
    }

    // ----- parsing ----------------------------------------------------------------------

    /// Parses an XML request body: no DOCTYPE (so no entity expansion), bounded depth
    /// and size, well-formed or an error.
    pub fn parse_xml(data: &[u8]) -> Result<Node, ParseError> {
        let text =
            std::str::from_utf8(data).map_err(|_| ParseError("the body is not UTF-8".into()))?;
        let mut r = Reader::from_str(text);
        r.config_mut().check_end_names = true;
        let mut stack: Vec<Node> = Vec::new();
        let mut root: Option<Node> = None;
        let mut count = 0usize;
        loop {
            let ev = r
                .read_event()
                .map_err(|e| ParseError(format!("malformed XML: {e}")))?;
            match ev {
                Event::DocType(_) => {
                    return Err(ParseError("DOCTYPE declarations are not accepted".into()))
                }
                Event::Start(ref e) | Event::Empty(ref e) => {
                    count += 1;
                    if count > MAX_NODES {
                        return Err(ParseError("too many elements".into()));
                    }
                    if root.is_some() {
                        return Err(ParseError("more than one root element".into()));
                    }
                    let mut n = Node::new(&String::from_utf8_lossy(e.local_name().as_ref()));
                    if halyard_common::xml::check_attribute_count(e).is_err() {
                        return Err(ParseError(format!(
                            "<{}> has more than {} attributes",
                            n.name,
                            halyard_common::xml::MAX_ATTRIBUTES
                        )));
                    }
                    for a in e.attributes() {
                        let a = a.map_err(|e| ParseError(format!("malformed attribute: {e}")))?;
                        let v = a
                            .unescape_value()
                            .map_err(|e| ParseError(format!("malformed attribute: {e}")))?;
                        n.attrs.push((
                            String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned(),
                            v.into_owned(),
                        ));
                    }
                    if matches!(ev, Event::Start(_)) {
                        stack.push(n);
                        if stack.len() > MAX_DEPTH {
                            return Err(ParseError("elements nested too deep".into()));
                        }
                    } else {
                        match stack.last_mut() {
                            Some(p) => p.children.push(n),
                            None => root = Some(n),
                        }
                    }
                }
                Event::End(_) => {
                    let n = stack
                        .pop()
                        .ok_or_else(|| ParseError("unbalanced end tag".into()))?;
                    match stack.last_mut() {
                        Some(p) => p.children.push(n),
                        None => root = Some(n),
                    }
                }
                Event::Text(t) => {
                    let s = t
                        .decode()
                        .map_err(|e| ParseError(format!("bad text: {e}")))?;
                    push_text(&mut stack, &s)?;
                }
                Event::GeneralRef(g) => {
                    let raw: &[u8] = &g;
                    let s = match halyard_common::text::xml_reference(raw) {
                        Some(c) => c.to_string(),
                        None => {
                            return Err(ParseError(format!(
                                "unknown entity &{};",
                                String::from_utf8_lossy(raw)
                            )))
                        }
                    };
                    push_text(&mut stack, &s)?;
                }
                Event::CData(c) => push_text(&mut stack, &String::from_utf8_lossy(&c))?,
                Event::Eof => break,
                _ => {}
            }
        }
        if !stack.is_empty() {
            return Err(ParseError("unclosed elements".into()));
        }
        let mut root = root.ok_or_else(|| ParseError("empty document".into()))?;
        trim_texts(&mut root);
        Ok(root)
    }

    /// Parses a JSON request body as an element named `name`.
    pub fn parse_json(name: &str, data: &[u8]) -> Result<Node, ParseError> {
        let v: Value =
            serde_json::from_slice(data).map_err(|e| ParseError(format!("malformed JSON: {e}")))?;
        let mut count = 0;
        from_json(name, &v, 0, &mut count)
    }
}

fn push_text(stack: &mut [Node], s: &str) -> Result<(), ParseError> {
    if let Some(top) = stack.last_mut() {
        let t = top.text.get_or_insert_with(String::new);
        if t.len() + s.len() > 1 << 20 {
            return Err(ParseError("text too long".into()));
        }
        t.push_str(s);
    } else if !s.trim().is_empty() {
        return Err(ParseError("text outside the root element".into()));
    }
    Ok(())
}

fn trim_texts(n: &mut Node) {
    if let Some(t) = &n.text {
        if !n.children.is_empty() && t.trim().is_empty() {
            n.text = None;
        } else if t.trim().is_empty() {
            n.text = Some(String::new());
        }
    }
    for c in &mut n.children {
        trim_texts(c);
    }
}

fn from_json(name: &str, v: &Value, depth: usize, count: &mut usize) -> Result<Node, ParseError> {
    *count += 1;
    if depth > MAX_DEPTH || *count > MAX_NODES {
        return Err(ParseError("JSON document too deep or too large".into()));
    }
    let mut n = Node::new(name);
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("id" | "href", Value::String(s)) => n.attrs.push((k.clone(), s.clone())),
                    ("rel", Value::String(s)) if name == "link" => {
                        n.attrs.push((k.clone(), s.clone()))
                    }
                    (_, Value::Array(items)) => {
                        for i in items {
                            n.children.push(from_json(k, i, depth + 1, count)?);
                        }
                    }
                    _ => n.children.push(from_json(k, v, depth + 1, count)?),
                }
            }
        }
        Value::String(s) => n.text = Some(s.clone()),
        Value::Number(x) => n.text = Some(x.to_string()),
        Value::Bool(b) => n.text = Some(b.to_string()),
        Value::Null => {}
        Value::Array(_) => return Err(ParseError(format!("{name}: unexpected list"))),
    }
    Ok(n)
}

fn escape_into(s: &mut String, v: &str, attr: bool) {
    for c in v.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' if attr => s.push_str("&quot;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => s.push(c),
        }
    }
}

/// A JSON string literal, escaped as serde_json escapes it.
pub(super) fn json_str(s: &mut String, v: &str) {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            '\u{8}' => s.push_str("\\b"),
            '\u{c}' => s.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write;
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_json() {
        let n = Node::new("vm")
            .attr("href", "/ovirt-engine/api/vms/1")
            .attr("id", "1")
            .with(Node::leaf("name", "a <&> \"b\""))
            .with(Node::link("nics", "/ovirt-engine/api/vms/1/nics"))
            .with(Node::reference("cluster", "/c", "c1"));
        let x = n.to_xml();
        let back = Node::parse_xml(x.as_bytes()).expect("parses");
        assert_eq!(back.text_of("name"), Some("a <&> \"b\""));
        assert_eq!(back.get("cluster").and_then(Node::id), Some("c1"));
        let j = n.to_json();
        assert_eq!(j["name"], "a <&> \"b\"");
        assert_eq!(j["link"][0]["rel"], "nics");
        let list = Node::new("vms").with(n.clone());
        assert!(list.to_json()["vm"].is_array());
    }

    #[test]
    fn many_attributes_are_refused_in_linear_time() {
        let attrs: String = (0..60_000).map(|i| format!(" a{i}=\"\"")).collect();
        let xml = format!("<vm{attrs}><name>a</name></vm>");
        let t = std::time::Instant::now();
        let e = Node::parse_xml(xml.as_bytes()).expect_err("refused");
        let took = t.elapsed();
        eprintln!(
            "60,000 attributes ({} bytes) refused in {took:?}",
            xml.len()
        );
        assert!(e.0.contains("more than 64 attributes"), "{e}");
        assert!(took < std::time::Duration::from_millis(50), "{took:?}");
    }

    #[test]
    fn refuses_bad_documents() {
        for bad in [
            "<!DOCTYPE lolz [<!ENTITY lol \"lol\">]><vm><name>&lol;</name></vm>",
            "<vm><name>x</vm>",
            "<vm>",
            "",
            "<a/><b/>",
            "<vm><name>&bogus;</name></vm>",
            "text<vm/>",
        ] {
            assert!(Node::parse_xml(bad.as_bytes()).is_err(), "{bad}");
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(Node::parse_xml(deep.as_bytes()).is_err());
    }

    #[test]
    fn json_bodies() {
        let n = Node::parse_json("vm", br#"{"name":"x","memory":1024,"cluster":{"id":"c1"},"nics":{"nic":[{"name":"a"},{"name":"b"}]}}"#)
            .expect("parses");
        assert_eq!(n.text_of("memory"), Some("1024"));
        assert_eq!(n.get("cluster").and_then(Node::id), Some("c1"));
        assert_eq!(n.get("nics").map(|x| x.all("nic").count()), Some(2));
    }

    fn arb_node() -> impl proptest::strategy::Strategy<Value = Node> {
        use proptest::prelude::*;
        let name = prop::sample::select(vec!["vm", "vms", "a", "b", "link", "value", "id"]);
        let text = prop::option::of("[a-z\"\\\\\n\u{1}\u{7f}é]{0,6}");
        let attrs = prop::collection::vec(
            (
                prop::sample::select(vec!["id", "href", "a", "value"]),
                "[a-z\"]{0,4}",
            ),
            0..3,
        );
        let leaf = (name.clone(), text.clone(), attrs.clone()).prop_map(|(n, t, a)| Node {
            name: n.to_string(),
            attrs: a.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            children: Vec::new(),
            text: t,
            raw: None,
        });
        leaf.prop_recursive(4, 40, 6, move |inner| {
            (
                name.clone(),
                text.clone(),
                attrs.clone(),
                prop::collection::vec(inner, 0..6),
            )
                .prop_map(|(n, t, a, c)| Node {
                    name: n.to_string(),
                    attrs: a.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                    children: c,
                    text: t,
                    raw: None,
                })
        })
    }

    proptest::proptest! {
        #[test]
        fn json_writer_writes_json(n in arb_node()) {
            let text = n.to_json_string();
            proptest::prop_assert!(serde_json::from_str::<Value>(&text).is_ok(), "{}", text);
        }

        #[test]
        fn serialized_children_render_the_same(n in arb_node()) {
            // A collection whose items were serialised early gives the same document.
            let mut list = Node::new("items");
            let mut early = Node::new("items");
            for _ in 0..2 {
                list.push(n.clone());
                early.push(Node::serialized(&n, false));
            }
            proptest::prop_assert_eq!(list.to_xml(), early.to_xml());
            let mut early = Node::new("items");
            for _ in 0..2 {
                early.push(Node::serialized(&n, true));
            }
            proptest::prop_assert_eq!(list.to_json_string(), early.to_json_string());
        }

        #[test]
        fn parse_never_panics(s in ".{0,300}") {
            let _ = Node::parse_xml(s.as_bytes());
            let _ = Node::parse_json("x", s.as_bytes());
        }
    }
}

/// Serde of a [`Node`] as its XML text (stored documents).
pub mod as_xml {
    use super::Node;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &Node, s: S) -> Result<S::Ok, S::Error> {
        let mut x = String::new();
        n.write_xml(&mut x);
        s.serialize_str(&x)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        let x = String::deserialize(d)?;
        Node::parse_xml(x.as_bytes()).map_err(serde::de::Error::custom)
    }
}
