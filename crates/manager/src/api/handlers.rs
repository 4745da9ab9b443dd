//! `/ovirt-engine/api/...`: one function per operation, all answering documents built
//! from the inventory, faults as the SDK expects them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::api::node::Node;
use crate::api::render::{self, href};
use crate::api::search;
use crate::model::*;
use crate::state::Manager;
use crate::vms::VmError;
use tracing::warn;

/// A fault answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub reason: String,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: &str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            reason: reason.into(),
            detail: detail.into(),
        }
    }
    pub fn bad(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Operation Failed", detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not Found", detail)
    }
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Operation Failed", detail)
    }
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Operation Failed",
            detail,
        )
    }
    pub fn node(&self) -> Node {
        Node::new("fault")
            .with(Node::leaf("detail", format!("[{}]", self.detail)))
            .with(Node::leaf("reason", &self.reason))
    }
}

impl From<VmError> for ApiError {
    fn from(e: VmError) -> Self {
        match e {
            VmError::Conflict(m) => ApiError::conflict(m),
            VmError::NotFound(m) => ApiError::not_found(m),
            VmError::Failed(m) => ApiError::bad(m),
        }
    }
}

impl From<crate::storage::StorageOpError> for ApiError {
    fn from(e: crate::storage::StorageOpError) -> Self {
        use crate::storage::StorageOpError as E;
        match e {
            E::Bad(m) => ApiError::bad(m),
            E::Conflict(m) => ApiError::conflict(m),
            E::NotFound(m) => ApiError::not_found(m),
            E::Failed(m) => ApiError::bad(m),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::internal(e.to_string())
    }
}

/// How to answer: XML (the default) or JSON.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    Xml,
    Json,
}

pub fn format_of(headers: &HeaderMap) -> Format {
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("application/json") && !accept.contains("application/xml") {
        Format::Json
    } else {
        Format::Xml
    }
}

pub fn respond(status: StatusCode, n: Node, f: Format) -> Response {
    let (ct, body) = match f {
        Format::Xml => ("application/xml;charset=UTF-8", n.to_xml()),
        // A list serialised as it was made is the answer as it is.
        Format::Json => {
            let body = match n.raw {
                Some(raw) => raw,
                None => n.to_json_string(),
            };
            ("application/json", body)
        }
    };
    crate::memory::after_response(body.len());
    (status, [("content-type", ct)], body).into_response()
}

pub fn fault(e: &ApiError, f: Format) -> Response {
    respond(e.status, e.node(), f)
}

/// A parsed request.
pub struct Req {
    pub method: Method,
    pub segments: Vec<String>,
    pub query: HashMap<String, String>,
    pub body: Vec<u8>,
    pub json_body: bool,
    /// The answer's format.
    pub format: Format,
    /// The `All-Content` header (oVirt reads it as well as the query parameter).
    pub all_content_header: Option<String>,
    /// The host name of the request's `Host` header (what the client reached the
    /// Manager at), without the port.
    pub host_header: Option<String>,
}

impl Req {
    /// `all_content=true|false` (oVirt's query parameter, or its `All-Content`
    /// header; the parameter wins; default false).
    pub(super) fn all_content(&self) -> Result<bool, ApiError> {
        let v = self
            .query
            .get("all_content")
            .or(self.all_content_header.as_ref());
        match v.map(String::as_str) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(v) => Err(ApiError::bad(format!(
                "all_content must be true or false, got {:?}",
                v.chars().take(16).collect::<String>()
            ))),
        }
    }

    /// An action's `<action>` body (empty is allowed): parameters of the model's
    /// action of `service`, and only those the handler acts on.
    /// `current=true|false` (the running VM's devices, or the next run's).
    pub(super) fn current(&self) -> Result<bool, ApiError> {
        match self.query.get("current").map(String::as_str) {
            None | Some("false") => Ok(false),
            Some("true") | Some("") => Ok(true),
            Some(v) => Err(ApiError::bad(format!("current {v:?}: true or false"))),
        }
    }

    pub(super) fn action_body(
        &self,
        service: &str,
        action: &str,
        acts_on: &[&str],
    ) -> Result<Node, ApiError> {
        let body = if self.body.is_empty() {
            Node::new("action")
        } else {
            self.body_node("action")?
        };
        super::validate::check_action(&body, service, action, acts_on)?;
        Ok(body)
    }

    /// A `<root>` document of model type `ty`, checked against what the handler acts on.
    pub(super) fn document(
        &self,
        root: &str,
        ty: &str,
        acts_on: &[&str],
    ) -> Result<Node, ApiError> {
        let n = self.body_node(root)?;
        super::validate::check_document(&n, ty, acts_on)?;
        Ok(n)
    }

    /// Renders a list item now, in the answer's format (see [`Node::serialized`]).
    pub(super) fn body_node(&self, root: &str) -> Result<Node, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::bad("the request needs a body"));
        }
        let n = if self.json_body {
            Node::parse_json(root, &self.body)
        } else {
            Node::parse_xml(&self.body)
        }
        .map_err(|e| ApiError::bad(format!("Request syntactically incorrect: {}", e.0)))?;
        if n.name != root {
            return Err(ApiError::bad(format!(
                "expected a <{root}> document, got <{}>",
                n.name
            )));
        }
        Ok(n)
    }

    pub(super) fn max(&self) -> Result<Option<usize>, ApiError> {
        match self.query.get("max").map(String::as_str) {
            None | Some("") | Some("-1") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad(format!("max={v:?} is not a number"))),
        }
    }

    /// The `follow` parameter: links to embed, each one of `allowed`.
    pub(super) fn follow(&self, allowed: &[&str]) -> Result<Vec<String>, ApiError> {
        let Some(f) = self.query.get("follow") else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for part in f.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if !allowed.contains(&part) {
                return Err(ApiError::bad(format!(
                    "follow={part:?}: the link cannot be followed here (known: {})",
                    allowed.join(", ")
                )));
            }
            out.push(part.to_string());
        }
        Ok(out)
    }

    /// The `search` parameter (with `case_sensitive`, true unless `false`, as oVirt's
    /// API defaults).
    pub(super) fn search(&self, fields: &[&str]) -> Result<search::Query, ApiError> {
        let cs = match self.query.get("case_sensitive").map(String::as_str) {
            None | Some("") | Some("true") => true,
            Some("false") => false,
            Some(v) => {
                return Err(ApiError::bad(format!(
                    "case_sensitive={v:?}: true or false"
                )))
            }
        };
        search::parse(
            self.query.get("search").map(String::as_str).unwrap_or(""),
            fields,
            cs,
        )
        .map_err(|e| ApiError::bad(e.to_string()))
    }
}

/// What the handlers act on, per document (see `validate`): everything else in a
/// request is refused, naming it.
const VM_ADD: &[&str] = &[
    "name",
    "description",
    "cluster",
    "template",
    "memory",
    "cpu/topology",
    "os/type",
    "os/kernel",
    "os/initrd",
    "os/cmdline",
    "os/boot/devices",
    "bios/type",
    "type",
    "instance_type",
    "quota",
    "placement_policy",
    "serial_number",
    "console/enabled",
    "display/type",
    "disk_attachments/disk/format",
    "disk_attachments/disk/storage_domains",
    "high_availability/enabled",
    "high_availability/priority",
    "lease/storage_domain",
    "id",
];
const VM_UPDATE: &[&str] = &[
    "quota",
    "high_availability/enabled",
    "high_availability/priority",
    "lease/storage_domain",
    "placement_policy",
    "serial_number",
    "console/enabled",
    "name",
    "description",
    "memory",
    "cpu/topology",
    "os/type",
    "os/kernel",
    "os/initrd",
    "os/cmdline",
    "os/boot/devices",
    "bios/type",
    "id",
];
const HOST_ADD: &[&str] = &["name", "address", "port", "root_password", "cluster"];
const HOST_UPDATE: &[&str] = &[
    "name",
    "spm/priority",
    "cluster",
    "power_management/enabled",
    "power_management/automatic_pm_enabled",
    "id",
];
const NIC_ADD: &[&str] = &[
    "name",
    "description",
    "interface",
    "mac",
    "network",
    "vnic_profile",
];
const DC_ADD: &[&str] = &["name", "description", "local"];
const CLUSTER_ADD: &[&str] = &[
    "name",
    "description",
    "data_center",
    "cpu/type",
    "cpu/architecture",
    "mac_pool",
    "scheduling_policy",
];

pub(super) fn check_fields(n: &Node, allowed: &[&str]) -> Result<(), ApiError> {
    for c in &n.children {
        if !allowed.contains(&c.name.as_str()) {
            return Err(ApiError::bad(format!(
                "Request syntactically incorrect: unknown element <{}> in <{}>",
                c.name, n.name
            )));
        }
    }
    Ok(())
}

pub(super) fn check_name(s: &str, what: &str) -> Result<(), ApiError> {
    if s.is_empty() || s.chars().count() > 255 || s.chars().any(char::is_control) {
        return Err(ApiError::bad(format!(
            "{what}: a name of 1 to 255 printable characters is required"
        )));
    }
    Ok(())
}

pub(super) fn check_id(id: &str) -> Result<(), ApiError> {
    if uuid::Uuid::parse_str(id).is_err() && id.parse::<i64>().is_err() {
        return Err(ApiError::not_found(format!(
            "Entity not found: {}",
            id.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

const VM_FOLLOW: &[&str] = &["nics", "cluster", "host", "template"];
const HOST_FOLLOW: &[&str] = &["cluster"];

/// A VM with the links in `follow` embedded.
fn vm_node(inv: &Inventory, v: &Vm, follow: &[String]) -> Node {
    let want = |k: &str| follow.iter().any(|f| f == k);
    let nics = if want("nics") {
        inv.nics_of(&v.id)
    } else {
        Vec::new()
    };
    let mut n = render::vm(v, &nics);
    if v.status == "down" && vm_images_locked(inv, &v.id) {
        n.replace("status", Node::leaf("status", "image_locked"));
    }
    if want("cluster") {
        if let Some(c) = inv.clusters.get(&v.cluster) {
            n.replace("cluster", render::cluster(c));
        }
    }
    if want("host") {
        if let Some(h) = v.host.as_ref().and_then(|h| inv.hosts.get(h)) {
            n.replace("host", render::host(h, inv.scheduling_memory(h)));
        }
    }
    if want("template") {
        match inv.templates.get(&v.template) {
            Some(t) => n.replace("template", render::template(t)),
            None => n.replace("template", render::blank_template(Some(&v.cluster))),
        }
    }
    n
}

/// `all_content=true`: the VM's OVF in `initialization/configuration` (type ovf), as
/// the engine answers it.
fn with_ovf(inv: &Inventory, v: &Vm, mut n: Node, all: bool) -> Node {
    if all {
        let conf = Node::new("configuration")
            .with(Node::leaf("type", "ovf"))
            .with(Node::leaf("data", crate::ovf::vm_ovf(inv, v)));
        match n.children.iter_mut().find(|c| c.name == "initialization") {
            Some(i) => i.push(conf),
            None => n.push(Node::new("initialization").with(conf)),
        }
    }
    n
}

/// A down VM whose disks are being made or changed shows image_locked.
fn vm_images_locked(inv: &Inventory, vm: &str) -> bool {
    inv.disks_of(vm).iter().any(|d| d.status == "locked")
}

/// A host with the links in `follow` embedded.
fn host_node(inv: &Inventory, h: &Host, follow: &[String]) -> Node {
    let mut n = render::host(h, inv.scheduling_memory(h));
    if follow.iter().any(|f| f == "cluster") {
        if let Some(c) = inv.clusters.get(&h.cluster) {
            n.replace("cluster", render::cluster(c));
        }
    }
    n
}

/// A collection: the objects `search` matches (`field` gives an object's values of a
/// search field), at most `max`, each rendered and serialised in turn.
pub(super) fn search_list<'a, T: Sync + 'a>(
    r: &Req,
    name: &str,
    fields: &[&str],
    objects: impl Iterator<Item = &'a T>,
    field: impl Fn(&T, &str) -> Vec<String>,
    render: impl Fn(&T) -> Node + Sync,
) -> Out {
    search_list_indexed(r, name, fields, objects, |_| None, field, render)
}

/// [`search_list`] with an index: `lookup(query)` gives the only candidates when the
/// query pins a field an index has (`name=x`, `id=x`; see `Query::exact`).
pub(super) fn search_list_indexed<'a, T: Sync + 'a>(
    r: &Req,
    name: &str,
    fields: &[&str],
    objects: impl Iterator<Item = &'a T>,
    lookup: impl Fn(&search::Query) -> Option<Vec<&'a T>>,
    field: impl Fn(&T, &str) -> Vec<String>,
    render: impl Fn(&T) -> Node + Sync,
) -> Out {
    let q = r.search(fields)?;
    let max = r.max()?;
    let hits: Vec<&T> = match lookup(&q) {
        Some(c) => c
            .into_iter()
            .filter(|o| q.matches(|f| field(o, f)))
            .collect(),
        None => objects.filter(|o| q.matches(|f| field(o, f))).collect(),
    };
    let hits = q.arrange(hits, |o, f| field(o, f), max);
    ok(Node::list_of_par(
        name,
        &hits,
        |o: &&T| render(o),
        r.format == Format::Json,
    ))
}

/// The name of a cluster, and of the data center a cluster belongs to, as search values.
fn cluster_name(inv: &Inventory, cluster: &str) -> Vec<String> {
    inv.clusters
        .get(cluster)
        .map(|c| vec![c.name.clone()])
        .unwrap_or_default()
}

fn dc_name(inv: &Inventory, dc: &str) -> Vec<String> {
    inv.data_centers
        .get(dc)
        .map(|d| vec![d.name.clone()])
        .unwrap_or_default()
}

fn dc_name_of_cluster(inv: &Inventory, cluster: &str) -> Vec<String> {
    inv.clusters
        .get(cluster)
        .map(|c| dc_name(inv, &c.data_center))
        .unwrap_or_default()
}

pub(super) fn list(name: &str, items: Vec<Node>, max: Option<usize>) -> Node {
    let mut n = Node::new(name.to_string());
    for i in items.into_iter().take(max.unwrap_or(usize::MAX)) {
        n.push(i);
    }
    n
}

pub(super) fn parse_u64(n: &Node, k: &str) -> Result<Option<u64>, ApiError> {
    match n.text_of(k) {
        None => Ok(None),
        Some(v) => {
            v.trim().parse::<u64>().map(Some).map_err(|_| {
                ApiError::bad(format!("<{k}> must be a non-negative integer, got {v:?}"))
            })
        }
    }
}

/// Resolves a reference `<cluster id=".."/>` or `<cluster><name>..</name></cluster>`.
pub(super) fn ref_id(
    n: Option<&Node>,
    by_name: impl Fn(&str) -> Option<String>,
    what: &str,
) -> Result<Option<String>, ApiError> {
    let Some(n) = n else { return Ok(None) };
    if let Some(id) = n.id() {
        return Ok(Some(id.to_string()));
    }
    if let Some(name) = n.text_of("name") {
        return by_name(name)
            .map(Some)
            .ok_or_else(|| ApiError::bad(format!("{what} {name:?} does not exist")));
    }
    Err(ApiError::bad(format!("{what}: give an id or a name")))
}

/// Dispatches one API request.
pub async fn dispatch(m: &Arc<Manager>, r: Req, f: Format) -> Response {
    match route(m, &r).await {
        Ok((status, n)) => respond(status, n, f),
        Err(e) => fault(&e, f),
    }
}

pub(super) type Out = Result<(StatusCode, Node), ApiError>;

pub(super) fn ok(n: Node) -> Out {
    Ok((StatusCode::OK, n))
}

/// One item of a collection by id, or 404 naming what was asked for.
pub(super) fn show<T>(
    items: &std::collections::BTreeMap<String, T>,
    id: &str,
    what: &str,
    render: impl FnOnce(&T) -> Node,
) -> Out {
    check_id(id)?;
    items
        .get(id)
        .map(render)
        .map(ok)
        .unwrap_or_else(|| Err(ApiError::not_found(format!("{what} {id} not found"))))
}

async fn route(m: &Arc<Manager>, r: &Req) -> Out {
    let s: Vec<&str> = r.segments.iter().map(String::as_str).collect();
    let get = r.method == Method::GET;
    let post = r.method == Method::POST;
    let put = r.method == Method::PUT;
    let del = r.method == Method::DELETE;
    for id in s.iter().skip(1).step_by(2) {
        // Every second segment is an id (or an action / sub-collection name, checked
        // by the match below).
        if id.len() > 128 {
            return Err(ApiError::not_found("Entity not found"));
        }
    }
    // Halyard's own collections first; everything else is oVirt's model.
    if let Some(out) = super::jointokens::route(m, r, &s).await {
        return out;
    }
    let model = super::model::model();
    let Some(res) = model.resolve(&s) else {
        return Err(ApiError::not_found(format!(
            "No resource for {} /{}",
            r.method,
            r.segments.join("/")
        )));
    };
    check_method(&res, &r.method)?;
    if let Some(out) = super::storage::route(m, r, &s).await {
        return out;
    }
    if let Some(out) = super::tags::route(m, r, &s).await {
        return out;
    }
    if let Some(out) = super::inventory::route(m, r, &s).await {
        return out;
    }
    if let Some(out) = super::records::route(m, r, &s).await {
        return out;
    }
    if let Some(out) = super::statistics::route(m, r, &s).await {
        return out;
    }
    if let Some(out) = super::transfers::route(m, r, &s).await {
        return out;
    }
    if let Some(out) = super::cdroms::route(m, r, &s).await {
        return out;
    }
    if let Some(out) = super::consoles::route(m, r, &s).await {
        return out;
    }
    if let Some(out) = super::fencing::route(m, r, &s).await {
        return out;
    }
    match s.as_slice() {
        [] if get => ok(root(m)),
        ["datacenters"] if get => dcs(m, r),
        ["datacenters"] if post => add_dc(m, r).await,
        ["datacenters", id] if get => show(
            &m.read().data_centers,
            id,
            "Data center",
            render::data_center,
        ),
        ["datacenters", id, "clusters"] if get => {
            let inv = m.read();
            ok(list(
                "clusters",
                inv.clusters
                    .values()
                    .filter(|c| c.data_center == *id)
                    .map(render::cluster)
                    .collect(),
                None,
            ))
        }
        ["datacenters", id, "networks"] if get => {
            let inv = m.read();
            ok(list(
                "networks",
                inv.networks
                    .values()
                    .filter(|c| c.data_center == *id)
                    .map(render::network)
                    .collect(),
                None,
            ))
        }
        ["clusters"] if get => clusters(m, r),
        ["clusters"] if post => add_cluster(m, r).await,
        ["clusters", id] if get => show(&m.read().clusters, id, "Cluster", render::cluster),
        ["networks"] if get => {
            let inv = m.read();
            search_list(
                r,
                "networks",
                &["name", "datacenter", "id"],
                inv.networks.values(),
                |n, f| match f {
                    "name" => vec![n.name.clone()],
                    "id" => vec![n.id.clone()],
                    _ => dc_name(&inv, &n.data_center),
                },
                render::network,
            )
        }
        ["networks", id] if get => show(&m.read().networks, id, "Network", render::network),
        ["templates", id] if get => {
            if *id == BLANK_TEMPLATE {
                ok(render::blank_template(None))
            } else {
                Err(ApiError::not_found(format!("Template {id} not found")))
            }
        }
        ["hosts"] if get => hosts(m, r),
        ["hosts"] if post => add_host(m, r).await,
        ["hosts", id] if get => {
            let follow = r.follow(HOST_FOLLOW)?;
            let inv = m.read();
            show(&inv.hosts, id, "Host", |h| host_node(&inv, h, &follow))
        }
        ["hosts", id] if put => update_host(m, id, r).await,
        ["hosts", id] if del => remove_host(m, id).await,
        ["hosts", id, action] if post && HOST_ACTIONS.contains(action) => {
            host_action(m, id, action, r).await
        }
        ["vms"] if get => vms(m, r),
        ["vms"] if post => add_vm(m, r).await,
        ["vms", id] if get => {
            let follow = r.follow(VM_FOLLOW)?;
            let inv = m.read();
            let all = r.all_content()?;
            show(&inv.vms, id, "VM", |v| {
                with_ovf(&inv, v, vm_node(&inv, v, &follow), all)
            })
        }
        ["vms", id] if put => update_vm(m, id, r).await,
        ["vms", id] if del => remove_vm(m, id, r).await,
        ["vms", id, "nics"] if get => {
            check_id(id)?;
            let inv = m.read();
            if !inv.vms.contains_key(*id) {
                return Err(ApiError::not_found(format!("VM {id} not found")));
            }
            ok(list(
                "nics",
                inv.nics_of(id).into_iter().map(render::nic).collect(),
                None,
            ))
        }
        ["vms", id, "nics"] if post => add_nic(m, id, r).await,
        ["vms", vid, "nics", nid] if get => {
            let inv = m.read();
            inv.nics
                .get(*nid)
                .filter(|n| n.vm == *vid)
                .map(render::nic)
                .map(ok)
                .unwrap_or_else(|| Err(ApiError::not_found(format!("NIC {nid} not found"))))
        }
        ["vms", vid, "nics", nid] if del => remove_nic(m, vid, nid).await,
        ["vms", id, "reporteddevices"] if get => reported_devices(m, id),
        ["vms", id, "numanodes"] if get => super::numa::list(m, id),
        ["vms", id, "numanodes"] if post => super::numa::add(m, id, r).await,
        ["vms", vid, "numanodes", nid] if get => super::numa::get(m, vid, nid),
        ["vms", vid, "numanodes", nid] if put => super::numa::update(m, vid, nid, r).await,
        ["vms", vid, "numanodes", nid] if del => super::numa::remove(m, vid, nid).await,
        ["vms", id, action] if post && VM_ACTIONS.contains(action) => {
            vm_action(m, id, action, r).await
        }
        ["events"] if get => events(m, r),
        ["events", id] if get => {
            let id: i64 = id
                .parse()
                .map_err(|_| ApiError::not_found(format!("Event {id} not found")))?;
            let inv = m.read();
            inv.events
                .iter()
                .find(|e| e.id == id)
                .map(render::event)
                .map(ok)
                .unwrap_or_else(|| Err(ApiError::not_found(format!("Event {id} not found"))))
        }
        ["jobs"] if get => {
            let inv = m.read();
            let mut js: Vec<&Job> = inv.jobs.values().collect();
            js.sort_by_key(|j| std::cmp::Reverse(j.start_time));
            ok(list(
                "jobs",
                js.into_iter().map(render::job).collect(),
                r.max()?,
            ))
        }
        ["jobs", id] if get => show(&m.read().jobs, id, "Job", render::job),
        ["jobs", _, "steps"] if get => ok(Node::new("steps")),
        ["operatingsystems"] if get => ok(list(
            "operating_systems",
            super::inventory::OPERATING_SYSTEMS
                .iter()
                .enumerate()
                .map(|(i, n)| super::inventory::operating_system(i, n))
                .collect(),
            None,
        )),
        _ => Err(not_implemented(&res, r)),
    }
}

/// What host actions act on: `cluster` (approve), `async` (answered when done).
const HOST_ACTION_PARAMS: &[&str] = &["cluster", "async"];

/// The actions of hosts and VMs Halyard carries out (the others of the model are 501).
const HOST_ACTIONS: &[&str] = &[
    "approve",
    "activate",
    "deactivate",
    "refresh",
    "enrollcertificate",
    "upgradecheck",
];
const VM_ACTIONS: &[&str] = &[
    "start",
    "stop",
    "shutdown",
    "reboot",
    "suspend",
    "migrate",
    "cancelmigration",
];

/// The HTTP method must be one the model gives the service (or POST for an action).
fn check_method(res: &super::model::Resolved<'_>, method: &Method) -> Result<(), ApiError> {
    use super::model::Method as M;
    let s = res.service;
    let ok = match (method, res.action) {
        (m, Some(_)) => *m == Method::POST,
        (m, None) if *m == Method::GET => s.has(M::List) || s.has(M::Get),
        (m, None) if *m == Method::POST => s.has(M::Add),
        (m, None) if *m == Method::PUT => s.has(M::Update),
        (m, None) if *m == Method::DELETE => s.has(M::Remove),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let methods: Vec<&str> = s.methods.iter().map(|m| m.as_str()).collect();
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method Not Allowed",
        format!(
            "{method} is not a method of {} in oVirt's API (it has: {})",
            s.name,
            if methods.is_empty() {
                "none".to_string()
            } else {
                methods.join(", ")
            }
        ),
    ))
}

/// A service (or action) of oVirt's API that Halyard does not implement yet: an
/// honest 501 naming it, never an empty list or a silent accept.
fn not_implemented(res: &super::model::Resolved<'_>, r: &Req) -> ApiError {
    use super::model::Method as M;
    let s = res.service;
    let what = match res.action {
        Some(a) => format!("the action {} of {}", a.name, s.name),
        None => {
            let m = if r.method == Method::GET {
                if s.has(M::List) {
                    M::List
                } else {
                    M::Get
                }
            } else if r.method == Method::POST {
                M::Add
            } else if r.method == Method::PUT {
                M::Update
            } else {
                M::Remove
            };
            format!("{}.{}", s.name, m.as_str())
        }
    };
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "Not Implemented",
        format!(
            "Halyard does not implement {what} yet ({} /ovirt-engine/api/{})",
            r.method,
            r.segments.join("/")
        ),
    )
}

fn root(m: &Arc<Manager>) -> Node {
    let inv = m.read();
    let mut n = Node::new("api");
    // Every service of the root, from the model; `<coll>/search` for the searchable.
    let model = super::model::model();
    for (path, svc) in &model.root().locators {
        n.push(Node::link(path, format!("{}/{path}", render::BASE)));
        let searchable = model.service(svc).is_some_and(|s| s.list.is_some())
            && [
                "vms",
                "hosts",
                "clusters",
                "datacenters",
                "templates",
                "storagedomains",
                "disks",
                "events",
                "networks",
            ]
            .contains(&path.as_str());
        if searchable {
            n.push(Node::link(
                format!("{path}/search"),
                format!("{}/{path}?search={{query}}", render::BASE),
            ));
        }
    }
    n.push(
        Node::new("product_info")
            .with(Node::leaf("instance_id", &m.pki.ca_fingerprint))
            .with(Node::leaf("name", "Halyard Manager"))
            .with(Node::leaf("vendor", "Halyard"))
            .with(
                Node::new("version")
                    .with(Node::leaf("build", 0))
                    .with(Node::leaf("full_version", "4.5.0-halyard"))
                    .with(Node::leaf("major", 4))
                    .with(Node::leaf("minor", 5))
                    .with(Node::leaf("revision", 0)),
            ),
    );
    n.push(Node::new("special_objects").with(Node::reference(
        "blank_template",
        &href("templates", BLANK_TEMPLATE),
        BLANK_TEMPLATE,
    )));
    let up_hosts = inv.hosts.values().filter(|h| h.status == "up").count();
    let up_vms = inv.vms.values().filter(|v| v.status == "up").count();
    let up_sds = inv
        .storage_domains
        .values()
        .filter(|s| s.status == "active")
        .count();
    let users = inv.records_of("User").count();
    let item = |name: &'static str, active: usize, total: usize| {
        Node::new(name)
            .with(Node::leaf("active", active))
            .with(Node::leaf("total", total))
    };
    // oVirt's summary: users active = logged in (the admin, who is asking).
    n.push(
        Node::new("summary")
            .with(item("hosts", up_hosts, inv.hosts.len()))
            .with(item("storage_domains", up_sds, inv.storage_domains.len()))
            .with(item("users", 1.min(users), users))
            .with(item("vms", up_vms, inv.vms.len())),
    );
    n.push(Node::leaf("time", iso8601(now_ms())));
    n.push(Node::reference(
        "authenticated_user",
        &format!("{}/users/{}", render::BASE, super::access::ADMIN_USER_ID),
        super::access::ADMIN_USER_ID,
    ));
    n
}

fn dcs(m: &Arc<Manager>, r: &Req) -> Out {
    let inv = m.read();
    search_list(
        r,
        "data_centers",
        &["name", "id", "status", "cluster"],
        inv.data_centers.values(),
        |d, f| match f {
            "name" => vec![d.name.clone()],
            "id" => vec![d.id.clone()],
            "cluster" => inv
                .clusters
                .values()
                .filter(|c| c.data_center == d.id)
                .map(|c| c.name.clone())
                .collect(),
            _ => vec![d.status.clone()],
        },
        render::data_center,
    )
}

async fn add_dc(m: &Arc<Manager>, r: &Req) -> Out {
    let n = r.body_node("data_center")?;
    super::validate::check_document(&n, "DataCenter", DC_ADD)?;
    let name = n.text_of("name").unwrap_or("").to_string();
    check_name(&name, "data center")?;
    let _g = m.write_lock.lock().await;
    if m.read().dc_by_name(&name).is_some() {
        return Err(ApiError::conflict(format!(
            "Cannot add Data Center. The name {name:?} is already in use."
        )));
    }
    let dc = DataCenter {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        description: n.text_of("description").unwrap_or("").to_string(),
        local: n.text_of("local") == Some("true"),
        status: "uninitialized".into(),
        ..Default::default()
    };
    let net = Network {
        id: uuid::Uuid::new_v4().to_string(),
        name: "ovirtmgmt".into(),
        description: "Management Network".into(),
        data_center: dc.id.clone(),
        mtu: 0,
        vlan: None,
        usages: vec!["vm".into(), "management".into()],
        clusters: None,
    };
    m.insert(&dc)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    m.insert(&net)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    super::kinds::companions(m, "Network", &net.id).await?;
    m.event(
        950,
        "normal",
        format!("Data Center {} was added by admin@internal.", dc.name),
        None,
        None,
    )
    .await;
    Ok((StatusCode::CREATED, render::data_center(&dc)))
}

fn clusters(m: &Arc<Manager>, r: &Req) -> Out {
    let inv = m.read();
    search_list(
        r,
        "clusters",
        &["name", "id", "datacenter"],
        inv.clusters.values(),
        |c, f| match f {
            "name" => vec![c.name.clone()],
            "id" => vec![c.id.clone()],
            _ => dc_name(&inv, &c.data_center),
        },
        render::cluster,
    )
}

async fn add_cluster(m: &Arc<Manager>, r: &Req) -> Out {
    let n = r.body_node("cluster")?;
    super::validate::check_document(&n, "Cluster", CLUSTER_ADD)?;
    let name = n.text_of("name").unwrap_or("").to_string();
    check_name(&name, "cluster")?;
    let _g = m.write_lock.lock().await;
    let dc = {
        let inv = m.read();
        ref_id(
            n.get("data_center"),
            |x| inv.dc_by_name(x).map(|d| d.id.clone()),
            "data center",
        )?
        .ok_or_else(|| ApiError::bad("a cluster needs a data_center"))?
    };
    if !m.read().data_centers.contains_key(&dc) {
        return Err(ApiError::not_found(format!("Data center {dc} not found")));
    }
    if m.read().cluster_by_name(&name).is_some() {
        return Err(ApiError::conflict(format!(
            "Cannot add Cluster. The name {name:?} is already in use."
        )));
    }
    if let Some(a) = n.get("cpu").and_then(|c| c.text_of("architecture")) {
        if a != "x86_64" {
            return Err(ApiError::bad(format!(
                "Cannot add Cluster. CPU architecture {a:?}: Halyard runs x86_64 hosts only"
            )));
        }
    }
    let mac_pool = match n.get("mac_pool") {
        Some(p) => super::records::find_ref(&m.read(), "MacPool", p)?,
        None => String::new(),
    };
    let scheduling_policy = match n.get("scheduling_policy") {
        Some(p) => super::records::find_ref(&m.read(), "SchedulingPolicy", p)?,
        None => String::new(),
    };
    let c = Cluster {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        description: n.text_of("description").unwrap_or("").to_string(),
        data_center: dc,
        cpu_type: n
            .get("cpu")
            .and_then(|c| c.text_of("type"))
            .unwrap_or("Halyard Any CPU")
            .to_string(),
        mac_pool,
        scheduling_policy,
        fencing_enabled: true,
        fencing_skip_if_sd_active: false,
        migration_bandwidth_mbps: None,
    };
    m.insert(&c)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    super::kinds::companions(m, "Cluster", &c.id).await?;
    m.event(
        809,
        "normal",
        format!("Cluster {} was added by admin@internal.", c.name),
        None,
        None,
    )
    .await;
    Ok((StatusCode::CREATED, render::cluster(&c)))
}

fn hosts(m: &Arc<Manager>, r: &Req) -> Out {
    let follow = r.follow(HOST_FOLLOW)?;
    let inv = m.read();
    search_list(
        r,
        "hosts",
        &[
            "name",
            "id",
            "status",
            "cluster",
            "datacenter",
            "address",
            "memory",
            "vm",
            "vm.status",
            "tag",
        ],
        inv.hosts.values(),
        |h, f| match f {
            "name" => vec![h.name.clone()],
            "id" => vec![h.id.clone()],
            "status" => vec![h.status.clone()],
            "address" => vec![h.address.clone()],
            "memory" => vec![h.memory.to_string()],
            "tag" => super::tags::names(&inv, &h.tags),
            "cluster" => cluster_name(&inv, &h.cluster),
            "vm" | "vm.status" => inv
                .vms_on(&h.id)
                .map(|v| {
                    if f == "vm" {
                        v.name.clone()
                    } else {
                        v.status.clone()
                    }
                })
                .collect(),
            _ => dc_name_of_cluster(&inv, &h.cluster),
        },
        |h| host_node(&inv, h, &follow),
    )
}

async fn add_host(m: &Arc<Manager>, r: &Req) -> Out {
    let n = r.document("host", "Host", HOST_ADD)?;
    let name = n.text_of("name").unwrap_or("").to_string();
    check_name(&name, "host")?;
    let address = n.text_of("address").unwrap_or("").to_string();
    check_name(&address, "host address")?;
    if address.contains(['/', ' ', '@']) {
        return Err(ApiError::bad(format!("invalid host address {address:?}")));
    }
    let token = n.text_of("root_password").unwrap_or("").to_string();
    let port = parse_u64(&n, "port")?.unwrap_or(54321);
    if port == 0 || port > 65535 {
        return Err(ApiError::bad("port out of range"));
    }
    let _g = m.write_lock.lock().await;
    let cluster = {
        let inv = m.read();
        ref_id(
            n.get("cluster"),
            |x| inv.cluster_by_name(x).map(|c| c.id.clone()),
            "cluster",
        )?
        .or_else(|| inv.clusters.keys().next().cloned())
        .ok_or_else(|| ApiError::bad("no cluster"))?
    };
    if !m.read().clusters.contains_key(&cluster) {
        return Err(ApiError::not_found(format!("Cluster {cluster} not found")));
    }
    if m.read().host_by_name(&name).is_some() {
        return Err(ApiError::conflict(format!(
            "Cannot add Host. The Host name {name:?} is already in use."
        )));
    }
    let h = crate::register::enroll_host(m, &name, &address, port as u16, &cluster, &token)
        .await
        .map_err(|e| ApiError::bad(format!("Cannot add Host. {e}")))?;
    let sm = m.read().scheduling_memory(&h);
    Ok((StatusCode::CREATED, render::host(&h, sm)))
}

async fn update_host(m: &Arc<Manager>, id: &str, r: &Req) -> Out {
    check_id(id)?;
    let n = r.document("host", "Host", HOST_UPDATE)?;
    let name = n.text_of("name");
    if let Some(name) = name {
        check_name(name, "host")?;
    }
    let priority = match n.get("spm").and_then(|s| s.text_of("priority")) {
        Some(p) => {
            let p: i32 = p
                .parse()
                .map_err(|_| ApiError::bad("spm priority must be an integer"))?;
            if !(-1..=10).contains(&p) {
                return Err(ApiError::bad("spm priority must be between -1 and 10"));
            }
            Some(p)
        }
        None => None,
    };
    let pm = n.get("power_management");
    let pm_enabled = bool_at(pm, &["enabled"])?;
    let pm_automatic = bool_at(pm, &["automatic_pm_enabled"])?;
    let _g = m.write_lock.lock().await;
    // Another cluster: in maintenance, within its data center (a move across data
    // centers would change its storage pool; not done yet).
    let cluster = match n.get("cluster") {
        None => None,
        Some(c) => {
            let inv = m.read();
            let cid = ref_id(
                Some(c),
                |x| inv.cluster_by_name(x).map(|c| c.id.clone()),
                "cluster",
            )?
            .unwrap_or_default();
            let h = inv
                .hosts
                .get(id)
                .ok_or_else(|| ApiError::not_found(format!("Host {id} not found")))?;
            let to = inv
                .clusters
                .get(&cid)
                .ok_or_else(|| ApiError::not_found(format!("Cluster {cid} not found")))?;
            if cid != h.cluster {
                if h.status != "maintenance" {
                    return Err(ApiError::conflict(format!(
                        "Cannot edit Host. Host {} must be in maintenance to change its cluster.",
                        h.name
                    )));
                }
                if inv.dc_of_cluster(&h.cluster) != Some(to.data_center.as_str()) {
                    return Err(ApiError::bad(format!(
                        "Cannot move host {} to cluster {}: it is in another data center (Halyard moves hosts within their data center only, for now)",
                        h.name, to.name
                    )));
                }
                let pinned = pinned_to(&inv, id);
                if !pinned.is_empty() {
                    return Err(ApiError::conflict(format!(
                        "Cannot edit Host. The following VMs are pinned to it: {}.",
                        pinned.join(", ")
                    )));
                }
            }
            Some(cid)
        }
    };
    if let Some(name) = name {
        if m.read()
            .hosts
            .values()
            .any(|h| h.name == name && h.id != id)
        {
            return Err(ApiError::conflict(format!(
                "Cannot edit Host. The Host name {name:?} is already in use."
            )));
        }
    }
    // Only the fields the request names change.
    let h = m
        .update(id, |h: &mut Host| {
            if let Some(name) = name {
                h.name = name.to_string();
            }
            if let Some(p) = priority {
                h.spm_priority = p;
            }
            if let Some(e) = pm_enabled {
                h.pm_enabled = e;
            }
            if let Some(e) = pm_automatic {
                h.pm_automatic = e;
            }
            if let Some(c) = &cluster {
                h.cluster = c.clone();
            }
            h.clone()
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Host {id} not found")))?;
    let sm = m.read().scheduling_memory(&h);
    ok(render::host(&h, sm))
}

async fn remove_host(m: &Arc<Manager>, id: &str) -> Out {
    check_id(id)?;
    let _g = m.write_lock.lock().await;
    let h = m
        .read()
        .hosts
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("Host {id} not found")))?;
    if m.read().host_runs_vms(id) {
        return Err(ApiError::conflict(format!(
            "Cannot remove Host. Host {} has running VMs.",
            h.name
        )));
    }
    let pinned = pinned_to(&m.read(), id);
    if !pinned.is_empty() {
        return Err(ApiError::conflict(format!(
            "Cannot remove Host. The following VMs are pinned to it: {}.",
            pinned.join(", ")
        )));
    }
    if !matches!(
        h.status.as_str(),
        "maintenance" | "pending_approval" | "non_responsive" | "install_failed" | "down"
    ) {
        return Err(ApiError::conflict(format!(
            "Cannot remove Host. Host {} is {}; move it to maintenance first.",
            h.name, h.status
        )));
    }
    m.unmonitor(id);
    m.remove::<Host>(id)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    m.event(
        42,
        "normal",
        format!("Host {} was removed by admin@internal.", h.name),
        None,
        None,
    )
    .await;
    ok(Node::new("action").with(Node::leaf("status", "complete")))
}

async fn host_action(m: &Arc<Manager>, id: &str, action: &str, r: &Req) -> Out {
    check_id(id)?;
    let body = r.action_body("HostService", action, HOST_ACTION_PARAMS)?;
    let h = m
        .read()
        .hosts
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("Host {id} not found")))?;
    let job = m.start_job(format!("Host {action}: {}", h.name)).await;
    let result = match action {
        "approve" => {
            let cluster = {
                let inv = m.read();
                ref_id(
                    body.get("cluster"),
                    |x| inv.cluster_by_name(x).map(|c| c.id.clone()),
                    "cluster",
                )?
            };
            crate::register::approve(m, id, cluster)
                .await
                .map_err(|e| ApiError::conflict(e.to_string()))
        }
        "deactivate" => m.host_deactivate(id).await.map_err(ApiError::from),
        "activate" => {
            if h.status == "pending_approval" {
                Err(ApiError::conflict(format!(
                    "Cannot activate Host {}: it is pending approval.",
                    h.name
                )))
            } else {
                m.set_host_status(id, "connecting").await;
                m.monitor(id);
                m.event(
                    17,
                    "normal",
                    format!("Host {} was activated by admin@internal.", h.name),
                    Some(id),
                    None,
                )
                .await;
                Ok(())
            }
        }
        "refresh" => Ok(()),
        "upgradecheck" => {
            crate::hosts::check_for_updates(m, id).await;
            Ok(())
        }
        "enrollcertificate" => m.renew_certificate(id).await.map_err(|e| {
            ApiError::conflict(format!(
                "Cannot enroll the certificate of Host {}: {e}",
                h.name
            ))
        }),
        "forceselectspm" => Err(ApiError::conflict(format!(
            "{action} needs storage (not available on host {})",
            h.name
        ))),
        other => Err(ApiError::not_found(format!("No action {other} on hosts"))),
    };
    m.finish_job(&job, result.is_ok()).await;
    result?;
    ok(render::action_done(Some(&job)))
}

fn vms(m: &Arc<Manager>, r: &Req) -> Out {
    let follow = r.follow(VM_FOLLOW)?;
    let all = r.all_content()?;
    let inv = m.read();
    let lookup = |q: &search::Query| {
        if let Some(id) = q.exact("id") {
            return Some(inv.vms.get(id).into_iter().collect());
        }
        q.exact("name")
            .map(|n| inv.vm_by_name(n).into_iter().collect())
    };
    search_list_indexed(
        r,
        "vms",
        &[
            "name",
            "id",
            "status",
            "cluster",
            "host",
            "datacenter",
            "template",
            "memory",
            "os",
            "type",
            "description",
            "host.status",
            "tag",
            "pool",
        ],
        inv.vms.values(),
        lookup,
        |v, f| match f {
            "pool" => v
                .pool
                .as_ref()
                .and_then(|p| inv.record("VmPool", p))
                .map(|p| vec![p.name().to_string()])
                .unwrap_or_default(),
            "name" => vec![v.name.clone()],
            "id" => vec![v.id.clone()],
            "status" => vec![v.status.clone()],
            "memory" => vec![(v.memory >> 20).to_string()],
            "os" => vec![v.os_type.clone()],
            "tag" => super::tags::names(&inv, &v.tags),
            "type" => vec![v.vm_type.clone()],
            "description" => vec![v.description.clone()],
            "host.status" => v
                .host
                .as_ref()
                .and_then(|h| inv.hosts.get(h))
                .map(|h| vec![h.status.clone()])
                .unwrap_or_default(),
            "cluster" => cluster_name(&inv, &v.cluster),
            "host" => v
                .host
                .as_ref()
                .and_then(|h| inv.hosts.get(h))
                .map(|h| vec![h.name.clone()])
                .unwrap_or_default(),
            "template" => vec![inv
                .templates
                .get(&v.template)
                .map(|t| t.name.clone())
                .unwrap_or_else(|| "Blank".into())],
            _ => dc_name_of_cluster(&inv, &v.cluster),
        },
        |v| with_ovf(&inv, v, vm_node(&inv, v, &follow), all),
    )
}

struct VmSpec {
    memory: Option<u64>,
    sockets: Option<u32>,
    cores: Option<u32>,
    threads: Option<u32>,
    os_type: Option<String>,
    kernel: Option<String>,
    initrd: Option<String>,
    cmdline: Option<String>,
    boot: Option<Vec<String>>,
    bios: Option<String>,
}

/// `<bios><type>`: the firmware and chipset (cluster_default: Halyard's default,
/// i440fx with SeaBIOS).
fn bios_of(n: &Node) -> Result<Option<String>, ApiError> {
    match n.get("bios").and_then(|b| b.text_of("type")) {
        None => Ok(None),
        Some("cluster_default" | "i440fx_sea_bios") => Ok(Some(String::new())),
        Some(t @ ("q35_sea_bios" | "q35_ovmf" | "q35_secure_boot")) => Ok(Some(t.to_string())),
        Some(t) => Err(ApiError::bad(format!(
            "bios type must be cluster_default, i440fx_sea_bios, q35_sea_bios, q35_ovmf or q35_secure_boot, got {:?}",
            t.chars().take(32).collect::<String>()
        ))),
    }
}

/// `<os><boot><devices><device>`: the boot order, each of hd, cdrom and network at
/// most once.
pub(super) fn boot_devices_of(os: Option<&Node>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(devs) = os
        .and_then(|o| o.get("boot"))
        .and_then(|b| b.get("devices"))
    else {
        return Ok(None);
    };
    let mut out: Vec<String> = Vec::new();
    for d in devs.children.iter().filter(|c| c.name == "device") {
        let v = d.text.as_deref().unwrap_or("");
        if !matches!(v, "hd" | "cdrom" | "network") {
            return Err(ApiError::bad(format!(
                "boot device must be hd, cdrom or network, got {:?}",
                v.chars().take(32).collect::<String>()
            )));
        }
        if out.iter().any(|x| x == v) {
            return Err(ApiError::bad(format!("boot device {v} is named twice")));
        }
        out.push(v.to_string());
    }
    Ok(Some(out))
}

/// `display/type` of a new VM: its first graphics console (none without it).
fn display_of(n: &Node) -> Result<Vec<String>, ApiError> {
    match n.get("display").and_then(|d| d.text_of("type")) {
        None => Ok(Vec::new()),
        Some(t @ ("vnc" | "spice")) => Ok(vec![t.to_string()]),
        Some(t) => Err(ApiError::bad(format!("display type {t:?}: vnc or spice"))),
    }
}

fn vm_spec(n: &Node) -> Result<VmSpec, ApiError> {
    let memory = parse_u64(n, "memory")?;
    if let Some(mem) = memory {
        if !(1 << 20..=16 << 40).contains(&mem) {
            return Err(ApiError::bad(format!(
                "memory {mem} is outside 1 MiB .. 16 TiB"
            )));
        }
    }
    let topo = n.get("cpu").and_then(|c| c.get("topology"));
    let t = |k: &str| -> Result<Option<u32>, ApiError> {
        match topo.and_then(|t| t.text_of(k)) {
            None => Ok(None),
            Some(v) => match v.parse::<u32>() {
                Ok(x) if (1..=256).contains(&x) => Ok(Some(x)),
                _ => Err(ApiError::bad(format!(
                    "cpu topology {k} must be 1..256, got {v:?}"
                ))),
            },
        }
    };
    let os = n.get("os");
    let path = |k: &str| -> Result<Option<String>, ApiError> {
        match os.and_then(|o| o.text_of(k)) {
            None => Ok(None),
            Some("") => Ok(Some(String::new())),
            Some(p)
                if p.starts_with('/')
                    && !p.contains("..")
                    && p.len() < 4096
                    && !p.chars().any(char::is_control) =>
            {
                Ok(Some(p.to_string()))
            }
            Some(p) => Err(ApiError::bad(format!(
                "os {k} must be an absolute path without '..', got {p:?}"
            ))),
        }
    };
    let cmdline = match os.and_then(|o| o.text_of("cmdline")) {
        Some(c) if c.len() > 4096 || c.chars().any(char::is_control) => {
            return Err(ApiError::bad(
                "os cmdline: at most 4096 printable characters",
            ))
        }
        c => c.map(str::to_string),
    };
    Ok(VmSpec {
        memory,
        sockets: t("sockets")?,
        cores: t("cores")?,
        threads: t("threads")?,
        os_type: os.and_then(|o| o.text_of("type")).map(str::to_string),
        kernel: path("kernel")?,
        initrd: path("initrd")?,
        cmdline,
        boot: boot_devices_of(os)?,
        bios: bios_of(n)?,
    })
}

async fn add_vm(m: &Arc<Manager>, r: &Req) -> Out {
    if r.query.get("clone_permissions").map(String::as_str) == Some("true") {
        return Err(ApiError::bad(
            "clone_permissions=true: Halyard does not copy a template's permissions into a new VM yet",
        ));
    }
    let clone = match r.query.get("clone").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(x) => {
            return Err(ApiError::bad(format!(
                "clone must be true or false, got {x:?}"
            )))
        }
    };
    let n = r.document("vm", "Vm", &[VM_ADD, super::initialization::PATHS].concat())?;
    let vm = new_vm(m, &n, None, clone).await?;
    let node = vm_node(&m.read(), &vm, &[]);
    Ok((StatusCode::CREATED, node))
}

/// The `<disk id>`s of a `<disk_attachments>` list with their documents; `what` (VM,
/// Template) names the object in the fault when one has no id.
pub(super) fn attached_disks<'a>(
    atts: Option<&'a Node>,
    what: &str,
) -> Result<Vec<(&'a str, &'a Node)>, ApiError> {
    let mut out = Vec::new();
    for a in atts
        .map(|a| a.children.as_slice())
        .unwrap_or(&[])
        .iter()
        .filter(|a| a.name == "disk_attachment")
    {
        let Some(d) = a.get("disk") else { continue };
        let id = d.id().ok_or_else(|| {
            ApiError::bad(format!(
                "Cannot add {what}. A <disk_attachment> names its <disk id>."
            ))
        })?;
        check_id(id)?;
        out.push((id, d));
    }
    Ok(out)
}

/// What a new VM's `<disk_attachments>` ask of the disks made from its template's
/// (`<disk id>` of a template disk, `format`, `storage_domains`): a format by template
/// disk id. A thin disk is a qcow2 layer (cow only); a clone may be raw or cow; a
/// disk is made on its template disk's domain (Halyard keeps one copy of a template).
fn vm_disk_formats(
    inv: &Inventory,
    n: &Node,
    template: &str,
    clone: bool,
) -> Result<std::collections::HashMap<String, String>, ApiError> {
    let mut out = std::collections::HashMap::new();
    for (id, d) in attached_disks(n.get("disk_attachments"), "VM")? {
        let td = inv
            .disks
            .get(id)
            .filter(|x| x.template.as_deref() == Some(template))
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "Cannot add VM. Disk {id} is not a disk of the VM's template."
                ))
            })?;
        for sd in d
            .get("storage_domains")
            .map(|l| l.children.as_slice())
            .unwrap_or(&[])
        {
            let sid = ref_id(
                Some(sd),
                |x| {
                    inv.storage_domains
                        .values()
                        .find(|s| s.name == x)
                        .map(|s| s.id.clone())
                },
                "storage_domain",
            )?
            .unwrap_or_default();
            if sid != td.storage_domain {
                return Err(ApiError::bad(format!(
                    "Cannot add VM. The template's disk {} is on storage domain {} only (Halyard keeps one copy of a template's disk); its VM disk is made there.",
                    td.name, td.storage_domain
                )));
            }
        }
        if let Some(f) = d.text_of("format") {
            match (f, clone) {
                ("cow", _) | ("raw", true) => {}
                ("raw", false) => {
                    return Err(ApiError::bad(format!(
                        "Cannot add VM. A thin disk on template disk {} is a qcow2 layer: format raw needs clone=true.",
                        td.name
                    )))
                }
                _ => {
                    return Err(ApiError::bad(format!(
                        "disk format must be raw or cow, got {f:?}"
                    )))
                }
            }
            out.insert(id.to_string(), f.to_string());
        }
    }
    Ok(out)
}

/// The data center of the cluster a `<vm>` document names.
fn inv_dc_of_cluster(m: &Arc<Manager>, n: &Node) -> Result<Option<String>, ApiError> {
    let inv = m.read();
    let c = ref_id(
        n.get("cluster"),
        |x| inv.cluster_by_name(x).map(|c| c.id.clone()),
        "cluster",
    )?;
    Ok(c.and_then(|c| inv.dc_of_cluster(&c).map(str::to_string)))
}

/// A `<placement_policy>`: the hosts (by id or name, each of the VM's cluster) the VM
/// is pinned to and its migration affinity; `old` is what it had (an update changes
/// only what the document names).
fn placement_of(
    inv: &Inventory,
    n: &Node,
    cluster: &str,
    old: &Placement,
) -> Result<Option<Placement>, ApiError> {
    let Some(p) = n.get("placement_policy") else {
        return Ok(None);
    };
    let mut out = old.clone();
    if let Some(a) = p.text_of("affinity") {
        out.affinity = a.to_string();
    }
    if out.affinity.is_empty() {
        out.affinity = "migratable".into();
    }
    if let Some(hosts) = p.get("hosts") {
        let mut ids = Vec::new();
        for h in hosts.all("host") {
            let id = ref_id(
                Some(h),
                |x| inv.host_by_name(x).map(|h| h.id.clone()),
                "host",
            )?
            .unwrap_or_default();
            let host = inv
                .hosts
                .get(&id)
                .ok_or_else(|| ApiError::not_found(format!("Host {id} not found")))?;
            if host.cluster != cluster {
                return Err(ApiError::conflict(format!(
                    "Cannot edit VM. The VM can be pinned only to hosts of its cluster; host {} is in another cluster.",
                    host.name
                )));
            }
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        out.hosts = ids;
    }
    Ok(Some(out))
}

/// `<console><enabled>`: the VM's serial console on or off.
/// A Boolean at `path` below `n` (`None` when absent).
pub(super) fn bool_at(n: Option<&Node>, path: &[&str]) -> Result<Option<bool>, ApiError> {
    let Some(mut n) = n else {
        return Ok(None);
    };
    for p in &path[..path.len().saturating_sub(1)] {
        match n.get(p) {
            Some(c) => n = c,
            None => return Ok(None),
        }
    }
    let last = path.last().copied().unwrap_or("");
    match n.text_of(last) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(x) => Err(ApiError::bad(format!(
            "{}: {x:?} is not a Boolean",
            path.join("/")
        ))),
    }
}

fn console_of(n: &Node) -> Result<Option<bool>, ApiError> {
    bool_at(Some(n), &["console", "enabled"])
}

/// `<high_availability>`: enabled and priority, each when the document gives it.
fn ha_of(n: &Node) -> Result<(Option<bool>, Option<i32>), ApiError> {
    let Some(h) = n.get("high_availability") else {
        return Ok((None, None));
    };
    let enabled = bool_at(Some(n), &["high_availability", "enabled"])?;
    let priority = match h.text_of("priority") {
        None => None,
        Some(x) => Some(
            x.parse::<i32>()
                .ok()
                .filter(|p| (0..=100).contains(p))
                .ok_or_else(|| {
                    ApiError::bad(format!(
                        "high_availability/priority: {x:?} is not a number from 0 to 100"
                    ))
                })?,
        ),
    };
    Ok((enabled, priority))
}

/// `<lease>`: `None` when the document does not name it, `Some(None)` when it removes
/// the lease (`<lease/>`), `Some(Some(sd))` for a lease on domain `sd`, which must be
/// an active shared data domain of the VM's data center (libvirt acquires the lease
/// through sanlock on the host that runs the VM, so every host must see it).
fn lease_of(
    inv: &Inventory,
    n: &Node,
    dc: Option<&str>,
) -> Result<Option<Option<String>>, ApiError> {
    let Some(l) = n.get("lease") else {
        return Ok(None);
    };
    let Some(sd) = ref_id(
        l.get("storage_domain"),
        |x| {
            inv.storage_domains
                .values()
                .find(|d| d.name == x)
                .map(|d| d.id.clone())
        },
        "storage domain",
    )?
    else {
        return Ok(Some(None));
    };
    let d = inv
        .storage_domains
        .get(&sd)
        .ok_or_else(|| ApiError::not_found(format!("Storage domain {sd} not found")))?;
    if d.data_center.as_deref() != dc || dc.is_none() {
        return Err(ApiError::conflict(format!(
            "Cannot use storage domain {} for the VM lease: it is not attached to the VM's data center.",
            d.name
        )));
    }
    if d.status != "active" {
        return Err(ApiError::conflict(format!(
            "Cannot use storage domain {} for the VM lease: it is {}, not active.",
            d.name, d.status
        )));
    }
    if d.storage_type == "localfs" {
        return Err(ApiError::conflict(format!(
            "Cannot use storage domain {} for the VM lease: a VM lease needs a shared domain (NFS or POSIX), not local storage.",
            d.name
        )));
    }
    Ok(Some(Some(sd)))
}

/// The names of the VMs pinned to a host (their placement_policy names it).
fn pinned_to(inv: &Inventory, host: &str) -> Vec<String> {
    inv.vms
        .values()
        .filter(|v| v.placement.hosts.iter().any(|h| h == host))
        .map(|v| v.name.clone())
        .collect()
}

/// A `<serial_number>`: policy host, vm or custom (with a value).
fn serial_number_of(n: &Node) -> Result<Option<SerialNumber>, ApiError> {
    let Some(s) = n.get("serial_number") else {
        return Ok(None);
    };
    let policy = s.text_of("policy").unwrap_or("host").to_string();
    let value = s.text_of("value").unwrap_or("").to_string();
    if policy == "custom" && value.trim().is_empty() {
        return Err(ApiError::bad(
            "Cannot edit VM. A custom serial number policy needs a serial number value.",
        ));
    }
    if value.len() > 255 || value.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "Cannot edit VM. A serial number is at most 255 characters, without control characters.",
        ));
    }
    Ok(Some(SerialNumber { policy, value }))
}

/// Makes a VM from a checked `<vm>` document (a pool's VMs name their pool).
/// `clone`: the template's disks are copied, not layered on (`clone=true`).
pub(super) async fn new_vm(
    m: &Arc<Manager>,
    n: &Node,
    pool: Option<&str>,
    clone: bool,
) -> Result<Vm, ApiError> {
    let name = n.text_of("name").unwrap_or("").to_string();
    check_name(&name, "VM")?;
    let spec = vm_spec(n)?;
    let _g = m.write_lock.lock().await;
    let (cluster, template) = {
        let inv = m.read();
        let cluster = ref_id(
            n.get("cluster"),
            |x| inv.cluster_by_name(x).map(|c| c.id.clone()),
            "cluster",
        )?
        .ok_or_else(|| ApiError::bad("Cannot add VM. The cluster is required."))?;
        let template = ref_id(
            n.get("template"),
            |x| {
                if x == "Blank" {
                    Some(BLANK_TEMPLATE.to_string())
                } else {
                    // By name: the base version (its versions share the name).
                    inv.templates
                        .values()
                        .filter(|t| t.name == x)
                        .min_by_key(|t| t.version_number)
                        .map(|t| t.id.clone())
                }
            },
            "template",
        )?
        .unwrap_or_else(|| BLANK_TEMPLATE.to_string());
        (cluster, template)
    };
    if !m.read().clusters.contains_key(&cluster) {
        return Err(ApiError::not_found(format!("Cluster {cluster} not found")));
    }
    let placement = placement_of(&m.read(), n, &cluster, &Placement::default())?;
    let serial_number = serial_number_of(n)?;
    let initialization = super::initialization::of(n)?;
    let (ha_enabled, ha_priority) = ha_of(n)?;
    let (dc, lease_domain) = {
        let inv = m.read();
        let dc = inv.dc_of_cluster(&cluster).map(str::to_string);
        let lease = lease_of(&inv, n, dc.as_deref())?.flatten();
        (dc, lease)
    };
    let tpl = if template == BLANK_TEMPLATE {
        None
    } else {
        let t = m
            .read()
            .templates
            .get(&template)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("Template {template} not found")))?;
        if t.status != "ok" {
            return Err(ApiError::conflict(format!(
                "Cannot add VM. Template {} is {}.",
                t.name, t.status
            )));
        }
        Some(t)
    };
    if m.read().vm_by_name(&name).is_some() {
        return Err(ApiError::conflict(format!(
            "Cannot add VM. The VM name {name:?} is already in use."
        )));
    }
    // An instance type gives the memory and CPUs the document does not.
    let (instance_type, it) = match n.get("instance_type") {
        None => (None, None),
        Some(x) => {
            let inv = m.read();
            let id = super::records::find_ref(&inv, "InstanceType", x)?;
            let rec = inv.record("InstanceType", &id).cloned();
            (Some(id), rec)
        }
    };
    let quota = match n.get("quota") {
        None => None,
        Some(q) => Some(super::quotas::find(
            &m.read(),
            q,
            inv_dc_of_cluster(m, n)?.as_deref(),
        )?),
    };
    let it_num = |path: &[&str]| -> Option<u64> {
        let mut node = &it.as_ref()?.doc;
        for p in path {
            node = node.get(p)?;
        }
        node.text.as_deref()?.parse().ok()
    };
    // Its high availability too, unless the document says.
    let ha_enabled = ha_enabled.or_else(|| {
        it.as_ref()?
            .doc
            .get("high_availability")?
            .text_of("enabled")
            .map(|e| e == "true")
    });
    let ha_priority = ha_priority.or(it_num(&["high_availability", "priority"]).map(|p| p as i32));
    let spec = VmSpec {
        memory: spec.memory.or(it_num(&["memory"])),
        sockets: spec
            .sockets
            .or(it_num(&["cpu", "topology", "sockets"]).map(|x| x as u32)),
        cores: spec
            .cores
            .or(it_num(&["cpu", "topology", "cores"]).map(|x| x as u32)),
        threads: spec
            .threads
            .or(it_num(&["cpu", "topology", "threads"]).map(|x| x as u32)),
        ..spec
    };
    let vm = Vm {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        description: n.text_of("description").unwrap_or("").to_string(),
        cluster,
        template,
        memory: spec
            .memory
            .or(tpl.as_ref().map(|t| t.memory))
            .unwrap_or(1 << 30),
        sockets: spec
            .sockets
            .or(tpl.as_ref().map(|t| t.sockets))
            .unwrap_or(1),
        cores: spec.cores.or(tpl.as_ref().map(|t| t.cores)).unwrap_or(1),
        threads: spec
            .threads
            .or(tpl.as_ref().map(|t| t.threads))
            .unwrap_or(1),
        os_type: spec
            .os_type
            .or(tpl.as_ref().map(|t| t.os_type.clone()))
            .unwrap_or_else(|| "other".into()),
        kernel: spec
            .kernel
            .or(tpl.as_ref().map(|t| t.kernel.clone()))
            .unwrap_or_default(),
        initrd: spec
            .initrd
            .or(tpl.as_ref().map(|t| t.initrd.clone()))
            .unwrap_or_default(),
        cmdline: spec
            .cmdline
            .or(tpl.as_ref().map(|t| t.cmdline.clone()))
            .unwrap_or_default(),
        status: "down".into(),
        host: None,
        migrating_to: None,
        migration_start: None,
        migration_seen: Default::default(),
        start_time: None,
        stop_time: None,
        creation_time: now_ms(),
        stop_reason: String::new(),
        vm_type: n.text_of("type").unwrap_or("server").to_string(),
        guest: GuestInfo::default(),
        tags: Vec::new(),
        pool: pool.map(str::to_string),
        sample: None,
        creating: false,
        status_event_ms: 0,
        instance_type,
        quota,
        placement: placement.unwrap_or_default(),
        serial_number,
        console_enabled: console_of(n)?,
        numa_nodes: Vec::new(),
        boot_devices: spec.boot.clone().unwrap_or_default(),
        bios_type: spec.bios.clone().unwrap_or_default(),
        cdrom: String::new(),
        graphics: display_of(n)?,
        cdrom_current: String::new(),
        initialization,
        initialized: false,
        ha_enabled: ha_enabled.unwrap_or(false),
        ha_priority: ha_priority.unwrap_or(0),
        lease_domain,
        ha_pending: false,
        ha_from: None,
    };
    let formats = vm_disk_formats(&m.read(), n, &vm.template, clone)?;
    m.insert(&vm).await?;
    if let (Some(sd), Some(dc)) = (&vm.lease_domain, &dc) {
        if let Err(e) = m.lease_create(dc, sd, &vm.id).await {
            let _ = m.remove::<Vm>(&vm.id).await;
            return Err(e.into());
        }
    }
    if tpl.is_some() {
        if let Err(e) = m
            .create_disks_from_template(&vm, &vm.template, clone, &formats)
            .await
        {
            // Nothing of the VM stays when its disks cannot be made.
            let _ = m.remove::<Vm>(&vm.id).await;
            return Err(e.into());
        }
    }
    m.event(
        34,
        "normal",
        format!("VM {} was created by admin@internal.", vm.name),
        None,
        Some(&vm.id),
    )
    .await;
    Ok(vm)
}

async fn update_vm(m: &Arc<Manager>, id: &str, r: &Req) -> Out {
    check_id(id)?;
    let n = r.document(
        "vm",
        "Vm",
        &[VM_UPDATE, super::initialization::PATHS].concat(),
    )?;
    let spec = vm_spec(&n)?;
    let _g = m.write_lock.lock().await;
    let name = n.text_of("name");
    if let Some(name) = name {
        check_name(name, "VM")?;
        if m.read().vm_by_name(name).is_some_and(|v| v.id != id) {
            return Err(ApiError::conflict(format!(
                "Cannot edit VM. The VM name {name:?} is already in use."
            )));
        }
    }
    let quota = match n.get("quota") {
        None => None,
        Some(q) => {
            let inv = m.read();
            let dc = inv
                .vms
                .get(id)
                .and_then(|v| inv.dc_of_cluster(&v.cluster))
                .map(str::to_string);
            Some(super::quotas::find(&inv, q, dc.as_deref())?)
        }
    };
    let placement = {
        let inv = m.read();
        let cur = inv
            .vms
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("VM {id} not found")))?;
        placement_of(&inv, &n, &cur.cluster, &cur.placement)?
    };
    let serial_number = serial_number_of(&n)?;
    let console = console_of(&n)?;
    let initialization = super::initialization::of(&n)?;
    let (ha_enabled, ha_priority) = ha_of(&n)?;
    // A new or removed VM lease: made on the SPM before the VM names it, removed
    // after it no longer does; only while the VM is down (its host holds the lease).
    let (dc, lease, old_lease) = {
        let inv = m.read();
        let cur = inv
            .vms
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("VM {id} not found")))?;
        let dc = inv.dc_of_cluster(&cur.cluster).map(str::to_string);
        let lease = lease_of(&inv, &n, dc.as_deref())?.filter(|l| *l != cur.lease_domain);
        if lease.is_some() && cur.status != "down" {
            return Err(ApiError::conflict(format!(
                "Cannot edit VM. The VM lease of {} can be changed only while it is down.",
                cur.name
            )));
        }
        (dc, lease, cur.lease_domain.clone())
    };
    if let (Some(Some(sd)), Some(dc)) = (&lease, &dc) {
        m.lease_create(dc, sd, id).await?;
    }
    // Only the fields the request names change (a status report meanwhile stays).
    let vm = m
        .update(id, |vm: &mut Vm| {
            if let Some(e) = ha_enabled {
                vm.ha_enabled = e;
                if !e {
                    vm.ha_pending = false;
                }
            }
            if let Some(p) = ha_priority {
                vm.ha_priority = p;
            }
            if let Some(l) = &lease {
                vm.lease_domain = l.clone();
            }
            if let Some(name) = name {
                vm.name = name.to_string();
            }
            if let Some(p) = &placement {
                vm.placement = p.clone();
            }
            if let Some(s) = &serial_number {
                vm.serial_number = Some(s.clone());
            }
            if let Some(c) = console {
                vm.console_enabled = Some(c);
            }
            if let Some(i) = &initialization {
                vm.initialization = Some(i.clone());
            }
            if let Some(q) = &quota {
                vm.quota = Some(q.clone());
            }
            if let Some(d) = n.text_of("description") {
                vm.description = d.to_string();
            }
            vm.memory = spec.memory.unwrap_or(vm.memory);
            vm.sockets = spec.sockets.unwrap_or(vm.sockets);
            vm.cores = spec.cores.unwrap_or(vm.cores);
            vm.threads = spec.threads.unwrap_or(vm.threads);
            if let Some(t) = spec.os_type {
                vm.os_type = t;
            }
            if let Some(k) = spec.kernel {
                vm.kernel = k;
            }
            if let Some(i) = spec.initrd {
                vm.initrd = i;
            }
            if let Some(c) = spec.cmdline {
                vm.cmdline = c;
            }
            if let Some(b) = spec.boot {
                vm.boot_devices = b;
            }
            if let Some(b) = spec.bios {
                vm.bios_type = b;
            }
            vm.clone()
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("VM {id} not found")))?;
    if let (Some(_), Some(old), Some(dc)) = (&lease, &old_lease, &dc) {
        if let Err(e) = m.lease_delete(dc, old, id).await {
            warn!(vm_id = %id, error = %e, "the VM's old lease stays in its xleases volume");
        }
    }
    drop(_g);
    if let Some(q) = &quota {
        super::quotas::audit(m, q).await;
    }
    ok(render::vm(&vm, &[]))
}

async fn remove_vm(m: &Arc<Manager>, id: &str, r: &Req) -> Out {
    // Its disks go with it (detach_only=true keeps them).
    let detach_only = r.query.get("detach_only").map(String::as_str) == Some("true");
    delete_vm(m, id, detach_only).await
}

/// Removes a down VM with its snapshots, NICs and (unless `detach_only`) disks.
pub(super) async fn delete_vm(m: &Arc<Manager>, id: &str, detach_only: bool) -> Out {
    check_id(id)?;
    let _g = m.write_lock.lock().await;
    let vm = m
        .read()
        .vms
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("VM {id} not found")))?;
    if vm.status != "down" {
        return Err(ApiError::conflict(format!(
            "Cannot remove VM. VM {} is running.",
            vm.name
        )));
    }
    let (disks, snaps, locked) = {
        let inv = m.read();
        let disks: Vec<Disk> = inv.disks_of(id).into_iter().cloned().collect();
        let snaps: Vec<String> = inv
            .snapshots
            .values()
            .filter(|s| s.vm == id)
            .map(|s| s.id.clone())
            .collect();
        let locked = disks.iter().any(|d| d.status == "locked")
            || inv
                .snapshots
                .values()
                .any(|s| s.vm == id && s.status == "locked")
            || inv
                .templates
                .values()
                .any(|t| t.source_vm.as_deref() == Some(id) && t.status == "locked");
        (disks, snaps, locked)
    };
    if locked {
        return Err(ApiError::conflict(format!(
            "Cannot remove VM. VM {} has locked disks (an operation on them runs).",
            vm.name
        )));
    }
    drop(_g);
    for d in &disks {
        if detach_only {
            m.detach_disk(id, &d.id, false).await?;
        } else {
            m.remove_disk(&d.id).await?;
        }
    }
    let _g = m.write_lock.lock().await;
    for s in &snaps {
        m.remove::<Snapshot>(s)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    let nics: Vec<String> = m.read().nics_of(id).iter().map(|n| n.id.clone()).collect();
    for n in &nics {
        m.remove::<Nic>(n)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    m.remove::<Vm>(id)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    drop(_g);
    // Its lease goes with it (a lease left behind only takes a slot of the index).
    let dc = m.read().dc_of_cluster(&vm.cluster).map(str::to_string);
    if let (Some(sd), Some(dc)) = (&vm.lease_domain, &dc) {
        if let Err(e) = m.lease_delete(dc, sd, id).await {
            warn!(vm_id = %id, error = %e, "the removed VM's lease stays in its xleases volume");
        }
    }
    m.event(
        113,
        "normal",
        format!("VM {} was removed by admin@internal.", vm.name),
        None,
        None,
    )
    .await;
    ok(Node::new("action").with(Node::leaf("status", "complete")))
}

async fn vm_action(m: &Arc<Manager>, id: &str, action: &str, r: &Req) -> Out {
    check_id(id)?;
    let acts: &[&str] = if action == "start" {
        &[
            "async",
            "vm",
            "use_cloud_init",
            "use_sysprep",
            "use_initialization",
        ]
    } else if action == "migrate" {
        &[
            "async",
            "host",
            "force",
            "cluster",
            "migrate_vms_in_affinity_closure",
        ]
    } else {
        &["async"]
    };
    let body = r.action_body("VmService", action, acts)?;
    let mut migrate_to = None;
    let mut force = false;
    if action == "migrate" {
        if let Some(h) = body.get("host") {
            let inv = m.read();
            let id = match (h.id(), h.text_of("name")) {
                (Some(id), _) => inv.hosts.get(id).map(|h| h.id.clone()),
                (None, Some(n)) => inv
                    .hosts
                    .values()
                    .find(|x| x.name == n)
                    .map(|h| h.id.clone()),
                _ => None,
            };
            migrate_to =
                Some(id.ok_or_else(|| ApiError::conflict("Cannot migrate VM. Invalid Host Id."))?);
        }
        force = match body.text_of("force") {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(ApiError::bad("force: not a boolean")),
        };
        if let Some(c) = body.get("cluster") {
            let vm_cluster = m.read().vms.get(id).map(|v| v.cluster.clone());
            if c.id().is_some() && c.id() != vm_cluster.as_deref() {
                return Err(ApiError::conflict(
                    "Cannot migrate VM. Migration between two clusters is not supported by Halyard.",
                ));
            }
        }
        if body.text_of("migrate_vms_in_affinity_closure") == Some("true") {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "Not Implemented",
                "migrate_vms_in_affinity_closure: Halyard migrates one VM at a time",
            ));
        }
    }
    // Run once: <action><vm><os><kernel/><initrd/><cmdline/></os></vm></action>.
    let mut once = match body.get("vm") {
        Some(v) => {
            super::validate::check_document(
                v,
                "Vm",
                &[
                    &[
                        "os/kernel",
                        "os/initrd",
                        "os/cmdline",
                        "os/boot/devices",
                        "os/type",
                    ][..],
                    super::initialization::PATHS,
                ]
                .concat(),
            )?;
            let os = v.get("os");
            let text = |k: &str| os.and_then(|o| o.text_of(k)).map(str::to_string);
            crate::vms::RunOnce {
                kernel: text("kernel"),
                initrd: text("initrd"),
                cmdline: text("cmdline"),
                boot_devices: boot_devices_of(os)?,
                os_type: text("type"),
                initialization: super::initialization::of(v)?,
                init: None,
            }
        }
        None => crate::vms::RunOnce::default(),
    };
    for (param, ask) in [
        ("use_cloud_init", crate::vms::InitAsk::CloudInit),
        ("use_sysprep", crate::vms::InitAsk::Sysprep),
        ("use_initialization", crate::vms::InitAsk::ByOs),
    ] {
        match body.text_of(param) {
            None | Some("false") => {}
            Some("true") => {
                if once.init.is_some_and(|a| a != ask) {
                    return Err(ApiError::bad(
                        "use_cloud_init, use_sysprep and use_initialization: at most one of them",
                    ));
                }
                once.init = Some(ask);
            }
            Some(v) => {
                return Err(ApiError::bad(format!(
                    "{param}: {:?} is not a boolean",
                    v.chars().take(16).collect::<String>()
                )))
            }
        }
    }
    let name = m
        .read()
        .vms
        .get(id)
        .map(|v| v.name.clone())
        .ok_or_else(|| ApiError::not_found(format!("VM {id} not found")))?;
    let job = m.start_job(format!("{} VM {name}", action)).await;
    let r = match action {
        "start" => m.vm_start_once(id, &once).await,
        "stop" => m.vm_stop(id).await,
        "shutdown" => m.vm_shutdown(id, false).await,
        "reboot" => m.vm_shutdown(id, true).await,
        "suspend" => m.vm_suspend(id).await,
        "migrate" => m.vm_migrate(id, migrate_to.as_deref(), force).await,
        "cancelmigration" => m.vm_cancel_migration(id).await,
        other => {
            m.finish_job(&job, false).await;
            return Err(ApiError::not_found(format!("No action {other} on VMs")));
        }
    };
    m.finish_job(&job, r.is_ok()).await;
    r?;
    if action == "start" {
        let quota = m.read().vms.get(id).and_then(|v| v.quota.clone());
        if let Some(q) = quota {
            super::quotas::audit(m, &q).await;
        }
    }
    ok(render::action_done(Some(&job)))
}

async fn add_nic(m: &Arc<Manager>, vm: &str, r: &Req) -> Out {
    check_id(vm)?;
    let n = r.document("nic", "Nic", NIC_ADD)?;
    let name = n.text_of("name").unwrap_or("").to_string();
    check_name(&name, "NIC")?;
    let interface = n.text_of("interface").unwrap_or("virtio").to_string();
    if !["virtio", "e1000", "rtl8139"].contains(&interface.as_str()) {
        return Err(ApiError::bad(format!(
            "interface {interface:?} is not supported"
        )));
    }
    let _g = m.write_lock.lock().await;
    let v = m
        .read()
        .vms
        .get(vm)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("VM {vm} not found")))?;
    let id = uuid::Uuid::new_v4().to_string();
    let (network, profile, mac) = {
        let inv = m.read();
        let dc = inv
            .clusters
            .get(&v.cluster)
            .map(|c| c.data_center.clone())
            .unwrap_or_default();
        let profile = match n.get("vnic_profile") {
            Some(p) => {
                let id = super::records::find_ref(&inv, "VnicProfile", p)?;
                inv.record("VnicProfile", &id).cloned()
            }
            None => None,
        };
        let network = match (&profile, n.get("network")) {
            (Some(p), _) => p.link("network").unwrap_or("").to_string(),
            (None, given) => {
                let by_name = |x: &str| {
                    inv.networks
                        .values()
                        .find(|n| n.name == x && n.data_center == dc)
                        .map(|n| n.id.clone())
                };
                ref_id(given, by_name, "network")?
                    .or_else(|| by_name("ovirtmgmt"))
                    .ok_or_else(|| ApiError::bad("the data center has no management network"))?
            }
        };
        match inv.networks.get(&network) {
            None => return Err(ApiError::not_found(format!("Network {network} not found"))),
            Some(net) if net.data_center != dc => {
                return Err(ApiError::bad(format!(
                    "Cannot add Interface: network {} is not in the VM's data center",
                    net.name
                )))
            }
            Some(net) if net.in_cluster(&v.cluster).is_none() => {
                return Err(ApiError::bad(format!(
                    "Cannot add Interface: network {} is not assigned to the VM's cluster",
                    net.name
                )))
            }
            Some(_) => {}
        }
        // Without a profile the NIC takes the network's own (the one of its name).
        let profile = profile.map(|p| p.id).or_else(|| {
            let name = inv.networks.get(&network).map(|x| x.name.clone());
            inv.records_of("VnicProfile")
                .find(|p| {
                    p.link("network") == Some(network.as_str()) && Some(p.name()) == name.as_deref()
                })
                .map(|p| p.id.clone())
        });
        let asked = n.get("mac").and_then(|x| x.text_of("address"));
        let mac = super::macpools::allocate(&inv, &v.cluster, asked, &id)?;
        (network, profile, mac)
    };
    let nic = Nic {
        id,
        vm: vm.to_string(),
        name,
        interface,
        mac,
        network,
        plugged: true,
        linked: true,
        vnic_profile: profile,
        description: n.text_of("description").unwrap_or("").to_string(),
    };
    m.insert(&nic)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((StatusCode::CREATED, render::nic(&nic)))
}

async fn remove_nic(m: &Arc<Manager>, vm: &str, nic: &str) -> Out {
    let _g = m.write_lock.lock().await;
    let exists = m.read().nics.get(nic).is_some_and(|n| n.vm == vm);
    if !exists {
        return Err(ApiError::not_found(format!("NIC {nic} not found")));
    }
    m.remove::<Nic>(nic)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    ok(Node::new("action").with(Node::leaf("status", "complete")))
}

fn reported_devices(m: &Arc<Manager>, id: &str) -> Out {
    let inv = m.read();
    let v = inv
        .vms
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("VM {id} not found")))?;
    let mut n = Node::new("reported_devices");
    for (i, (name, hw, ips)) in v.guest.nics.iter().enumerate() {
        let mut ipn = Node::new("ips");
        for ip in ips {
            let version = if ip.contains(':') { "v6" } else { "v4" };
            ipn.push(
                Node::new("ip")
                    .with(Node::leaf("address", ip))
                    .with(Node::leaf("version", version)),
            );
        }
        n.push(
            Node::new("reported_device")
                .attr("href", format!("{}/reporteddevices/{i}", href("vms", id)))
                .attr("id", i)
                .with(Node::leaf("name", name))
                .with(Node::leaf("description", "guest reported data"))
                .with(ipn)
                .with(Node::new("mac").with(Node::leaf("address", hw)))
                .with(Node::leaf("type", "network"))
                .with(Node::reference("vm", &href("vms", id), id)),
        );
    }
    ok(n)
}

fn events(m: &Arc<Manager>, r: &Req) -> Out {
    let from: Option<i64> = match r.query.get("from").map(String::as_str) {
        None | Some("") => None,
        Some(v) => Some(
            v.parse()
                .map_err(|_| ApiError::bad(format!("from={v:?} is not a number")))?,
        ),
    };
    let inv = m.read();
    search_list(
        r,
        "events",
        EVENT_SEARCH,
        inv.events
            .iter()
            .rev()
            .filter(|e| from.is_none_or(|f| e.id > f)),
        |e, f| match f {
            "severity" => vec![e.severity.clone()],
            "type" | "code" => vec![e.code.to_string()],
            "id" => vec![e.id.to_string()],
            "description" => vec![e.description.clone()],
            "host" => e
                .host
                .as_ref()
                .and_then(|h| inv.hosts.get(h))
                .map(|h| vec![h.name.clone()])
                .unwrap_or_default(),
            _ => {
                e.vm.as_ref()
                    .and_then(|v| inv.vms.get(v))
                    .map(|v| vec![v.name.clone()])
                    .unwrap_or_default()
            }
        },
        render::event,
    )
}

const EVENT_SEARCH: &[&str] = &[
    "severity",
    "type",
    "host",
    "vm",
    "id",
    "description",
    "code",
];
