//! Updating and removing the inventory's containers (data centers, clusters, logical
//! networks), adding networks, external events (`POST /events`) and operating systems
//! by id.

use std::sync::Arc;

use axum::http::{Method, StatusCode};

use super::handlers::{check_id, check_name, ok, parse_u64, ref_id, ApiError, Out, Req};
use super::node::Node;
use super::render;
use crate::model::*;
use crate::state::Manager;

const DC_UPDATE: &[&str] = &["name", "description", "id"];
const CLUSTER_UPDATE: &[&str] = &[
    "name",
    "description",
    "cpu/type",
    "mac_pool",
    "scheduling_policy",
    "fencing_policy/enabled",
    "fencing_policy/skip_if_sd_active/enabled",
    "migration/bandwidth",
    "id",
];
const NETWORK_ADD: &[&str] = &[
    "name",
    "description",
    "data_center",
    "mtu",
    "vlan",
    "usages",
];
const NETWORK_UPDATE: &[&str] = &["name", "description", "mtu", "vlan", "usages", "id"];
const CLUSTER_NETWORK: &[&str] = &["id", "name", "required"];

/// `<vlan id="100"/>`: a tag of 0..4094.
fn vlan(n: &Node) -> Result<Option<u16>, ApiError> {
    let Some(v) = n.get("vlan") else {
        return Ok(None);
    };
    match v.id().map(str::parse::<u16>) {
        Some(Ok(t)) if t <= 4094 => Ok(Some(t)),
        _ => Err(ApiError::bad(
            "<vlan id=\"..\"/>: a VLAN tag from 0 to 4094",
        )),
    }
}

/// `<usages><usage>vm</usage></usages>`: oVirt's network usages.
fn usages(n: &Node) -> Result<Option<Vec<String>>, ApiError> {
    let Some(u) = n.get("usages") else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for x in &u.children {
        let v = x.text.as_deref().unwrap_or("").trim().to_lowercase();
        if ![
            "vm",
            "management",
            "display",
            "migration",
            "gluster",
            "default_route",
        ]
        .contains(&v.as_str())
        {
            return Err(ApiError::bad(format!(
                "<usage>{v}</usage> is not a network usage"
            )));
        }
        if !out.contains(&v) {
            out.push(v);
        }
    }
    Ok(Some(out))
}
const EVENT_ADD: &[&str] = &[
    "description",
    "severity",
    "origin",
    "custom_id",
    "vm",
    "host",
    "flood_rate",
];

/// The operating systems VMs can have (id = index).
pub const OPERATING_SYSTEMS: &[&str] = &["other", "other_linux", "rhel_9x64", "debian_12"];

pub fn operating_system(i: usize, name: &str) -> Node {
    Node::new("operating_system")
        .attr("href", format!("{}/operatingsystems/{i}", render::BASE))
        .attr("id", i)
        .with(Node::leaf("name", name))
        .with(Node::leaf("description", name))
}

/// A scheduling policy unit (built in; oVirt's external units are not supported).
fn policy_unit(u: &crate::scheduling::Unit) -> Node {
    Node::new("scheduling_policy_unit")
        .attr(
            "href",
            format!("{}/schedulingpolicyunits/{}", render::BASE, u.id),
        )
        .attr("id", &u.id)
        .with(Node::leaf("name", &u.name))
        .with(Node::leaf("description", &u.description))
        .with(Node::leaf("type", &u.kind))
        .with(Node::leaf("internal", true))
        .with(Node::leaf("enabled", true))
}

/// The cluster compatibility levels (oVirt's 4.2 to 4.7, the Manager's own API level).
pub const CLUSTER_LEVELS: &[&str] = &["4.2", "4.3", "4.4", "4.5", "4.6", "4.7"];

/// The x86_64 CPU types, as facts (see the file's header).
const CPU_TYPES: &str = include_str!("model/cpu_types.txt");

/// A cluster level: its CPU types and every permit (as oVirt lists them).
pub fn cluster_level(level: &str) -> Node {
    let href = format!("{}/clusterlevels/{level}", render::BASE);
    let mut cpus = Node::new("cpu_types");
    for line in CPU_TYPES.lines().filter(|l| l.starts_with("cpu_type ")) {
        let w: Vec<&str> = line.split_whitespace().collect();
        if let [_, _, name @ .., lvl] = w.as_slice() {
            cpus.push(
                Node::new("cpu_type")
                    .with(Node::leaf("architecture", "x86_64"))
                    .with(Node::leaf("level", lvl))
                    .with(Node::leaf("name", name.join(" "))),
            );
        }
    }
    let mut permits = Node::new("permits");
    for p in super::access::permits() {
        // A level's permits are listed, not addressed (oVirt has no service for them).
        permits.push(super::access::permit(p, ""));
    }
    Node::new("cluster_level")
        .attr("href", &href)
        .attr("id", level)
        .with(Node::link(
            "clusterfeatures",
            format!("{href}/clusterfeatures"),
        ))
        .with(cpus)
        .with(permits)
}

pub async fn route(m: &Arc<Manager>, r: &Req, s: &[&str]) -> Option<Out> {
    let (post, put, del) = (
        r.method == Method::POST,
        r.method == Method::PUT,
        r.method == Method::DELETE,
    );
    Some(match s {
        ["datacenters", id] if put => update_dc(m, id, r).await,
        ["datacenters", id] if del => remove_dc(m, id).await,
        ["clusters", id] if put => update_cluster(m, id, r).await,
        ["clusters", id] if del => remove_cluster(m, id).await,
        ["networks"] if post => add_network(m, r).await,
        ["networks", id] if put => update_network(m, id, r).await,
        ["networks", id] if del => remove_network(m, id).await,
        ["events"] if post => add_event(m, r).await,
        ["vmpools", id, "allocatevm"] if post => allocate_vm(m, id, r).await,
        ["clusters", c, "networks"] if r.method == Method::GET => cluster_networks(m, c),
        ["clusters", c, "networks"] if post => assign_network(m, c, r).await,
        ["clusters", c, "networks", n] if r.method == Method::GET => {
            let inv = m.read();
            match inv
                .networks
                .get(*n)
                .and_then(|x| x.in_cluster(c).map(|a| (x, a)))
            {
                Some((x, a)) if inv.dc_of_cluster(c) == Some(x.data_center.as_str()) => {
                    ok(cluster_network(x, &a))
                }
                _ => Err(ApiError::not_found(format!(
                    "Network {n} is not assigned to cluster {c}"
                ))),
            }
        }
        ["clusters", c, "networks", n] if put => assign_update(m, c, n, r).await,
        ["clusters", c, "networks", n] if del => unassign_network(m, c, n).await,
        ["schedulingpolicyunits"] if r.method == Method::GET => ok(crate::scheduling::units()
            .iter()
            .fold(Node::new("scheduling_policy_units"), |n, u| {
                n.with(policy_unit(u))
            })),
        ["schedulingpolicyunits", id] if r.method == Method::GET => crate::scheduling::units()
            .iter()
            .find(|u| u.id == *id)
            .map(|u| ok(policy_unit(u)))
            .unwrap_or_else(|| {
                Err(ApiError::not_found(format!(
                    "Scheduling policy unit {id} not found"
                )))
            }),
        ["schedulingpolicyunits", _] if del => Err(ApiError::conflict(
            "Cannot remove a policy unit of the engine (Halyard has no external units)",
        )),
        ["clusterlevels"] if r.method == Method::GET => ok(CLUSTER_LEVELS
            .iter()
            .fold(Node::new("cluster_levels"), |n, l| n.with(cluster_level(l)))),
        ["clusterlevels", id] if r.method == Method::GET => CLUSTER_LEVELS
            .iter()
            .find(|l| **l == *id)
            .map(|l| ok(cluster_level(l)))
            .unwrap_or_else(|| Err(ApiError::not_found(format!("Cluster level {id} not found")))),
        ["operatingsystems", id] if r.method == Method::GET => id
            .parse::<usize>()
            .ok()
            .and_then(|i| OPERATING_SYSTEMS.get(i).map(|n| operating_system(i, n)))
            .map(ok)
            .unwrap_or_else(|| {
                Err(ApiError::not_found(format!(
                    "Operating system {id} not found"
                )))
            }),
        _ => return None,
    })
}

fn done() -> Out {
    ok(Node::new("action").with(Node::leaf("status", "complete")))
}

fn new_name<'a>(n: &'a Node, what: &str) -> Result<Option<&'a str>, ApiError> {
    match n.text_of("name") {
        Some(x) => {
            check_name(x, what)?;
            Ok(Some(x))
        }
        None => Ok(None),
    }
}

async fn update_dc(m: &Arc<Manager>, id: &str, r: &Req) -> Out {
    check_id(id)?;
    let n = r.document("data_center", "DataCenter", DC_UPDATE)?;
    let name = new_name(&n, "data center")?;
    let _g = m.write_lock.lock().await;
    if let Some(x) = name {
        if m.read()
            .data_centers
            .values()
            .any(|d| d.name == x && d.id != id)
        {
            return Err(ApiError::conflict(format!(
                "Cannot edit Data Center. The name {x:?} is already in use."
            )));
        }
    }
    let d = m
        .update(id, |d: &mut DataCenter| {
            if let Some(x) = name {
                d.name = x.to_string();
            }
            if let Some(x) = n.text_of("description") {
                d.description = x.to_string();
            }
            d.clone()
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Data center {id} not found")))?;
    ok(render::data_center(&d))
}

async fn remove_dc(m: &Arc<Manager>, id: &str) -> Out {
    check_id(id)?;
    let _g = m.write_lock.lock().await;
    let nets: Vec<String> = {
        let inv = m.read();
        let d = inv
            .data_centers
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("Data center {id} not found")))?;
        if inv.clusters.values().any(|c| c.data_center == id) {
            return Err(ApiError::conflict(format!(
                "Cannot remove Data Center {}: it has clusters; remove them first.",
                d.name
            )));
        }
        if inv
            .storage_domains
            .values()
            .any(|s| s.data_center.as_deref() == Some(id))
        {
            return Err(ApiError::conflict(format!(
                "Cannot remove Data Center {}: storage domains are attached to it; detach them first.",
                d.name
            )));
        }
        inv.networks
            .values()
            .filter(|n| n.data_center == id)
            .map(|n| n.id.clone())
            .collect()
    };
    for n in nets {
        m.remove::<Network>(&n).await?;
    }
    let d = m.remove::<DataCenter>(id).await?;
    if let Some(d) = d {
        m.event(
            954,
            "normal",
            format!("Data Center {} was removed by admin@internal.", d.name),
            None,
            None,
        )
        .await;
    }
    done()
}

async fn update_cluster(m: &Arc<Manager>, id: &str, r: &Req) -> Out {
    check_id(id)?;
    let n = r.document("cluster", "Cluster", CLUSTER_UPDATE)?;
    let name = new_name(&n, "cluster")?;
    let fp = n.get("fencing_policy");
    let fencing = super::handlers::bool_at(fp, &["enabled"])?;
    let skip_sd = super::handlers::bool_at(fp, &["skip_if_sd_active", "enabled"])?;
    let bandwidth = match n.get("migration").and_then(|m| m.get("bandwidth")) {
        None => None,
        Some(b) => Some(match b.text_of("assignment_method") {
            Some("hypervisor_default") => None,
            Some("custom") => Some(
                b.text_of("custom_value")
                    .and_then(|v| v.parse::<u32>().ok())
                    .filter(|v| (1..=100_000).contains(v))
                    .ok_or_else(|| {
                        ApiError::bad(
                            "migration/bandwidth/custom_value: the bandwidth in Mbps, 1 to 100000",
                        )
                    })?,
            ),
            Some("auto") => {
                return Err(ApiError::bad(
                    "migration/bandwidth: assignment_method auto (from the migration network's speed) is not done by Halyard; use custom or hypervisor_default",
                ))
            }
            other => {
                return Err(ApiError::bad(format!(
                    "migration/bandwidth/assignment_method {other:?}: custom or hypervisor_default"
                )))
            }
        }),
    };
    let _g = m.write_lock.lock().await;
    let mac_pool = match n.get("mac_pool") {
        Some(p) => Some(super::records::find_ref(&m.read(), "MacPool", p)?),
        None => None,
    };
    let policy = match n.get("scheduling_policy") {
        Some(p) => Some(super::records::find_ref(&m.read(), "SchedulingPolicy", p)?),
        None => None,
    };
    if let Some(x) = name {
        if m.read()
            .clusters
            .values()
            .any(|c| c.name == x && c.id != id)
        {
            return Err(ApiError::conflict(format!(
                "Cannot edit Cluster. The name {x:?} is already in use."
            )));
        }
    }
    let c = m
        .update(id, |c: &mut Cluster| {
            if let Some(x) = name {
                c.name = x.to_string();
            }
            if let Some(x) = n.text_of("description") {
                c.description = x.to_string();
            }
            if let Some(t) = n.get("cpu").and_then(|c| c.text_of("type")) {
                c.cpu_type = t.to_string();
            }
            if let Some(p) = mac_pool {
                c.mac_pool = p;
            }
            if let Some(p) = policy {
                c.scheduling_policy = p;
            }
            if let Some(e) = fencing {
                c.fencing_enabled = e;
            }
            if let Some(e) = skip_sd {
                c.fencing_skip_if_sd_active = e;
            }
            if let Some(b) = bandwidth {
                c.migration_bandwidth_mbps = b;
            }
            c.clone()
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Cluster {id} not found")))?;
    ok(render::cluster(&c))
}

async fn remove_cluster(m: &Arc<Manager>, id: &str) -> Out {
    check_id(id)?;
    let _g = m.write_lock.lock().await;
    {
        let inv = m.read();
        let c = inv
            .clusters
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("Cluster {id} not found")))?;
        if inv.hosts.values().any(|h| h.cluster == id) || inv.vms.values().any(|v| v.cluster == id)
        {
            return Err(ApiError::conflict(format!(
                "Cannot remove Cluster {}: it has hosts or VMs.",
                c.name
            )));
        }
        if inv.templates.values().any(|t| t.cluster == id) {
            return Err(ApiError::conflict(format!(
                "Cannot remove Cluster {}: templates belong to it.",
                c.name
            )));
        }
    }
    if let Some(c) = m.remove::<Cluster>(id).await? {
        m.event(
            813,
            "normal",
            format!("Cluster {} was removed by admin@internal.", c.name),
            None,
            None,
        )
        .await;
    }
    done()
}

fn mtu(n: &Node) -> Result<Option<u32>, ApiError> {
    match parse_u64(n, "mtu")? {
        None => Ok(None),
        Some(v) if v == 0 || (68..=65535).contains(&v) => Ok(Some(v as u32)),
        Some(v) => Err(ApiError::bad(format!("mtu {v}: 0 (default) or 68..65535"))),
    }
}

async fn add_network(m: &Arc<Manager>, r: &Req) -> Out {
    let n = r.document("network", "Network", NETWORK_ADD)?;
    let name = n.text_of("name").unwrap_or("").to_string();
    check_name(&name, "network")?;
    let mtu = mtu(&n)?;
    let _g = m.write_lock.lock().await;
    let dc = {
        let inv = m.read();
        ref_id(
            n.get("data_center"),
            |x| inv.dc_by_name(x).map(|d| d.id.clone()),
            "data center",
        )?
        .ok_or_else(|| ApiError::bad("a network needs a <data_center>"))?
    };
    if !m.read().data_centers.contains_key(&dc) {
        return Err(ApiError::not_found(format!("Data center {dc} not found")));
    }
    if m.read()
        .networks
        .values()
        .any(|x| x.data_center == dc && x.name == name)
    {
        return Err(ApiError::conflict(format!(
            "Cannot add Network. The name {name:?} is already in use in the data center."
        )));
    }
    let net = Network {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        description: n.text_of("description").unwrap_or("").to_string(),
        data_center: dc,
        mtu: mtu.unwrap_or(0),
        vlan: vlan(&n)?,
        usages: usages(&n)?.unwrap_or_else(|| vec!["vm".into()]),
        // A new network is in no cluster until it is assigned (clusters/{id}/networks).
        clusters: Some(Vec::new()),
    };
    m.insert(&net).await?;
    super::kinds::companions(m, "Network", &net.id).await?;
    Ok((StatusCode::CREATED, render::network(&net)))
}

async fn update_network(m: &Arc<Manager>, id: &str, r: &Req) -> Out {
    check_id(id)?;
    let n = r.document("network", "Network", NETWORK_UPDATE)?;
    let name = new_name(&n, "network")?;
    let mtu = mtu(&n)?;
    let (vlan, usages) = (vlan(&n)?, usages(&n)?);
    let _g = m.write_lock.lock().await;
    if let Some(x) = name {
        let inv = m.read();
        let dc = inv.networks.get(id).map(|x| x.data_center.clone());
        if inv
            .networks
            .values()
            .any(|o| o.name == x && o.id != id && Some(&o.data_center) == dc.as_ref())
        {
            return Err(ApiError::conflict(format!(
                "Cannot edit Network. The name {x:?} is already in use."
            )));
        }
    }
    let net = m
        .update(id, |net: &mut Network| {
            if let Some(x) = name {
                net.name = x.to_string();
            }
            if let Some(x) = n.text_of("description") {
                net.description = x.to_string();
            }
            if let Some(x) = mtu {
                net.mtu = x;
            }
            if n.get("vlan").is_some() {
                net.vlan = vlan;
            }
            if let Some(u) = usages {
                net.usages = u;
            }
            net.clone()
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Network {id} not found")))?;
    ok(render::network(&net))
}

async fn remove_network(m: &Arc<Manager>, id: &str) -> Out {
    check_id(id)?;
    let _g = m.write_lock.lock().await;
    {
        let inv = m.read();
        let net = inv
            .networks
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("Network {id} not found")))?;
        if net.name == "ovirtmgmt" {
            return Err(ApiError::conflict(
                "Cannot remove the management network ovirtmgmt.",
            ));
        }
        if inv.nics.values().any(|x| x.network == id) {
            return Err(ApiError::conflict(format!(
                "Cannot remove Network {}: VM NICs use it.",
                net.name
            )));
        }
    }
    m.remove::<Network>(id).await?;
    done()
}

/// oVirt's external events: 12000 normal, 12001 warning, 12002 error.
async fn add_event(m: &Arc<Manager>, r: &Req) -> Out {
    let n = r.document("event", "Event", EVENT_ADD)?;
    let description = n.text_of("description").unwrap_or("").to_string();
    if description.is_empty()
        || description.chars().count() > 4000
        || description.chars().any(|c| c.is_control() && c != '\n')
    {
        return Err(ApiError::bad(
            "an external event needs a <description> of 1 to 4000 printable characters",
        ));
    }
    let origin = n
        .text_of("origin")
        .filter(|o| !o.is_empty() && o.len() <= 255 && !o.chars().any(char::is_control))
        .ok_or_else(|| ApiError::bad("an external event needs its <origin>"))?
        .to_string();
    let custom_id: i64 = n
        .text_of("custom_id")
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ApiError::bad("an external event needs a numeric <custom_id>"))?;
    let (code, severity) = match n.text_of("severity").unwrap_or("normal") {
        "normal" => (12000, "normal"),
        "warning" => (12001, "warning"),
        "error" => (12002, "error"),
        "alert" => (12002, "alert"),
        other => {
            return Err(ApiError::bad(format!(
                "severity {other:?}: normal, warning, error or alert"
            )))
        }
    };
    let (vm, host) = {
        let inv = m.read();
        let vm = n.get("vm").and_then(|v| v.id()).map(str::to_string);
        let host = n.get("host").and_then(|h| h.id()).map(str::to_string);
        if vm.as_ref().is_some_and(|v| !inv.vms.contains_key(v)) {
            return Err(ApiError::not_found("VM not found"));
        }
        if host.as_ref().is_some_and(|h| !inv.hosts.contains_key(h)) {
            return Err(ApiError::not_found("Host not found"));
        }
        (vm, host)
    };
    let ev = m
        .event_from(
            code,
            severity,
            description,
            host.as_deref(),
            vm.as_deref(),
            Some((origin, custom_id)),
        )
        .await;
    Ok((StatusCode::CREATED, render::event(&ev)))
}

async fn allocate_vm(m: &Arc<Manager>, pool: &str, r: &Req) -> Out {
    r.action_body("VmPoolService", "allocatevm", &["async"])?;
    let vm = super::vmpools::allocate(m, pool).await?;
    Ok((
        StatusCode::OK,
        Node::new("action")
            .with(Node::reference("vm", &render::href("vms", &vm), &vm))
            .with(Node::leaf("status", "complete")),
    ))
}

/// A network as a cluster has it: with its assignment (`required`, the cluster).
fn cluster_network(n: &Network, a: &ClusterNetwork) -> Node {
    let mut x = render::network(n);
    x.set_attr(
        "href",
        format!("{}/networks/{}", render::href("clusters", &a.cluster), n.id),
    );
    x.push(Node::reference(
        "cluster",
        &render::href("clusters", &a.cluster),
        &a.cluster,
    ));
    x.push(Node::leaf("required", a.required));
    x
}

fn cluster_networks(m: &Arc<Manager>, c: &str) -> Out {
    check_id(c)?;
    let inv = m.read();
    let dc = inv
        .dc_of_cluster(c)
        .ok_or_else(|| ApiError::not_found(format!("Cluster {c} not found")))?;
    let mut l = Node::new("networks");
    for n in inv.networks.values().filter(|n| n.data_center == dc) {
        if let Some(a) = n.in_cluster(c) {
            l.push(cluster_network(n, &a));
        }
    }
    ok(l)
}

/// Makes the assignments of a network explicit (a network stored without them is in
/// every cluster of its data center).
fn explicit(inv: &Inventory, n: &Network) -> Vec<ClusterNetwork> {
    match &n.clusters {
        Some(l) => l.clone(),
        None => inv
            .clusters
            .values()
            .filter(|c| c.data_center == n.data_center)
            .map(|c| ClusterNetwork {
                cluster: c.id.clone(),
                required: true,
            })
            .collect(),
    }
}

async fn assign_network(m: &Arc<Manager>, c: &str, r: &Req) -> Out {
    check_id(c)?;
    let n = r.document("network", "Network", CLUSTER_NETWORK)?;
    let required = n.text_of("required").map(|v| v == "true").unwrap_or(false);
    let _g = m.write_lock.lock().await;
    let (id, list) = {
        let inv = m.read();
        let dc = inv
            .dc_of_cluster(c)
            .ok_or_else(|| ApiError::not_found(format!("Cluster {c} not found")))?
            .to_string();
        let id = ref_id(
            Some(&n),
            |x| {
                inv.networks
                    .values()
                    .find(|o| o.name == x && o.data_center == dc)
                    .map(|o| o.id.clone())
            },
            "network",
        )?
        .unwrap_or_default();
        let net = inv
            .networks
            .get(&id)
            .filter(|x| x.data_center == dc)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "Network {id} not found in the cluster's data center"
                ))
            })?;
        if net.in_cluster(c).is_some() {
            return Err(ApiError::conflict(format!(
                "Cannot attach Network to Cluster. Network {} is already attached to the cluster.",
                net.name
            )));
        }
        let mut list = explicit(&inv, net);
        list.push(ClusterNetwork {
            cluster: c.to_string(),
            required,
        });
        (id, list)
    };
    let net = m
        .update(&id, |x: &mut Network| {
            x.clusters = Some(list);
            x.clone()
        })
        .await?
        .ok_or_else(|| ApiError::not_found("the network was removed meanwhile"))?;
    let a = net
        .in_cluster(c)
        .ok_or_else(|| ApiError::internal("assignment lost"))?;
    Ok((StatusCode::CREATED, cluster_network(&net, &a)))
}

/// Network `id` as assigned to cluster `c`.
fn assigned<'a>(inv: &'a Inventory, c: &str, id: &str) -> Result<&'a Network, ApiError> {
    inv.networks
        .get(id)
        .filter(|x| x.in_cluster(c).is_some())
        .ok_or_else(|| ApiError::not_found(format!("Network {id} is not assigned to cluster {c}")))
}

async fn assign_update(m: &Arc<Manager>, c: &str, id: &str, r: &Req) -> Out {
    check_id(id)?;
    let n = r.document("network", "Network", CLUSTER_NETWORK)?;
    let _g = m.write_lock.lock().await;
    let mut list = {
        let inv = m.read();
        let net = assigned(&inv, c, id)?;
        explicit(&inv, net)
    };
    if let Some(v) = n.text_of("required") {
        for a in list.iter_mut().filter(|a| a.cluster == c) {
            a.required = v == "true";
        }
    }
    let net = m
        .update(id, |x: &mut Network| {
            x.clusters = Some(list);
            x.clone()
        })
        .await?
        .ok_or_else(|| ApiError::not_found("the network was removed meanwhile"))?;
    let a = net
        .in_cluster(c)
        .ok_or_else(|| ApiError::internal("assignment lost"))?;
    ok(cluster_network(&net, &a))
}

async fn unassign_network(m: &Arc<Manager>, c: &str, id: &str) -> Out {
    check_id(id)?;
    let _g = m.write_lock.lock().await;
    let list = {
        let inv = m.read();
        let net = assigned(&inv, c, id)?;
        if net.usages().iter().any(|u| u == "management") {
            return Err(ApiError::conflict(format!(
                "Cannot detach the management network {} from the cluster.",
                net.name
            )));
        }
        let used = inv
            .nics
            .values()
            .any(|x| x.network == id && inv.vms.get(&x.vm).is_some_and(|v| v.cluster == c));
        if used {
            return Err(ApiError::conflict(format!(
                "Cannot detach Network {} from the cluster: VM NICs in the cluster use it.",
                net.name
            )));
        }
        let mut l = explicit(&inv, net);
        l.retain(|a| a.cluster != c);
        l
    };
    m.update(id, |x: &mut Network| x.clusters = Some(list))
        .await?;
    ok(Node::new("action").with(Node::leaf("status", "complete")))
}
