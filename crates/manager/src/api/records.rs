//! Declared collections: the objects of oVirt's model that Halyard keeps as documents
//! ([`Record`]), one [`Kind`] declaration each. The machinery here is generic and reads
//! the model: a document sent is checked against the type (unknown elements refused,
//! values of the member's type — Boolean, Integer, Decimal, enum — references resolved
//! by id or name to objects that exist), stored normalised, listed with oVirt's search,
//! shown with its `href`s and the `<link>`s of its list members, updated and removed.
//!
//! Where a collection sits under another object the declaration says how:
//! `/networks/{id}/vnicprofiles` are the profiles whose `network` is that network (a
//! POST there sets it); `/vms/{id}/affinitylabels` are the labels whose `vms` list holds
//! the VM (a POST there adds the VM to the label, a DELETE takes it out). A list member
//! of a record (`/affinitylabels/{id}/vms`) is a collection of its own: GET, POST a
//! reference, DELETE one.
//!
//! Behaviour that goes beyond storing (a MAC pool's addresses, the scheduler's reading
//! of affinity groups, the VMs of a pool) lives in the module of its area, which reads
//! these records; the per-kind [`Rules`] here only check a document before it is kept.

use std::sync::Arc;

use axum::http::{Method, StatusCode};

use super::handlers::{check_name, ok, ApiError, Out, Req};
use super::model::{model, Member, Type};
use super::node::Node;
use super::render::BASE;
use crate::model::*;
use crate::state::Manager;

/// Where the items of a kind live (their `href`).
#[derive(Debug, Clone, Copy)]
pub enum Home {
    /// A top-level collection: `/bookmarks/{id}`.
    Top(&'static str),
    /// Under the object a reference member points to: (`data_center`, `quotas`) gives
    /// `/datacenters/{dc}/quotas/{id}`.
    Under(&'static str, &'static str),
}

/// Checks (and completes) a document before it is stored; `old` is the stored record
/// on an update.
pub type Check = fn(&Inventory, &mut Node, Option<&Record>) -> Result<(), ApiError>;
/// Why a record cannot be removed now (it is in use), if it cannot.
pub type InUse = fn(&Inventory, &Record) -> Option<String>;

/// Adds what is computed rather than stored (a quota limit's usage) to a record as it
/// is shown.
pub type Show = fn(&Inventory, &Record, &mut Node);

#[derive(Clone, Copy)]
pub struct Rules {
    pub check: Check,
    pub in_use: InUse,
    pub show: Option<Show>,
}

fn no_check(_: &Inventory, _: &mut Node, _: Option<&Record>) -> Result<(), ApiError> {
    Ok(())
}
fn never_in_use(_: &Inventory, _: &Record) -> Option<String> {
    None
}

pub const PLAIN: Rules = Rules {
    check: no_check,
    in_use: never_in_use,
    show: None,
};

/// One declared collection.
#[derive(Clone, Copy)]
pub struct Kind {
    /// The model type of its items.
    pub ty: &'static str,
    pub home: Home,
    /// The collections it is listed under: (parent collection segment, member). A
    /// reference member: the items pointing to the parent; a list member: the items
    /// whose list holds the parent.
    pub under: &'static [(&'static str, &'static str)],
    /// What an add acts on (paths below the document, as `validate` reads them).
    pub add: &'static [&'static str],
    /// What an update acts on.
    pub update: &'static [&'static str],
    /// Members an add must have.
    pub required: &'static [&'static str],
    /// Names are unique among the items with the same value of this member (`""`:
    /// among all items of the kind).
    pub unique_in: &'static str,
    /// Extra search names: (oVirt's search field, member).
    pub search: &'static [(&'static str, &'static str)],
    pub rules: Rules,
    /// What storing it does beyond the record.
    pub effects: Effects,
}

/// Effects of a kind on the rest of the inventory, carried out after the record is
/// stored (and before it is removed).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Effects {
    None,
    /// A VM pool's VMs.
    VmPool,
}

impl Kind {
    /// Its items' element name (`vnic_profile`).
    pub fn tag(&self) -> &'static str {
        match model().types.get(self.ty) {
            Some(Type::Struct { tag, .. }) => tag,
            _ => "item",
        }
    }
    fn collection_tag(&self) -> &'static str {
        match model().types.get(self.ty) {
            Some(Type::Struct { collection, .. }) => collection,
            _ => "items",
        }
    }
}

/// The declared kinds, by model type (see `kinds`).
pub fn kind(ty: &str) -> Option<&'static Kind> {
    super::kinds::KINDS.iter().find(|k| k.ty == ty)
}

/// The collection segment of a core (typed) object's home, by model type.
fn core_home(ty: &str) -> Option<&'static str> {
    Some(match ty {
        "DataCenter" => "datacenters",
        "Cluster" => "clusters",
        "Network" => "networks",
        "Host" => "hosts",
        "Vm" => "vms",
        "StorageDomain" => "storagedomains",
        "Template" => "templates",
        "Disk" => "disks",
        "Tag" => "tags",
        _ => return None,
    })
}

/// The `href` of the object of model type `ty` with `id`.
pub fn href_of(inv: &Inventory, ty: &str, id: &str) -> String {
    if let Some(h) = core_home(ty) {
        return format!("{BASE}/{h}/{id}");
    }
    let Some(k) = kind(ty) else {
        return format!("{BASE}/{id}");
    };
    match k.home {
        Home::Top(seg) => format!("{BASE}/{seg}/{id}"),
        Home::Under(member, seg) => {
            let rec = inv.records.get(id);
            match rec.and_then(|r| r.doc.get(member)) {
                Some(parent) => format!("{}/{seg}/{id}", parent.attr_of("href").unwrap_or(BASE)),
                None => format!("{BASE}/{seg}/{id}"),
            }
        }
    }
}

/// The name of an object a reference points to (search by a linked object's name).
pub fn name_of(inv: &Inventory, ty: &str, id: &str) -> Option<String> {
    Some(match ty {
        "DataCenter" => inv.data_centers.get(id)?.name.clone(),
        "Cluster" => inv.clusters.get(id)?.name.clone(),
        "Network" => inv.networks.get(id)?.name.clone(),
        "Host" => inv.hosts.get(id)?.name.clone(),
        "Vm" => inv.vms.get(id)?.name.clone(),
        "StorageDomain" => inv.storage_domains.get(id)?.name.clone(),
        "Disk" => inv.disks.get(id)?.name.clone(),
        "Tag" => inv.tags.get(id)?.name.clone(),
        "Template" if id == BLANK_TEMPLATE => "Blank".into(),
        "Template" => inv.templates.get(id)?.name.clone(),
        _ => match super::kinds::catalogue(ty) {
            Some(c) => c.iter().find(|e| e.id == id)?.name.clone(),
            None => inv.record(ty, id)?.name().to_string(),
        },
    })
}

/// Finds the object of model type `ty` a reference names (`id`, or `<name>`).
pub fn find_ref(inv: &Inventory, ty: &str, n: &Node) -> Result<String, ApiError> {
    let what = model_label(ty);
    if let Some(id) = n.id() {
        if name_of(inv, ty, id).is_some() {
            return Ok(id.to_string());
        }
        return Err(ApiError::not_found(format!("{what} {id} not found")));
    }
    let Some(name) = n.text_of("name") else {
        return Err(ApiError::bad(format!(
            "<{}>: a {what} is named by id or <name>",
            n.name
        )));
    };
    let hit = match ty {
        "DataCenter" => inv.dc_by_name(name).map(|x| x.id.clone()),
        "Cluster" => inv.cluster_by_name(name).map(|x| x.id.clone()),
        "Network" => {
            let mut it = inv.networks.values().filter(|x| x.name == name);
            match (it.next(), it.next()) {
                (Some(x), None) => Some(x.id.clone()),
                (Some(_), Some(_)) => {
                    return Err(ApiError::bad(format!(
                        "network {name:?} exists in more than one data center: give its id"
                    )))
                }
                _ => None,
            }
        }
        "Host" => inv.host_by_name(name).map(|x| x.id.clone()),
        "Vm" => inv.vm_by_name(name).map(|x| x.id.clone()),
        "StorageDomain" => inv
            .storage_domains
            .values()
            .find(|x| x.name == name)
            .map(|x| x.id.clone()),
        "Disk" => inv
            .disks
            .values()
            .find(|x| x.name == name)
            .map(|x| x.id.clone()),
        "Tag" => inv
            .tags
            .values()
            .find(|x| x.name == name)
            .map(|x| x.id.clone()),
        "Template" if name == "Blank" => Some(BLANK_TEMPLATE.to_string()),
        "Template" => inv
            .templates
            .values()
            .find(|x| x.name == name)
            .map(|x| x.id.clone()),
        _ => match super::kinds::catalogue(ty) {
            Some(c) => c.iter().find(|e| e.name == name).map(|e| e.id.clone()),
            None => inv
                .records_of(ty)
                .find(|r| r.name() == name)
                .map(|r| r.id.clone()),
        },
    };
    hit.ok_or_else(|| ApiError::not_found(format!("{what} {name:?} not found")))
}

/// `VnicProfile` -> `vnic profile`.
fn model_label(ty: &str) -> String {
    let mut s = String::new();
    for (i, c) in ty.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            s.push(' ');
        }
        s.extend(c.to_lowercase());
    }
    s
}

/// A struct type whose items are objects of their own (they have an id): members of
/// such a type are references.
fn identified(ty: &str) -> bool {
    model()
        .members(ty)
        .is_some_and(|ms| ms.iter().any(|m| m.name == "id" && m.xml_attribute))
}

const MAX_TEXT: usize = 4096;

/// Normalises a checked document: values of the member's type, references resolved.
pub fn normalise(inv: &Inventory, ty: &str, n: &Node) -> Result<Node, ApiError> {
    let members = model().members(ty).unwrap_or(&[]);
    let mut out = Node::new(&n.name);
    for c in &n.children {
        if matches!(c.name.as_str(), "href" | "link" | "actions" | "id") {
            continue;
        }
        let Some(m) = members.iter().find(|m| m.name == c.name) else {
            return Err(ApiError::bad(format!(
                "Request syntactically incorrect: unknown element <{}> in <{}>",
                c.name, n.name
            )));
        };
        out.push(member_value(inv, m, c)?);
    }
    Ok(out)
}

fn member_value(inv: &Inventory, m: &Member, c: &Node) -> Result<Node, ApiError> {
    if m.list {
        let mut l = Node::new(&m.name);
        for item in c.children.iter().filter(|i| i.name != "link") {
            l.push(single(inv, &m.ty, item)?);
        }
        return Ok(l);
    }
    single(inv, &m.ty, c)
}

fn single(inv: &Inventory, ty: &str, c: &Node) -> Result<Node, ApiError> {
    if identified(ty) {
        let id = find_ref(inv, ty, c)?;
        return Ok(Node::new(&c.name)
            .attr("href", href_of(inv, ty, &id))
            .attr("id", &id));
    }
    match model().types.get(ty) {
        Some(Type::Struct { .. }) => normalise(inv, ty, c),
        Some(Type::Enum(values)) => {
            let v = c.text.as_deref().unwrap_or("").trim().to_lowercase();
            if !values.contains(&v) {
                return Err(ApiError::bad(format!(
                    "<{}>: {v:?} is not one of {}",
                    c.name,
                    values.join(", ")
                )));
            }
            Ok(Node::leaf(&c.name, v))
        }
        _ => {
            let v = c.text.as_deref().unwrap_or("").trim();
            if !c.children.is_empty() {
                return Err(ApiError::bad(format!(
                    "<{}> holds a value, not elements",
                    c.name
                )));
            }
            let ok = match ty {
                "Boolean" => matches!(v, "true" | "false"),
                "Integer" => v.parse::<i64>().is_ok(),
                "Decimal" => v.parse::<f64>().is_ok_and(f64::is_finite),
                _ => {
                    v.chars().count() <= MAX_TEXT
                        && !v.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
                }
            };
            if !ok {
                return Err(ApiError::bad(format!(
                    "<{}>: {v:?} is not a valid {ty}",
                    c.name
                )));
            }
            Ok(Node::leaf(&c.name, v))
        }
    }
}

/// Merges an update into a stored document: each member sent replaces the stored one.
fn merge(old: &Node, new: Node) -> Node {
    let mut out = old.clone();
    for c in new.children {
        match out.children.iter_mut().find(|x| x.name == c.name) {
            Some(x) => *x = c,
            None => out.children.push(c),
        }
    }
    out
}

/// A record as shown: its document, its address, the links of its list members.
pub fn render(inv: &Inventory, k: &Kind, r: &Record) -> Node {
    let href = href_of(inv, k.ty, &r.id);
    let mut n = Node::new(k.tag()).attr("href", &href).attr("id", &r.id);
    let members = model().members(k.ty).unwrap_or(&[]);
    for c in &r.doc.children {
        let linked = members
            .iter()
            .any(|m| m.name == c.name && m.link && m.list && m.rel.is_some());
        if !linked {
            n.push(c.clone());
        }
    }
    for m in members
        .iter()
        .filter(|m| m.link && m.list && m.rel.is_some())
    {
        let seg = segment(k.ty, m);
        n.push(Node::link(&seg, format!("{href}/{seg}")));
    }
    if let Some(show) = k.rules.show {
        show(inv, r, &mut n);
    }
    n
}

/// Values of a search field of a record: its id, a member's text, or the name of the
/// object a reference member points to.
fn field(inv: &Inventory, k: &Kind, r: &Record, f: &str) -> Vec<String> {
    let member = k
        .search
        .iter()
        .find(|(s, _)| *s == f)
        .map(|(_, m)| *m)
        .unwrap_or(f);
    if member == "id" {
        return vec![r.id.clone()];
    }
    let Some(c) = r.doc.get(member) else {
        return Vec::new();
    };
    if let Some(id) = c.attr_of("id") {
        let ty = model()
            .members(k.ty)
            .and_then(|ms| ms.iter().find(|m| m.name == member))
            .map(|m| m.ty.as_str())
            .unwrap_or("");
        return name_of(inv, ty, id).into_iter().collect();
    }
    c.text.clone().into_iter().collect()
}

fn search_fields(k: &Kind) -> Vec<&'static str> {
    let mut f: Vec<&'static str> = vec!["name", "id"];
    for m in model().members(k.ty).unwrap_or(&[]) {
        if !m.list && m.name != "id" && m.name != "name" {
            f.push(m.name.as_str());
        }
    }
    f.extend(k.search.iter().map(|(s, _)| *s));
    f
}

/// The URL segment of a list member of type `ty` (see `Model::segment`; its `rel`
/// when no item service has it).
fn segment(ty: &str, m: &Member) -> String {
    model()
        .segment(ty, m)
        .unwrap_or_else(|| m.rel.clone().unwrap_or_else(|| m.name.clone()))
}

/// What a request path asks of the declared collections.
enum Target<'a> {
    /// `[.. parent, pid] coll`: the kind's items (under a parent when given).
    Collection(&'static Kind, Option<(&'a str, &'a str)>),
    /// `coll/{id}`.
    Item(&'static Kind, Option<(&'a str, &'a str)>, &'a str),
    /// `coll/{id}/<list member>`.
    Members(&'a [&'a str], &'static Member),
    /// `coll/{id}/<list member>/{id}`.
    Member(&'a [&'a str], &'static Member, &'a str),
}

fn parent_of<'a>(s: &'a [&'a str], coll: usize) -> Option<(&'a str, &'a str)> {
    (coll >= 2).then(|| (s[coll - 2], s[coll - 1]))
}

/// The kind of the items a path's collection holds (by the model's list type).
fn collection_kind(s: &[&str]) -> Option<&'static Kind> {
    let res = model().resolve(s)?;
    if res.action.is_some() {
        return None;
    }
    let (_, ty) = res.service.list.as_ref()?;
    kind(ty)
}

fn target<'a>(s: &'a [&'a str]) -> Option<Target<'a>> {
    let n = s.len();
    if n == 0 {
        return None;
    }
    if let Some(k) = collection_kind(s) {
        return Some(Target::Collection(k, parent_of(s, n - 1)));
    }
    if n >= 2 {
        if let Some(k) = collection_kind(&s[..n - 1]) {
            return Some(Target::Item(k, parent_of(s, n - 2), s[n - 1]));
        }
    }
    let list_member = |k: &'static Kind, seg: &str| -> Option<&'static Member> {
        model()
            .members(k.ty)?
            .iter()
            .find(|m| m.list && m.link && m.rel.is_some() && segment(k.ty, m) == seg)
    };
    if n >= 3 {
        if let Some(k) = collection_kind(&s[..n - 2]) {
            if let Some(m) = list_member(k, s[n - 1]) {
                return Some(Target::Members(&s[..n - 1], m));
            }
        }
    }
    if n >= 4 {
        if let Some(k) = collection_kind(&s[..n - 3]) {
            if let Some(m) = list_member(k, s[n - 2]) {
                return Some(Target::Member(&s[..n - 2], m, s[n - 1]));
            }
        }
    }
    None
}

/// How a parent scopes a kind: the member, and whether it is a list (assignment).
fn scope(k: &Kind, parent: Option<(&str, &str)>) -> Option<Option<(&'static Member, String)>> {
    let Some((seg, pid)) = parent else {
        return Some(None);
    };
    let (_, member) = k.under.iter().find(|(p, _)| *p == seg)?;
    let m = model().members(k.ty)?.iter().find(|m| m.name == *member)?;
    Some(Some((m, pid.to_string())))
}

fn in_scope(r: &Record, sc: &Option<(&Member, String)>) -> bool {
    match sc {
        None => true,
        Some((m, pid)) if m.list => r.list(&m.name).contains(&pid.as_str()),
        Some((m, pid)) => r.link(&m.name) == Some(pid.as_str()),
    }
}

/// The record at `coll/{id}` (checked against its parent).
fn locate(inv: &Inventory, s: &[&str]) -> Result<(&'static Kind, Record), ApiError> {
    let n = s.len();
    let k = collection_kind(&s[..n - 1]).ok_or_else(|| ApiError::not_found("Entity not found"))?;
    let sc =
        scope(k, parent_of(s, n - 2)).ok_or_else(|| ApiError::not_found("Entity not found"))?;
    let id = s[n - 1];
    let found = records_for(inv, k)
        .into_iter()
        .find(|r| r.id == id && in_scope(r, &sc));
    found
        .map(|r| (k, r))
        .ok_or_else(|| ApiError::not_found(format!("{} {id} not found", model_label(k.ty))))
}

/// Every record of a kind.
fn records_for(inv: &Inventory, k: &Kind) -> Vec<Record> {
    inv.records_of(k.ty).cloned().collect()
}

/// Serves the declared collections (`None`: the path is not one of them).
pub async fn route(m: &Arc<Manager>, r: &Req, s: &[&str]) -> Option<Out> {
    let t = target(s)?;
    // Entries written by `halyard-manager directory` since the last look: read where
    // the directory is (adding a user or group, the domains), not for every listing.
    let reads_directory = match s {
        ["users" | "groups"] => r.method == Method::POST,
        ["domains", ..] => true,
        _ => false,
    };
    if reads_directory {
        if let Err(e) = crate::directory::refresh(m).await {
            return Some(Err(e.into()));
        }
    }
    let (get, post, put, del) = (
        r.method == Method::GET,
        r.method == Method::POST,
        r.method == Method::PUT,
        r.method == Method::DELETE,
    );
    Some(match t {
        Target::Collection(k, parent) => {
            let sc = scope(k, parent)?;
            if get {
                list(m, r, k, &sc)
            } else if post {
                match &sc {
                    Some((mem, pid)) if mem.list => assign(m, r, k, mem, pid).await,
                    _ => add(m, r, k, sc.as_ref().map(|(mem, pid)| (*mem, pid.as_str()))).await,
                }
            } else {
                return None;
            }
        }
        Target::Item(k, parent, id) => {
            let sc = scope(k, parent)?;
            if get {
                let inv = m.read();
                locate(&inv, s)
                    .map(|(k, rec)| render(&inv, k, &rec))
                    .and_then(ok)
            } else if put {
                update(m, r, s).await
            } else if del {
                match &sc {
                    Some((mem, pid)) if mem.list => unassign(m, k, mem, pid, id).await,
                    _ => remove(m, s).await,
                }
            } else {
                return None;
            }
        }
        Target::Members(item, mem) => {
            if get {
                members(m, item, mem)
            } else if post {
                add_member(m, r, item, mem).await
            } else {
                return None;
            }
        }
        Target::Member(item, mem, id) => {
            if get {
                let inv = m.read();
                match locate(&inv, item) {
                    Err(e) => Err(e),
                    Ok((_, rec)) if rec.list(&mem.name).contains(&id) => {
                        let under = list_href(&inv, item, &rec, mem);
                        ok(reference(&inv, &mem.ty, id, &under))
                    }
                    Ok(_) => Err(ApiError::not_found(format!(
                        "{} {id} is not in {}",
                        model_label(&mem.ty),
                        mem.name
                    ))),
                }
            } else if del {
                remove_member(m, item, mem, id).await
            } else {
                return None;
            }
        }
    })
}

fn item_tag(ty: &str) -> String {
    match model().types.get(ty) {
        Some(Type::Struct { tag, .. }) => tag.clone(),
        _ => "item".into(),
    }
}

/// `<vm href=".." id=".."/>` (with its name) in the list at `under`: an entry of a
/// catalogue (a role's permit) is addressed there, any other object at its home.
fn reference(inv: &Inventory, ty: &str, id: &str, under: &str) -> Node {
    let href = if super::kinds::catalogue(ty).is_some() {
        format!("{under}/{id}")
    } else {
        href_of(inv, ty, id)
    };
    let mut n = Node::new(item_tag(ty))
        .attr("href", href)
        .attr("id", id)
        .opt("name", name_of(inv, ty, id));
    let has_admin = model()
        .members(ty)
        .is_some_and(|ms| ms.iter().any(|m| m.name == "administrative"));
    if let Some(e) = super::kinds::catalogue(ty)
        .filter(|_| has_admin)
        .and_then(|c| c.iter().find(|e| e.id == id))
    {
        n.push(Node::leaf("administrative", e.administrative));
    }
    n
}

/// The address of a record's list member (`/roles/{id}/permits`).
fn list_href(inv: &Inventory, item: &[&str], rec: &Record, mem: &Member) -> String {
    let _ = item;
    let ty = &rec.ty;
    format!("{}/{}", href_of(inv, ty, &rec.id), segment(ty, mem))
}

fn list(m: &Arc<Manager>, r: &Req, k: &'static Kind, sc: &Option<(&Member, String)>) -> Out {
    let inv = m.read();
    let items: Vec<Record> = records_for(&inv, k)
        .into_iter()
        .filter(|x| in_scope(x, sc))
        .collect();
    let fields = search_fields(k);
    super::handlers::search_list(
        r,
        k.collection_tag(),
        &fields,
        items.iter(),
        |x, f| field(&inv, k, x, f),
        |x| render(&inv, k, x),
    )
}

fn required(k: &Kind, doc: &Node) -> Result<(), ApiError> {
    for req in k.required {
        if doc.get(req).is_none() {
            return Err(ApiError::bad(format!(
                "{} [{req}] required for add",
                k.tag()
            )));
        }
    }
    Ok(())
}

fn unique(inv: &Inventory, k: &Kind, doc: &Node, except: Option<&str>) -> Result<(), ApiError> {
    let Some(name) = doc.text_of("name") else {
        return Ok(());
    };
    let scope_of = |d: &Node| {
        if k.unique_in.is_empty() {
            None
        } else {
            d.get(k.unique_in)
                .and_then(|x| x.attr_of("id"))
                .map(str::to_string)
        }
    };
    let mine = scope_of(doc);
    let clash = inv
        .records_of(k.ty)
        .any(|x| Some(x.id.as_str()) != except && x.name() == name && scope_of(&x.doc) == mine);
    if clash {
        return Err(ApiError::conflict(format!(
            "Cannot add {}. The name {name:?} is already in use.",
            model_label(k.ty)
        )));
    }
    Ok(())
}

async fn add(
    m: &Arc<Manager>,
    r: &Req,
    k: &'static Kind,
    parent: Option<(&'static Member, &str)>,
) -> Out {
    let n = r.document(k.tag(), k.ty, k.add)?;
    let rec = {
        let inv = m.read();
        let mut doc = normalise(&inv, k.ty, &n)?;
        if let Some((mem, pid)) = parent {
            let pnode = Node::new(&mem.name).attr("id", pid);
            let id = find_ref(&inv, &mem.ty, &pnode)?;
            doc.children.retain(|c| c.name != mem.name);
            doc.push(
                Node::new(&mem.name)
                    .attr("href", href_of(&inv, &mem.ty, &id))
                    .attr("id", &id),
            );
        }
        if let Some(name) = doc.text_of("name") {
            check_name(name, k.tag())?;
        }
        required(k, &doc)?;
        (k.rules.check)(&inv, &mut doc, None)?;
        unique(&inv, k, &doc, None)?;
        Record {
            id: n
                .id()
                .filter(|i| uuid::Uuid::parse_str(i).is_ok())
                .map(str::to_string)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            ty: k.ty.to_string(),
            doc,
            builtin: false,
        }
    };
    if m.read().records.contains_key(&rec.id) {
        return Err(ApiError::conflict(format!("{} {} exists", k.tag(), rec.id)));
    }
    m.insert(&rec).await?;
    if k.effects == Effects::VmPool {
        if let Err(e) = super::vmpools::fill(m, &rec).await {
            // Nothing of the pool stays when its VMs cannot be made.
            let _ = super::vmpools::empty(m, &rec.id).await;
            let _ = m.remove::<Record>(&rec.id).await;
            return Err(e);
        }
        super::vmpools::prestart(m, &rec).await;
    }
    let inv = m.read();
    Ok((StatusCode::CREATED, render(&inv, k, &rec)))
}

async fn update(m: &Arc<Manager>, r: &Req, s: &[&str]) -> Out {
    let (k, old) = locate(&m.read(), s)?;
    if old.builtin {
        return Err(ApiError::conflict(format!(
            "{} {:?} is predefined and cannot be changed",
            model_label(k.ty),
            old.name()
        )));
    }
    let n = r.document(k.tag(), k.ty, k.update)?;
    let doc = {
        let inv = m.read();
        let new = normalise(&inv, k.ty, &n)?;
        let mut doc = merge(&old.doc, new);
        if let Some(name) = doc.text_of("name") {
            check_name(name, k.tag())?;
        }
        (k.rules.check)(&inv, &mut doc, Some(&old))?;
        unique(&inv, k, &doc, Some(&old.id))?;
        doc
    };
    m.update(&old.id, |x: &mut Record| x.doc = doc).await?;
    if k.effects == Effects::VmPool {
        let cur = m.read().records.get(&old.id).cloned();
        if let Some(cur) = cur {
            super::vmpools::fill(m, &cur).await?;
            super::vmpools::prestart(m, &cur).await;
        }
    }
    let inv = m.read();
    let rec = inv
        .records
        .get(&old.id)
        .ok_or_else(|| ApiError::not_found("removed meanwhile"))?;
    ok(render(&inv, k, rec))
}

async fn remove(m: &Arc<Manager>, s: &[&str]) -> Out {
    let (k, rec) = locate(&m.read(), s)?;
    if rec.builtin {
        return Err(ApiError::conflict(format!(
            "{} {:?} is predefined and cannot be removed",
            model_label(k.ty),
            rec.name()
        )));
    }
    if let Some(why) = (k.rules.in_use)(&m.read(), &rec) {
        return Err(ApiError::conflict(format!(
            "Cannot remove {} {:?}: {why}",
            model_label(k.ty),
            rec.name()
        )));
    }
    if k.effects == Effects::VmPool {
        super::vmpools::empty(m, &rec.id).await?;
    }
    m.remove::<Record>(&rec.id).await?;
    ok(Node::new("action").with(Node::leaf("status", "complete")))
}

/// Adds `id` (of the list member's type) to a record's list member.
fn with_member(inv: &Inventory, doc: &mut Node, mem: &Member, id: &str) {
    let item = Node::new(item_tag(&mem.ty))
        .attr("href", href_of(inv, &mem.ty, id))
        .attr("id", id);
    match doc.children.iter_mut().find(|c| c.name == mem.name) {
        Some(l) => {
            if !l.children.iter().any(|c| c.attr_of("id") == Some(id)) {
                l.children.push(item);
            }
        }
        None => doc.push(Node::new(&mem.name).with(item)),
    }
}

fn without_member(doc: &mut Node, mem: &Member, id: &str) -> bool {
    let Some(l) = doc.children.iter_mut().find(|c| c.name == mem.name) else {
        return false;
    };
    let before = l.children.len();
    l.children.retain(|c| c.attr_of("id") != Some(id));
    before != l.children.len()
}

async fn store_doc(m: &Arc<Manager>, k: &Kind, rec: &Record, doc: Node) -> Result<(), ApiError> {
    if rec.builtin {
        return Err(ApiError::conflict(format!(
            "{} {:?} is predefined and cannot be changed",
            model_label(k.ty),
            rec.name()
        )));
    }
    let mut doc = doc;
    (k.rules.check)(&m.read(), &mut doc, Some(rec))?;
    m.update(&rec.id, |x: &mut Record| x.doc = doc).await?;
    Ok(())
}

/// `POST /vms/{id}/affinitylabels` `<affinity_label id=..>`: the VM joins the label.
async fn assign(m: &Arc<Manager>, r: &Req, k: &'static Kind, mem: &Member, pid: &str) -> Out {
    let n = r.document(k.tag(), k.ty, &["id", "name"])?;
    let (rec, doc) = {
        let inv = m.read();
        find_ref(&inv, &mem.ty, &Node::new("x").attr("id", pid))?;
        let id = find_ref(&inv, k.ty, &n)?;
        let rec = inv
            .records
            .get(&id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("gone"))?;
        let mut doc = rec.doc.clone();
        with_member(&inv, &mut doc, mem, pid);
        (rec, doc)
    };
    store_doc(m, k, &rec, doc).await?;
    let inv = m.read();
    let cur = inv.records.get(&rec.id).unwrap_or(&rec);
    Ok((StatusCode::CREATED, render(&inv, k, cur)))
}

async fn unassign(m: &Arc<Manager>, k: &'static Kind, mem: &Member, pid: &str, id: &str) -> Out {
    let (rec, doc) = {
        let inv = m.read();
        let rec = inv
            .record(k.ty, id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("{} {id} not found", model_label(k.ty))))?;
        let mut doc = rec.doc.clone();
        if !without_member(&mut doc, mem, pid) {
            return Err(ApiError::not_found(format!(
                "{} {id} is not assigned here",
                model_label(k.ty)
            )));
        }
        (rec, doc)
    };
    store_doc(m, k, &rec, doc).await?;
    ok(Node::new("action").with(Node::leaf("status", "complete")))
}

fn members(m: &Arc<Manager>, item: &[&str], mem: &Member) -> Out {
    let inv = m.read();
    let (_, rec) = locate(&inv, item)?;
    let under = list_href(&inv, item, &rec, mem);
    let mut out = Node::new(&mem.name);
    for id in rec.list(&mem.name) {
        out.push(reference(&inv, &mem.ty, id, &under));
    }
    ok(out)
}

async fn add_member(m: &Arc<Manager>, r: &Req, item: &[&str], mem: &Member) -> Out {
    let tag = item_tag(&mem.ty);
    let n = r.document(&tag, &mem.ty, &["id", "name"])?;
    let (k, rec, doc, id) = {
        let inv = m.read();
        let (k, rec) = locate(&inv, item)?;
        let id = find_ref(&inv, &mem.ty, &n)?;
        let mut doc = rec.doc.clone();
        with_member(&inv, &mut doc, mem, &id);
        (k, rec, doc, id)
    };
    store_doc(m, k, &rec, doc).await?;
    let inv = m.read();
    let under = list_href(&inv, item, &rec, mem);
    Ok((StatusCode::CREATED, reference(&inv, &mem.ty, &id, &under)))
}

async fn remove_member(m: &Arc<Manager>, item: &[&str], mem: &Member, id: &str) -> Out {
    let (k, rec, doc) = {
        let inv = m.read();
        let (k, rec) = locate(&inv, item)?;
        let mut doc = rec.doc.clone();
        if !without_member(&mut doc, mem, id) {
            return Err(ApiError::not_found(format!(
                "{} {id} is not in {}",
                model_label(&mem.ty),
                mem.name
            )));
        }
        (k, rec, doc)
    };
    store_doc(m, k, &rec, doc).await?;
    ok(Node::new("action").with(Node::leaf("status", "complete")))
}

/// A predefined record (seeded at start when missing; see `kinds::builtins`).
pub fn builtin(inv: &Inventory, ty: &str, id: &str, doc: &str) -> Option<Record> {
    let n = Node::parse_xml(doc.as_bytes()).ok()?;
    let doc = normalise(inv, ty, &n).ok()?;
    Some(Record {
        id: id.to_string(),
        ty: ty.to_string(),
        doc,
        builtin: true,
    })
}
