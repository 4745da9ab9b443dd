//! A small element tree for the API's documents: rendered as oVirt XML or JSON, and
//! parsed from request bodies (XML or JSON) with hard limits and no DTDs (no entity
//! expansion).

use std::borrow::Cow;

use quick_xml::events::Event;
use quick_xml::reader::Reader;
use serde_json::Value;

/// Limits of parsed request documents.
pub const MAX_DEPTH: usize = 32;
pub const MAX_NODES: usize = 20_000;

/// An element or attribute name. Those the code writes are `&'static str` (no
/// allocation: a list of 25,000 VMs has millions of elements); names read from a
/// request are owned.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Name(Cow<'static, str>);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&'static str> for Name {
    fn from(s: &'static str) -> Name {
        Name(Cow::Borrowed(s))
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        Name(Cow::Owned(s))
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Name {
        Name(Cow::Owned(s.clone()))
    }
}

impl From<&Name> for Name {
    fn from(s: &Name) -> Name {
        s.clone()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, o: &str) -> bool {
        self.0 == o
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, o: &&str) -> bool {
        self.0 == *o
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, o: &String) -> bool {
        self.0 == o.as_str()
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, o: &Name) -> bool {
        self == o.as_str()
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, o: &Name) -> bool {
        self.as_str() == o.as_str()
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, o: &Name) -> bool {
        *self == o.as_str()
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

/// An element: attributes, children, text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    pub name: Name,
    pub attrs: Vec<(Name, String)>,
    pub children: Vec<Node>,
    pub text: Option<String>,
    /// Already serialised (XML or JSON, see [`Node::serialized`]): written as is.
    pub raw: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// Writes a list's items into one buffer, in XML or JSON: the opening with the first
/// item (JSON's key is its name), the separators, the closing.
struct ListWriter<'a> {
    s: String,
    name: &'a str,
    json: bool,
    /// This writer opens the list (a second half does not).
    opens: bool,
    n: usize,
    /// How many items the buffer is to hold (its size is guessed from the first).
    expect: usize,
}

impl<'a> ListWriter<'a> {
    fn new(name: &'a str, json: bool, opens: bool, expect: usize) -> ListWriter<'a> {
        ListWriter {
            s: String::new(),
            name,
            json,
            opens,
            n: 0,
            expect,
        }
    }

    fn push(&mut self, item: &Node) {
        let s = &mut self.s;
        if self.n == 0 && self.opens {
            if self.json {
                s.push('{');
                json_str(s, &item.name);
                s.push_str(":[");
            } else {
                s.push('<');
                s.push_str(self.name);
                s.push('>');
            }
        } else if self.n > 0 && self.json {
            s.push(',');
        }
        if self.json {
            super::json::write_item(item, s);
        } else {
            item.write_xml(s);
        }
        self.n += 1;
        if self.n == 1 {
            // The first item tells how long the others are.
            let more = s.len().saturating_mul(self.expect.saturating_sub(1));
            s.reserve(more + self.name.len() + 64);
        }
    }

    /// The list as a node: this writer's items, then `rest` (a second half's items),
    /// then the closing; an empty list is `<name/>` or `{}`.
    fn finish(mut self, rest: &str) -> Node {
        let s = &mut self.s;
        match (self.n, self.json) {
            (0, true) => s.push_str("{}"),
            (0, false) => {
                s.push('<');
                s.push_str(self.name);
                s.push_str("/>");
            }
            (_, true) => {
                if !rest.is_empty() {
                    s.push(',');
                    s.push_str(rest);
                }
                s.push_str("]}");
            }
            (_, false) => {
                s.push_str(rest);
                s.push_str("</");
                s.push_str(self.name);
                s.push('>');
            }
        }
        Node {
            name: self.name.to_string().into(),
            raw: Some(self.s),
            ..Node::default()
        }
    }
}

impl Node {
    pub fn new(name: impl Into<Name>) -> Node {
        Node {
            name: name.into(),
            ..Node::default()
        }
    }

    /// `<name>text</name>`.
    pub fn leaf(name: impl Into<Name>, text: impl ToString) -> Node {
        Node {
            name: name.into(),
            text: Some(text.to_string()),
            ..Node::default()
        }
    }

    pub fn attr(mut self, k: impl Into<Name>, v: impl ToString) -> Node {
        self.attrs.push((k.into(), v.to_string()));
        self
    }

    /// Sets (or adds) an attribute.
    pub fn set_attr(&mut self, k: impl Into<Name>, v: impl ToString) {
        let k = k.into();
        match self.attrs.iter_mut().find(|(x, _)| *x == k) {
            Some(a) => a.1 = v.to_string(),
            None => self.attrs.push((k, v.to_string())),
        }
    }

    pub fn push(&mut self, n: Node) {
        self.children.push(n);
    }

    /// [`Node::with`] when there is a child.
    pub fn with_opt(self, n: Option<Node>) -> Node {
        match n {
            Some(n) => self.with(n),
            None => self,
        }
    }

    pub fn with(mut self, n: Node) -> Node {
        self.children.push(n);
        self
    }

    /// Adds `<name>text</name>` when `v` is some.
    pub fn opt(mut self, name: impl Into<Name>, v: Option<impl ToString>) -> Node {
        if let Some(v) = v {
            self.children.push(Node::leaf(name, v));
        }
        self
    }

    /// A reference `<name href=".." id=".."/>`.
    pub fn reference(name: impl Into<Name>, href: &str, id: &str) -> Node {
        Node::new(name).attr("href", href).attr("id", id)
    }

    /// `<link rel=".." href=".."/>`.
    pub fn link(rel: impl ToString, href: impl Into<String>) -> Node {
        Node {
            name: "link".into(),
            attrs: vec![
                ("href".into(), href.into()),
                ("rel".into(), rel.to_string()),
            ],
            ..Node::default()
        }
    }

    /// Replaces the first child called `name` (a reference) with `with` (the object).
    pub fn replace(&mut self, name: &str, with: Node) {
        if let Some(c) = self.children.iter_mut().find(|c| c.name == name) {
            *c = with;
        }
    }

    /// A list `<name>` of `items`, serialised as it is made in `json` or XML form (the
    /// same text as a `<name>` node holding the items): one item's tree at a time and
    /// one buffer for the whole answer, for lists of tens of thousands of objects.
    pub fn list_of(name: &str, items: impl Iterator<Item = Node>, json: bool) -> Node {
        let mut w = ListWriter::new(name, json, true, items.size_hint().0);
        for item in items {
            w.push(&item);
        }
        w.finish("")
    }

    /// [`Node::list_of`] for a slice, by two threads when it is long: each renders and
    /// writes its half into its own buffer, and the halves are joined in order (the
    /// same text). A 25,000-VM list is most of a second of work for one core.
    pub fn list_of_par<T: Sync>(
        name: &str,
        items: &[T],
        render: impl Fn(&T) -> Node + Sync,
        json: bool,
    ) -> Node {
        /// Shorter lists are not worth a thread.
        const PARALLEL_FROM: usize = 2_000;
        Node::list_split(name, items, render, json, PARALLEL_FROM)
    }

    /// [`Node::list_of_par`], in two halves from `from` items on (at least 2).
    fn list_split<T: Sync>(
        name: &str,
        items: &[T],
        render: impl Fn(&T) -> Node + Sync,
        json: bool,
        from: usize,
    ) -> Node {
        if items.len() < from.max(2) {
            return Node::list_of(name, items.iter().map(&render), json);
        }
        // The first half opens the list and holds the whole answer in the end; the
        // second is only items (both halves have at least one).
        let write = |part: &[T], opens: bool| {
            let mut w = ListWriter::new(
                name,
                json,
                opens,
                if opens { items.len() } else { part.len() },
            );
            for it in part {
                w.push(&render(it));
            }
            w
        };
        let (a, b) = items.split_at(items.len() / 2);
        let (first, second) = std::thread::scope(|scope| {
            let other = scope.spawn(|| write(b, false));
            let mine = write(a, true);
            match other.join() {
                Ok(theirs) => (mine, theirs),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        });
        first.finish(&second.s)
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
        let mut s = String::with_capacity(self.raw.as_ref().map_or(1024, |r| r.len() + 64));
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
                    let mut n =
                        Node::new(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
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
                            String::from_utf8_lossy(a.key.local_name().as_ref())
                                .into_owned()
                                .into(),
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
    let mut n = Node::new(name.to_string());
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("id" | "href", Value::String(s)) => n.attrs.push((k.into(), s.clone())),
                    ("rel", Value::String(s)) if name == "link" => {
                        n.attrs.push((k.into(), s.clone()))
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

/// `v` as XML text or attribute value (what [`Node`] writes): `&`, `<`, `>`, `"`
/// escaped, control characters XML cannot carry left out.
pub fn xml_escaped(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    escape_into(&mut s, v, true);
    s
}

fn escape_into(s: &mut String, v: &str, attr: bool) {
    // Most values need no escaping: copied whole.
    if !v
        .bytes()
        .any(|b| matches!(b, b'&' | b'<' | b'>' | b'"') || b < 0x20)
    {
        s.push_str(v);
        return;
    }
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
    // Most values need no escaping: copied whole.
    if !v.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        s.push_str(v);
        s.push('"');
        return;
    }
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
            name: n.to_string().into(),
            attrs: a
                .into_iter()
                .map(|(k, v)| (k.to_string().into(), v))
                .collect(),
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
                    name: n.to_string().into(),
                    attrs: a
                        .into_iter()
                        .map(|(k, v)| (k.to_string().into(), v))
                        .collect(),
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
        fn lists_serialised_as_made_render_the_same(n in arb_node(), count in 0usize..6) {
            // A collection written item by item is the document of the whole tree.
            let mut item = n.clone();
            item.name = "vm".into();
            let mut tree = Node::new("vms");
            for _ in 0..count {
                tree.push(item.clone());
            }
            let items = || std::iter::repeat_n(item.clone(), count);
            proptest::prop_assert_eq!(tree.to_xml(), Node::list_of("vms", items(), false).to_xml());
            let json = Node::list_of("vms", items(), true);
            proptest::prop_assert_eq!(tree.to_json_string(), json.raw.unwrap_or_default());
            // Written in two halves by two threads: the same text.
            let all: Vec<Node> = items().collect();
            let split = Node::list_split("vms", &all, |n: &Node| n.clone(), false, 2);
            proptest::prop_assert_eq!(tree.to_xml(), split.to_xml());
            let split = Node::list_split("vms", &all, |n: &Node| n.clone(), true, 2);
            proptest::prop_assert_eq!(tree.to_json_string(), split.raw.unwrap_or_default());
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
