//! oVirt's JSON, written by the model: a document's shape comes from its type, not
//! from how many children it happens to have. A list member is always
//! `"nics": {"nic": [..]}` (an array even with one item), a collection is
//! `{"vm": [..]}`, attributes (`id`, `href`, a link's `rel`) and values are strings, a
//! struct member is an object. Elements the model does not know (Halyard's own) fall
//! back to the plain shape: one child an object, repeated children an array.
//!
//! Request bodies in this shape parse back with `Node::parse_json`; the round trip
//! XML -> JSON -> XML keeps every document of every type (see the tests).

use std::collections::HashMap;
use std::sync::OnceLock;

use super::model::{model, Member, Type};
use super::node::{json_str, Node};

/// The model type of a document element: by its tag (`vm` -> `Vm`), or a collection's
/// item type by the collection tag (`vms` -> `Vm`).
type TagMap = HashMap<&'static str, &'static str, Fnv>;

/// FNV-1a: the writer's lookups are by short names the model itself holds (no
/// hostile keys), millions of times for a long list; SipHash costs more than the rest.
#[derive(Default, Clone, Copy)]
struct FnvHasher(u64);

impl std::hash::Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type Fnv = std::hash::BuildHasherDefault<FnvHasher>;

fn tags() -> &'static (TagMap, TagMap) {
    static T: OnceLock<(TagMap, TagMap)> = OnceLock::new();
    T.get_or_init(|| {
        let mut items: TagMap = HashMap::default();
        let mut colls: TagMap = HashMap::default();
        let squash = |s: &str| s.replace('_', "").to_lowercase();
        let mut names: Vec<&String> = model().types.keys().collect();
        names.sort();
        for name in names {
            if let Some(Type::Struct {
                tag, collection, ..
            }) = model().types.get(name)
            {
                // The type named after the tag wins (`nic` is Nic, not a subtype's tag).
                let exact = squash(name) == squash(tag);
                if exact || !items.contains_key(tag.as_str()) {
                    items.insert(tag, name);
                }
                if exact || !colls.contains_key(collection.as_str()) {
                    colls.insert(collection, name);
                }
            }
        }
        (items, colls)
    })
}

/// Writes `n` (a whole answer: an object, or a collection) as oVirt JSON.
pub fn write(n: &Node, s: &mut String) {
    let (items, colls) = tags();
    if let Some(ty) = items.get(n.name.as_str()) {
        value(n, Some(ty), s);
    } else if let Some(ty) = colls.get(n.name.as_str()) {
        holder(n, Some(ty), s);
    } else {
        value(n, None, s);
    }
}

/// Writes a list item (serialised ahead of its list, see `Node::serialized`): as it is
/// written inside its list.
pub fn write_item(n: &Node, s: &mut String) {
    value(n, tags().0.get(n.name.as_str()).copied(), s);
}

/// The JSON of a whole answer: as [`write`].
pub fn to_string(n: &Node) -> String {
    let mut s = String::with_capacity(1024);
    write(n, &mut s);
    s
}

/// Each struct type's members by name (a lookup per element written, not a walk over
/// a type's members: a VM has over a hundred).
type MemberIndex = HashMap<&'static str, MemberMap, Fnv>;
type MemberMap = HashMap<&'static str, &'static Member, Fnv>;

fn members() -> &'static MemberIndex {
    static M: OnceLock<MemberIndex> = OnceLock::new();
    M.get_or_init(|| {
        let mut out: MemberIndex = HashMap::default();
        for (name, t) in &model().types {
            if let Type::Struct { members, .. } = t {
                let by: MemberMap = members.iter().map(|m| (m.name.as_str(), m)).collect();
                out.insert(name.as_str(), by);
            }
        }
        out
    })
}

/// `n`'s children ordered by name, those of one name in document order (one sorted
/// vector instead of a map of vectors: the writer runs once per element of a list of
/// thousands of objects).
fn grouped(n: &Node) -> Vec<&Node> {
    let mut kids: Vec<&Node> = n.children.iter().collect();
    kids.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    kids
}

/// The children called `k` at the start of `kids[*p..]` (from [`grouped`], walked in
/// key order): `*p` moves past them.
fn take<'a, 'n>(kids: &'a [&'n Node], p: &mut usize, k: &str) -> &'a [&'n Node] {
    while *p < kids.len() && kids[*p].name.as_str() < k {
        *p += 1;
    }
    let start = *p;
    while *p < kids.len() && kids[*p].name.as_str() == k {
        *p += 1;
    }
    &kids[start..*p]
}

/// A list: `{"<item>": [..]}` with the holder's own attributes (a link's href).
fn holder(n: &Node, item_ty: Option<&str>, s: &mut String) {
    if let Some(r) = &n.raw {
        s.push_str(r);
        return;
    }
    let kids = grouped(n);
    s.push('{');
    let mut first = true;
    for (k, v) in &n.attrs {
        sep(s, &mut first);
        json_str(s, k);
        s.push(':');
        json_str(s, v);
    }
    let mut i = 0;
    while i < kids.len() {
        let k = kids[i].name.as_str();
        let items = take(&kids, &mut i, k);
        sep(s, &mut first);
        json_str(s, k);
        s.push_str(":[");
        for (i, c) in items.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let ty = if k == "link" { None } else { item_ty };
            value(c, ty, s);
        }
        s.push(']');
    }
    s.push('}');
}

fn sep(s: &mut String, first: &mut bool) {
    if !*first {
        s.push(',');
    }
    *first = false;
}

/// One element of type `ty` (`None`: not in the model).
fn value(n: &Node, ty: Option<&str>, s: &mut String) {
    if let Some(r) = &n.raw {
        s.push_str(r);
        return;
    }
    if n.children.is_empty() && n.attrs.is_empty() {
        if let Some(t) = &n.text {
            json_str(s, t);
            return;
        }
    }
    let known = ty.and_then(|t| members().get(t));
    let kids = grouped(n);
    s.push('{');
    let mut first = true;
    // Keys in order: the attributes, the children's names, `value` for text.
    let mut keys: Vec<&str> = Vec::with_capacity(n.attrs.len() + kids.len() + 1);
    keys.extend(n.attrs.iter().map(|(k, _)| k.as_str()));
    keys.extend(kids.iter().map(|c| c.name.as_str()));
    if n.text.is_some() {
        keys.push("value");
    }
    keys.sort_unstable();
    keys.dedup();
    let mut p = 0;
    for k in keys {
        sep(s, &mut first);
        json_str(s, k);
        s.push(':');
        let items = take(&kids, &mut p, k);
        if let Some((_, v)) = n.attrs.iter().find(|(a, _)| a == k) {
            json_str(s, v);
            continue;
        }
        if k == "value" && items.is_empty() {
            json_str(s, n.text.as_deref().unwrap_or(""));
            continue;
        }
        match known.and_then(|mm| mm.get(k).copied()) {
            Some(m) if m.list && items.len() == 1 => holder(items[0], Some(&m.ty), s),
            Some(m) if !m.list && items.len() == 1 => value(items[0], Some(&m.ty), s),
            m => {
                // Links, repeated or unknown children: an array when repeated (links
                // always), else the element itself.
                let ity = m
                    .map(|m| m.ty.as_str())
                    .or_else(|| tags().0.get(k).copied());
                if items.len() == 1 && k != "link" {
                    value(items[0], ity, s);
                } else {
                    s.push('[');
                    for (i, c) in items.iter().enumerate() {
                        if i > 0 {
                            s.push(',');
                        }
                        value(c, ity, s);
                    }
                    s.push(']');
                }
            }
        }
    }
    s.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn next(r: &mut u64) -> u64 {
        *r ^= *r << 13;
        *r ^= *r >> 7;
        *r ^= *r << 17;
        *r
    }

    /// A random document of type `ty`: members of the model with values of their
    /// types, nested structs and lists (one to three items).
    fn doc(ty: &str, tag: &str, r: &mut u64, depth: usize) -> Node {
        let mut n = Node::new(tag.to_string());
        let Some(members) = model().members(ty) else {
            return Node::leaf(tag.to_string(), format!("v{}", next(r) % 1000));
        };
        for m in members {
            if !next(r).is_multiple_of(3) {
                continue;
            }
            if m.xml_attribute {
                n.set_attr(&m.name, format!("id-{}", next(r) % 100_000));
                continue;
            }
            let kind = model().types.get(&m.ty);
            let leaf = |x: u64| -> String {
                match kind {
                    Some(Type::Enum(v)) if !v.is_empty() => v[(x as usize) % v.len()].clone(),
                    _ if m.ty == "Boolean" => x.is_multiple_of(2).to_string(),
                    _ if m.ty == "Integer" => (x % 100_000).to_string(),
                    _ => format!("text {} \"<&>\" é", x % 1000),
                }
            };
            let is_struct = matches!(kind, Some(Type::Struct { .. }));
            if is_struct && depth >= 2 {
                continue;
            }
            let item_tag = match kind {
                Some(Type::Struct { tag, .. }) => tag.clone(),
                _ => m.name.trim_end_matches('s').to_string(),
            };
            if m.list {
                let mut l = Node::new(&m.name);
                for _ in 0..1 + next(r) % 3 {
                    if is_struct {
                        l.push(doc(&m.ty, &item_tag, r, depth + 1));
                    } else {
                        l.push(Node::leaf(&item_tag, leaf(next(r))));
                    }
                }
                n.push(l);
            } else if is_struct {
                n.push(doc(&m.ty, &m.name, r, depth + 1));
            } else {
                n.push(Node::leaf(&m.name, leaf(next(r))));
            }
        }
        n
    }

    /// Children in a canonical order (JSON objects have no order).
    fn canonical(n: &Node) -> Node {
        let mut c = n.clone();
        c.children = n.children.iter().map(canonical).collect();
        c.children.sort_by_key(|x| (x.name.clone(), x.to_xml()));
        c.attrs.sort();
        if c.text.as_deref() == Some("") && !c.children.is_empty() {
            c.text = None;
        }
        c
    }

    fn struct_types() -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = model()
            .types
            .iter()
            .filter_map(|(name, t)| match t {
                Type::Struct { tag, .. } => Some((name.clone(), tag.clone())),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// XML -> JSON -> XML keeps every document, for every type of the model.
        #[test]
        fn every_type_round_trips(seed in 1u64..u64::MAX) {
            for (ty, tag) in struct_types() {
                let mut r = seed;
                let d = doc(&ty, &tag, &mut r, 0);
                let xml = d.to_xml();
                let parsed = Node::parse_xml(xml.as_bytes()).expect("own XML parses");
                let json = to_string(&parsed);
                let back = Node::parse_json(&tag, json.as_bytes())
                    .unwrap_or_else(|e| panic!("{ty}: {e}: {json}"));
                let again = Node::parse_xml(back.to_xml().as_bytes()).expect("XML again");
                prop_assert_eq!(canonical(&parsed), canonical(&again), "{}: {}", ty, json);
            }
        }
    }

    #[test]
    fn lists_are_arrays_even_with_one_item() {
        let vm = Node::new("vm")
            .attr("id", "1")
            .with(Node::new("nics").with(Node::new("nic").attr("id", "n")))
            .with(Node::new("cluster").attr("id", "c"));
        let j: serde_json::Value = serde_json::from_str(&to_string(&vm)).expect("json");
        assert_eq!(j["nics"]["nic"][0]["id"], "n");
        assert_eq!(j["cluster"]["id"], "c");
        let coll = Node::new("vms").with(vm);
        let j: serde_json::Value = serde_json::from_str(&to_string(&coll)).expect("json");
        assert_eq!(j["vm"][0]["id"], "1");
    }
}
