//! oVirt's API model, declared once: every service of Engine API v4 (its methods,
//! actions and the services under it) in `services.txt`, every type (its attributes and
//! links, by their names on the wire) in `types.txt` — the facts of the public
//! `oVirt/ovirt-engine-api-model`, written down here in a plain line format.
//!
//! The generic machinery reads it: URLs resolve through the service tree, methods and
//! actions are checked against it, document fields against the types. Handlers hold
//! the behaviour only; what the model has and Halyard does not do answers an honest
//! fault naming the service.

use std::collections::HashMap;
use std::sync::OnceLock;

const SERVICES: &str = include_str!("services.txt");
const TYPES: &str = include_str!("types.txt");

/// A CRUD method of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    List,
    Get,
    Add,
    Update,
    Remove,
}

impl Method {
    fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "list" => Method::List,
            "get" => Method::Get,
            "add" => Method::Add,
            "update" => Method::Update,
            "remove" => Method::Remove,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::List => "list",
            Method::Get => "get",
            Method::Add => "add",
            Method::Update => "update",
            Method::Remove => "remove",
        }
    }
}

/// An action: `POST <service>/<path>` with an `<action>` document.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub name: String,
    pub path: String,
    /// The elements its `<action>` may carry.
    pub params: Vec<String>,
}

/// A service: a collection, an item, or a singleton.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Service {
    pub name: String,
    pub methods: Vec<Method>,
    /// (collection element, item type) of `list`.
    pub list: Option<(String, String)>,
    pub get: Option<String>,
    pub add: Option<String>,
    pub update: Option<String>,
    /// (URL segment, service); `{id}` for the item of a collection.
    pub locators: Vec<(String, String)>,
    pub actions: Vec<Action>,
}

impl Service {
    pub fn has(&self, m: Method) -> bool {
        self.methods.contains(&m)
    }

    /// The service of an item of this collection.
    pub fn item(&self) -> Option<&str> {
        self.locators
            .iter()
            .find(|(p, _)| p == "{id}")
            .map(|(_, s)| s.as_str())
    }

    pub fn action(&self, path: &str) -> Option<&Action> {
        self.actions.iter().find(|a| a.path == path)
    }
}

/// A member of a struct type.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub ty: String,
    pub list: bool,
    /// Sent as an XML attribute (`id`).
    pub xml_attribute: bool,
    /// Links: the `<link rel>` of a list link.
    pub rel: Option<String>,
    pub link: bool,
    /// Halyard's own (an `x` line): not in oVirt's model, shown, never set by clients.
    pub halyard: bool,
}

/// A type of the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Type {
    /// Members include the inherited ones.
    Struct {
        tag: String,
        collection: String,
        parent: Option<String>,
        members: Vec<Member>,
    },
    Enum(Vec<String>),
    Primitive,
}

/// The whole model.
#[derive(Debug, Default)]
pub struct Model {
    pub services: HashMap<String, Service>,
    pub types: HashMap<String, Type>,
    pub root: String,
}

/// Where a URL leads.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved<'a> {
    pub service: &'a Service,
    /// The action, when the last segment names one.
    pub action: Option<&'a Action>,
    /// The ids met on the way (`/vms/{id}/nics/{id}`).
    pub ids: Vec<String>,
    /// The path of services that led here (their names).
    pub trail: Vec<&'a str>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("API model, line {line}: {what}")]
pub struct ModelError {
    pub line: usize,
    pub what: String,
}

fn bad(line: usize, what: impl Into<String>) -> ModelError {
    ModelError {
        line,
        what: what.into(),
    }
}

/// Parses the two declaration files.
pub fn parse(services: &str, types: &str) -> Result<Model, ModelError> {
    let mut m = Model::default();
    let mut cur: Option<Service> = None;
    for (i, raw) in services.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() || raw.trim_start().starts_with('#') {
            continue;
        }
        let w: Vec<&str> = raw.split_whitespace().collect();
        if !raw.starts_with(' ') {
            if let Some(s) = cur.take() {
                m.services.insert(s.name.clone(), s);
            }
            if w.first() != Some(&"service") || w.len() < 3 {
                return Err(bad(n, "expected: service NAME METHODS ..."));
            }
            let mut s = Service {
                name: w[1].to_string(),
                ..Service::default()
            };
            if w[2] != "-" {
                for x in w[2].split(',') {
                    s.methods
                        .push(Method::parse(x).ok_or_else(|| bad(n, format!("method {x}")))?);
                }
            }
            for kv in &w[3..] {
                match kv.split_once('=') {
                    Some(("list", v)) => {
                        let (e, t) = v
                            .split_once(':')
                            .ok_or_else(|| bad(n, "list=ELEMENT:TYPE"))?;
                        s.list = Some((e.to_string(), t.to_string()));
                    }
                    Some(("get", v)) => s.get = Some(v.to_string()),
                    // `[]`: a list of them (bricks of a gluster volume).
                    Some(("add", v)) => s.add = Some(v.trim_end_matches("[]").to_string()),
                    Some(("update", v)) => s.update = Some(v.to_string()),
                    None if *kv == "root" => m.root = s.name.clone(),
                    _ => return Err(bad(n, format!("unknown {kv}"))),
                }
            }
            cur = Some(s);
            continue;
        }
        let s = cur
            .as_mut()
            .ok_or_else(|| bad(n, "a member outside a service"))?;
        match w.as_slice() {
            ["loc", path, svc] => s.locators.push((path.to_string(), svc.to_string())),
            ["act", name, path, params] => s.actions.push(Action {
                name: name.to_string(),
                path: path.to_string(),
                params: if *params == "-" {
                    Vec::new()
                } else {
                    params.split(',').map(str::to_string).collect()
                },
            }),
            _ => return Err(bad(n, "expected: loc PATH SERVICE | act NAME PATH PARAMS")),
        }
    }
    if let Some(s) = cur.take() {
        m.services.insert(s.name.clone(), s);
    }
    // Types: declared members first, inheritance resolved after.
    /// (name, tag, collection tag, parent, declared members)
    type Declared = (String, String, String, Option<String>, Vec<Member>);
    let mut declared: Vec<Declared> = Vec::new();
    for (i, raw) in types.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() || raw.trim_start().starts_with('#') {
            continue;
        }
        let w: Vec<&str> = raw.split_whitespace().collect();
        if raw.starts_with(' ') {
            let (_, _, _, _, members) = declared
                .last_mut()
                .ok_or_else(|| bad(n, "a member outside a struct"))?;
            let (kind, name, ty) = match w.as_slice() {
                [k, name, ty, ..] if matches!(*k, "a" | "l" | "x") => (*k, *name, *ty),
                _ => return Err(bad(n, "expected: a|l|x NAME TYPE")),
            };
            let list = ty.ends_with('*');
            members.push(Member {
                name: name.to_string(),
                ty: ty.trim_end_matches('*').to_string(),
                list,
                xml_attribute: kind == "a" && w.get(3) == Some(&"@"),
                rel: (kind == "l")
                    .then(|| w.get(3).map(|r| r.to_string()))
                    .flatten(),
                link: kind == "l",
                halyard: kind == "x",
            });
            continue;
        }
        match w.as_slice() {
            ["primitive", name] => {
                m.types.insert(name.to_string(), Type::Primitive);
            }
            ["enum", name, values @ ..] => {
                m.types.insert(
                    name.to_string(),
                    Type::Enum(values.iter().map(|v| v.to_string()).collect()),
                );
            }
            ["struct", name, tag, coll, rest @ ..] => declared.push((
                name.to_string(),
                tag.to_string(),
                coll.to_string(),
                rest.first().map(|p| p.to_string()),
                Vec::new(),
            )),
            _ => return Err(bad(n, "expected: struct|enum|primitive ...")),
        }
    }
    let by_name: HashMap<&str, usize> = declared
        .iter()
        .enumerate()
        .map(|(i, d)| (d.0.as_str(), i))
        .collect();
    for d in &declared {
        let mut members: Vec<Member> = Vec::new();
        let mut chain = Vec::new();
        let mut p = Some(d.0.as_str());
        while let Some(name) = p {
            if chain.contains(&name) || chain.len() > 16 {
                return Err(bad(0, format!("inheritance loop at {name}")));
            }
            chain.push(name);
            let idx = *by_name
                .get(name)
                .ok_or_else(|| bad(0, format!("unknown parent {name}")))?;
            p = declared[idx].3.as_deref();
        }
        for name in chain.iter().rev() {
            for mem in &declared[by_name[name]].4 {
                members.retain(|x| x.name != mem.name);
                members.push(mem.clone());
            }
        }
        m.types.insert(
            d.0.clone(),
            Type::Struct {
                tag: d.1.clone(),
                collection: d.2.clone(),
                parent: d.3.clone(),
                members,
            },
        );
    }
    if m.root.is_empty() {
        return Err(bad(0, "no root service"));
    }
    Ok(m)
}

/// The model (parsed once; the files are part of the program and checked by its tests).
pub fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| parse(SERVICES, TYPES).expect("the built-in API model parses"))
}

impl Model {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }

    pub fn root(&self) -> &Service {
        self.services
            .get(&self.root)
            .expect("the built-in API model has its root")
    }

    /// Follows URL segments from the root. `None`: no such resource in the API.
    pub fn resolve(&self, segments: &[&str]) -> Option<Resolved<'_>> {
        let mut s = self.root();
        let mut ids = Vec::new();
        let mut trail = vec![s.name.as_str()];
        for (i, seg) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            if let Some((_, next)) = s.locators.iter().find(|(p, _)| p == seg) {
                s = self.service(next)?;
            } else if let Some(a) = s.action(seg).filter(|_| last) {
                return Some(Resolved {
                    service: s,
                    action: Some(a),
                    ids,
                    trail,
                });
            } else if let Some(item) = s.item() {
                if seg.is_empty() || seg.len() > 256 {
                    return None;
                }
                ids.push(seg.to_string());
                s = self.service(item)?;
            } else {
                return None;
            }
            trail.push(s.name.as_str());
        }
        Some(Resolved {
            service: s,
            action: None,
            ids,
            trail,
        })
    }

    /// The sub-collection links of an object of type `ty`: its list link members whose
    /// collection the type's item services have (`rel` = URL segment), in model order.
    /// What oVirt writes as an object's `<link>`s; computed once per type.
    pub fn links_of(&self, ty: &str) -> &[String] {
        static LINKS: OnceLock<HashMap<String, Vec<String>>> = OnceLock::new();
        let all = LINKS.get_or_init(|| {
            let mut out = HashMap::new();
            for (name, t) in &self.types {
                if let Type::Struct { members, .. } = t {
                    out.insert(name.clone(), self.sub_collections(name, members));
                }
            }
            out
        });
        all.get(ty).map(Vec::as_slice).unwrap_or(&[])
    }

    fn sub_collections(&self, ty: &str, members: &[Member]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for m in members.iter().filter(|m| m.link && m.list) {
            if let Some(seg) = self.segment(ty, m) {
                if !out.contains(&seg) {
                    out.push(seg);
                }
            }
        }
        out
    }

    /// The URL segment of list member `m` of type `ty` under the type's item services:
    /// its `rel`, or the locator whose collection lists the member's type (a
    /// scheduling policy's `weight` list lives at `weights`). `None`: no item service of
    /// `ty` has it.
    pub fn segment(&self, ty: &str, m: &Member) -> Option<String> {
        // Found once for every list member of every type: records ask it for each link
        // they render.
        type Segments = HashMap<(String, String), Option<String>>;
        static SEGMENTS: OnceLock<Segments> = OnceLock::new();
        let all = SEGMENTS.get_or_init(|| {
            let mut out = HashMap::new();
            for (name, t) in &self.types {
                if let Type::Struct { members, .. } = t {
                    for mem in members.iter().filter(|x| x.list) {
                        out.insert(
                            (name.clone(), mem.name.clone()),
                            self.find_segment(name, mem),
                        );
                    }
                }
            }
            out
        });
        match all.get(&(ty.to_string(), m.name.clone())) {
            Some(seg) => seg.clone(),
            None => self.find_segment(ty, m),
        }
    }

    fn find_segment(&self, ty: &str, m: &Member) -> Option<String> {
        let rel = m.rel.as_deref().unwrap_or(&m.name);
        let items = self
            .services
            .values()
            .filter(|s| s.get.as_deref() == Some(ty));
        let mut by_type = None;
        for svc in items {
            if svc.locators.iter().any(|(p, _)| p == rel) {
                return Some(rel.to_string());
            }
            by_type = by_type.or_else(|| {
                svc.locators.iter().find_map(|(p, target)| {
                    self.service(target)
                        .and_then(|t| t.list.as_ref())
                        .filter(|(_, t)| *t == m.ty)
                        .map(|_| p.clone())
                })
            });
        }
        by_type
    }

    /// The element names a document of type `ty` may carry.
    pub fn members(&self, ty: &str) -> Option<&[Member]> {
        match self.types.get(ty)? {
            Type::Struct { members, .. } => Some(members),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_complete_and_consistent() {
        let m = model();
        assert!(m.services.len() >= 280, "{}", m.services.len());
        assert!(m.types.len() >= 330);
        assert_eq!(m.root, "SystemService");
        assert!(m.root().locators.len() >= 40);
        for s in m.services.values() {
            for (p, target) in &s.locators {
                assert!(m.service(target).is_some(), "{}: {p} -> {target}", s.name);
            }
            for t in [&s.get, &s.add, &s.update]
                .into_iter()
                .flatten()
                .chain(s.list.as_ref().map(|l| &l.1))
            {
                assert!(m.types.contains_key(t), "{}: type {t}", s.name);
            }
        }
        for (name, t) in &m.types {
            if let Type::Struct { members, .. } = t {
                for mem in members {
                    assert!(
                        m.types.contains_key(&mem.ty),
                        "{name}.{}: {}",
                        mem.name,
                        mem.ty
                    );
                }
            }
        }
    }

    #[test]
    fn urls_resolve_through_the_tree() {
        let m = model();
        let r = m.resolve(&["vms"]).expect("vms");
        assert_eq!(r.service.name, "VmsService");
        assert_eq!(r.service.list.as_ref().map(|l| l.0.as_str()), Some("vms"));
        let r = m.resolve(&["vms", "abc", "nics", "n1"]).expect("nic");
        assert_eq!(r.service.name, "VmNicService");
        assert_eq!(r.ids, vec!["abc", "n1"]);
        let r = m.resolve(&["vms", "abc", "start"]).expect("start");
        assert_eq!(r.action.map(|a| a.name.as_str()), Some("start"));
        assert!(r
            .action
            .is_some_and(|a| a.params.contains(&"vm".to_string())));
        let r = m.resolve(&["hosts", "h", "nics"]).expect("host nics");
        assert_eq!(
            r.service.list.as_ref().map(|l| l.0.as_str()),
            Some("host_nics")
        );
        assert!(m.resolve(&["nothing"]).is_none());
        assert!(m.resolve(&["vms", "a", "bogus", "x"]).is_none());
        assert_eq!(
            m.resolve(&[]).map(|r| r.service.name.as_str()),
            Some("SystemService")
        );
    }

    #[test]
    fn types_carry_inherited_members() {
        let m = model();
        let vm = m.members("Vm").expect("Vm");
        for f in ["id", "name", "memory", "cluster", "status", "nics", "os"] {
            assert!(vm.iter().any(|x| x.name == f), "Vm.{f}");
        }
        assert!(vm
            .iter()
            .find(|x| x.name == "id")
            .is_some_and(|x| x.xml_attribute));
        assert!(vm
            .iter()
            .find(|x| x.name == "nics")
            .is_some_and(|x| x.link && x.list));
        assert!(
            matches!(m.types.get("VmStatus"), Some(Type::Enum(v)) if v.contains(&"up".to_string()))
        );
    }

    #[test]
    fn bad_declarations_are_errors() {
        assert!(parse("service X bogus", "").is_err());
        assert!(parse("  loc a B", "").is_err());
        assert!(parse("service X - root\n  huh", "").is_err());
        assert!(parse("service X - root", "struct A a as B").is_err());
        assert!(parse("service X - root", "struct A a as B\nstruct B b bs A").is_err());
    }
}
