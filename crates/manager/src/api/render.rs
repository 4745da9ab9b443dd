//! Model objects as API documents (element names of the oVirt API model; absolute
//! hrefs; the links clients follow).

use crate::api::model::model;
use crate::api::node::Node;
use crate::model::*;

pub const BASE: &str = "/ovirt-engine/api";

pub fn href(kind: &str, id: &str) -> String {
    // Concatenated, not formatted: hrefs are written millions of times for long lists.
    [BASE, "/", kind, "/", id].concat()
}

/// `{base}/{rel}`: a sub-collection's href.
pub fn sub(base: &str, rel: &str) -> String {
    [base, "/", rel].concat()
}

/// The sub-collection links the model gives a `ty` object at `hr` (oVirt's `<link>`s).
fn links(n: &mut Node, ty: &str, hr: &str) {
    for rel in model().links_of(ty) {
        n.push(Node::link(rel, sub(hr, rel)));
    }
}

/// [`links`], for a builder chain.
fn linked(mut n: Node, ty: &str, hr: &str) -> Node {
    links(&mut n, ty, hr);
    n
}

fn obj(name: &'static str, kind: &str, id: &str) -> Node {
    let mut n = Node::new(name);
    n.attrs.reserve_exact(2);
    n.attr("href", href(kind, id)).attr("id", id)
}

pub fn data_center(d: &DataCenter) -> Node {
    let h = href("datacenters", &d.id);
    linked(obj("data_center", "datacenters", &d.id), "DataCenter", &h)
        .with(Node::leaf("name", &d.name))
        .with(Node::leaf("description", &d.description))
        .with(Node::leaf("local", d.local))
        .with(Node::leaf("quota_mode", "disabled"))
        .with(Node::leaf("status", &d.status))
        .with(Node::leaf("storage_format", "v5"))
        .with(Node::new("supported_versions").with(version(4, 7)))
        .with(version(4, 7))
}

fn version(major: u32, minor: u32) -> Node {
    Node::new("version")
        .with(Node::leaf("major", major))
        .with(Node::leaf("minor", minor))
}

pub fn cluster(c: &Cluster) -> Node {
    let h = href("clusters", &c.id);
    linked(obj("cluster", "clusters", &c.id), "Cluster", &h)
        .with(Node::leaf("name", &c.name))
        .with(Node::leaf("description", &c.description))
        .with(
            Node::new("cpu")
                .with(Node::leaf("architecture", "x86_64"))
                .with(Node::leaf("type", &c.cpu_type)),
        )
        .with(Node::leaf("ballooning_enabled", false))
        .with(
            Node::new("fencing_policy")
                .with(Node::leaf("enabled", c.fencing_enabled))
                .with(
                    Node::new("skip_if_sd_active")
                        .with(Node::leaf("enabled", c.fencing_skip_if_sd_active)),
                ),
        )
        .with(
            Node::new("migration").with(match c.migration_bandwidth_mbps {
                Some(v) => Node::new("bandwidth")
                    .with(Node::leaf("assignment_method", "custom"))
                    .with(Node::leaf("custom_value", v)),
                None => Node::new("bandwidth")
                    .with(Node::leaf("assignment_method", "hypervisor_default")),
            }),
        )
        .with(version(4, 7))
        .with(Node::reference(
            "mac_pool",
            &href("macpools", crate::api::macpools::pool_id(c)),
            crate::api::macpools::pool_id(c),
        ))
        .with({
            let p = if c.scheduling_policy.is_empty() {
                crate::scheduling::default_policy()
            } else {
                &c.scheduling_policy
            };
            Node::reference("scheduling_policy", &href("schedulingpolicies", p), p)
        })
        .with(Node::reference(
            "data_center",
            &href("datacenters", &c.data_center),
            &c.data_center,
        ))
}

pub fn network(n: &Network) -> Node {
    let h = href("networks", &n.id);
    let mut x = linked(obj("network", "networks", &n.id), "Network", &h)
        .with(Node::leaf("name", &n.name))
        .with(Node::leaf("description", &n.description))
        .with(Node::leaf("mtu", n.mtu))
        .with(Node::leaf("stp", false))
        .with(
            n.usages()
                .iter()
                .fold(Node::new("usages"), |u, x| u.with(Node::leaf("usage", x))),
        )
        .with(Node::reference(
            "data_center",
            &href("datacenters", &n.data_center),
            &n.data_center,
        ));
    if let Some(v) = n.vlan {
        x.push(Node::new("vlan").attr("id", v));
    }
    x
}

/// The fingerprint of the key in a host's CSR, remembered by the CSR's text: parsing
/// a CSR and hashing its key for every host of every `GET /hosts` cost 0.15 ms a host.
fn key_fingerprint(csr: &str) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    // Keyed by the whole text (not a hash of it): an admin approves what this shows.
    static SEEN: OnceLock<Mutex<HashMap<String, Option<String>>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(fp) = seen.lock().ok().and_then(|m| m.get(csr).cloned()) {
        return fp;
    }
    let fp = halyard_pki::csr_key_fingerprint(csr);
    if let Ok(mut m) = seen.lock() {
        // Bounded: one entry per host key ever seen, dropped wholesale past a limit.
        if m.len() >= 20_000 {
            m.clear();
        }
        m.insert(csr.to_string(), fp.clone());
    }
    fp
}

/// A host; `scheduling_memory` from [`Inventory::scheduling_memory`].
pub fn host(h: &Host, scheduling_memory: u64) -> Node {
    let hr = href("hosts", &h.id);
    let mut n = obj("host", "hosts", &h.id);
    links(&mut n, "Host", &hr);
    n = n
        .with(Node::leaf("name", &h.name))
        .with(Node::leaf("comment", ""))
        .with(Node::leaf("address", &h.address))
        .with(
            Node::new("certificate")
                .with(Node::leaf("organization", "Halyard"))
                .with(Node::leaf("subject", format!("O=Halyard,CN={}", h.address))),
        )
        .with(
            Node::new("cpu")
                .with(Node::leaf("name", &h.cpu_model))
                .opt(
                    "speed",
                    h.cpu_speed
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .map(|v| v.round() as i64),
                )
                .with(
                    Node::new("topology")
                        .with(Node::leaf("cores", h.cpu_cores.max(1)))
                        .with(Node::leaf("sockets", h.cpu_sockets.max(1)))
                        .with(Node::leaf("threads", h.cpu_threads.max(1))),
                ),
        )
        .with(Node::leaf("external_status", "ok"))
        .with(Node::new("hardware_information").with(Node::leaf("uuid", &h.hardware_uuid)))
        .with(Node::leaf("memory", h.memory))
        .with(Node::leaf("max_scheduling_memory", scheduling_memory))
        .with(
            Node::new("os")
                .with(Node::leaf("type", &h.os_name))
                .with(Node::new("version").with(Node::leaf("full_version", &h.kernel))),
        )
        .with(Node::leaf("port", h.port))
        .with(
            Node::new("power_management")
                .with(Node::leaf("enabled", h.pm_enabled))
                .with(Node::leaf("automatic_pm_enabled", h.pm_automatic))
                .with(Node::leaf("kdump_detection", false)),
        )
        .with(Node::leaf("protocol", "stomp"))
        .with(
            Node::new("spm")
                .with(Node::leaf("priority", h.spm_priority))
                .with(Node::leaf(
                    "status",
                    if h.spm_status.is_empty() {
                        "none"
                    } else {
                        &h.spm_status
                    },
                )),
        )
        .with(Node::leaf("status", &h.status))
        .opt(
            "status_detail",
            (!h.status_detail.is_empty()).then_some(&h.status_detail),
        )
        .with(Node::leaf("type", "rhel"))
        .with(Node::leaf("update_available", h.update_available))
        .with(
            Node::new("version")
                .with(Node::leaf("full_version", &h.vdsm_version))
                .with(Node::leaf("major", 4)),
        )
        .with(Node::new("libvirt_version").with(Node::leaf("full_version", &h.libvirt_version)))
        .with(Node::reference(
            "cluster",
            &href("clusters", &h.cluster),
            &h.cluster,
        ));
    // Halyard's additions (oVirt's readers skip elements they do not know): the key the
    // host registered with, so that an admin approves a key and not a name, where the
    // registration came from, and a change a later registration asked for.
    if let Some(fp) = h.csr.as_deref().and_then(key_fingerprint) {
        n.push(Node::leaf("key_fingerprint", fp));
    }
    if !h.registered_from.is_empty() {
        n.push(Node::leaf("registered_from", &h.registered_from));
    }
    if let Some(c) = &h.pending_change {
        n.push(
            Node::new("pending_registration")
                .with(Node::leaf("address", &c.address))
                .with(Node::leaf("port", c.port))
                .with(Node::leaf("key_fingerprint", &c.key_fingerprint))
                .with(Node::leaf("registered_from", &c.from))
                .with(Node::leaf("date", crate::model::iso8601(c.time))),
        );
    }
    n
}

pub fn vm(v: &Vm, nics: &[&Nic]) -> Node {
    let hr = href("vms", &v.id);
    let mut n = obj("vm", "vms", &v.id);
    n.children.reserve(48);
    links(&mut n, "Vm", &hr);
    if let Some(p) = &v.pool {
        n.push(Node::reference("vm_pool", &href("vmpools", p), p));
    }
    if let Some(t) = &v.instance_type {
        n.push(Node::reference(
            "instance_type",
            &href("instancetypes", t),
            t,
        ));
    }
    n = n
        .with(Node::leaf("name", &v.name))
        .with(Node::leaf("description", &v.description))
        .with(Node::leaf("comment", ""))
        .with(
            Node::new("cpu")
                .with(Node::leaf("architecture", "x86_64"))
                .with(Node::leaf("mode", "custom"))
                .with(
                    Node::new("topology")
                        .with(Node::leaf("cores", v.cores))
                        .with(Node::leaf("sockets", v.sockets))
                        .with(Node::leaf("threads", v.threads)),
                ),
        )
        .with(Node::leaf("creation_time", iso8601(v.creation_time)))
        .with(Node::leaf("delete_protected", false))
        .with(
            Node::new("high_availability")
                .with(Node::leaf("enabled", v.ha_enabled))
                .with(Node::leaf("priority", v.ha_priority)),
        )
        .with_opt(v.lease_domain.as_ref().map(|sd| {
            Node::new("lease").with(Node::reference(
                "storage_domain",
                &href("storagedomains", sd),
                sd,
            ))
        }))
        .with(Node::leaf("memory", v.memory))
        .with(
            Node::new("bios")
                .with(Node::new("boot_menu").with(Node::leaf("enabled", false)))
                .with(Node::leaf("type", v.bios())),
        )
        .with_opt(
            v.graphics
                .first()
                .map(|g| Node::new("display").with(Node::leaf("type", g))),
        )
        .with(
            Node::new("memory_policy")
                .with(Node::leaf("guaranteed", v.memory))
                .with(Node::leaf("max", v.memory * 4)),
        )
        .with(
            Node::new("os")
                .with(Node::new("boot").with(boot_devices(&v.boot_devices)))
                .with(Node::leaf("type", &v.os_type))
                .opt("kernel", (!v.kernel.is_empty()).then_some(&v.kernel))
                .opt("initrd", (!v.initrd.is_empty()).then_some(&v.initrd))
                .opt("cmdline", (!v.cmdline.is_empty()).then_some(&v.cmdline)),
        )
        .with(Node::leaf("stateless", false))
        .with(Node::leaf(
            "type",
            if v.vm_type.is_empty() {
                "server"
            } else {
                &v.vm_type
            },
        ))
        .with(Node::leaf("status", &v.status))
        .opt("start_time", v.start_time.map(iso8601))
        .opt("stop_time", v.stop_time.map(iso8601))
        .opt(
            "stop_reason",
            (!v.stop_reason.is_empty()).then_some(&v.stop_reason),
        )
        .with(Node::leaf("run_once", false))
        .with(Node::reference(
            "cluster",
            &href("clusters", &v.cluster),
            &v.cluster,
        ))
        .with(Node::reference(
            "template",
            &href("templates", &v.template),
            &v.template,
        ))
        .with(Node::reference(
            "original_template",
            &href("templates", &v.template),
            &v.template,
        ));
    if let Some(h) = &v.host {
        n.push(Node::reference("host", &href("hosts", h), h));
    }
    let mut placement = Node::new("placement_policy").with(Node::leaf(
        "affinity",
        if v.placement.affinity.is_empty() {
            "migratable"
        } else {
            &v.placement.affinity
        },
    ));
    if !v.placement.hosts.is_empty() {
        let mut hosts = Node::new("hosts");
        for h in &v.placement.hosts {
            hosts.push(Node::reference("host", &href("hosts", h), h));
        }
        placement.push(hosts);
    }
    n.push(placement);
    n.push(Node::new("console").with(Node::leaf("enabled", v.console_enabled != Some(false))));
    if let Some(s) = &v.serial_number {
        n.push(
            Node::new("serial_number")
                .with(Node::leaf("policy", &s.policy))
                .opt("value", (!s.value.is_empty()).then_some(&s.value)),
        );
    }
    if let Some(i) = &v.initialization {
        n.push(super::initialization::render(i));
    }
    if !v.guest.fqdn.is_empty() {
        n.push(Node::leaf("fqdn", &v.guest.fqdn));
    }
    if !v.guest.os.is_empty() {
        let g = &v.guest.os;
        let get = |k: &str| g.get(k).cloned().unwrap_or_default();
        n.push(
            Node::new("guest_operating_system")
                .with(Node::leaf("architecture", get("arch")))
                .with(Node::leaf("codename", get("codename")))
                .with(Node::leaf("distribution", get("distribution")))
                .with(Node::leaf(
                    "family",
                    match (get("family"), get("type").as_str()) {
                        (f, _) if !f.is_empty() => f,
                        (_, "linux") => "Linux".to_string(),
                        (_, t) => t.to_string(),
                    },
                ))
                .with(
                    Node::new("kernel")
                        .with(Node::new("version").with(Node::leaf("full_version", get("kernel")))),
                )
                .with(Node::new("version").with(Node::leaf("full_version", get("version")))),
        );
    }
    if let Some((name, offset)) = &v.guest.timezone {
        let sign = if *offset < 0 { '-' } else { '+' };
        let o = offset.abs();
        n.push(
            Node::new("guest_time_zone")
                .with(Node::leaf("name", name))
                .with(Node::leaf(
                    "utc_offset",
                    format!("{sign}{:02}:{:02}", o / 3600, (o / 60) % 60),
                )),
        );
    }
    if !nics.is_empty() {
        let mut l = Node::new("nics");
        for x in nics {
            l.push(nic(x));
        }
        n.push(l);
    }
    n
}

/// `<devices>` of a boot order (empty: hd).
fn boot_devices(devs: &[String]) -> Node {
    let mut n = Node::new("devices");
    if devs.is_empty() {
        n.push(Node::leaf("device", "hd"));
    }
    for d in devs {
        n.push(Node::leaf("device", d));
    }
    n
}

pub fn nic(x: &Nic) -> Node {
    let n = Node::new("nic")
        .attr("href", format!("{}/nics/{}", href("vms", &x.vm), x.id))
        .attr("id", &x.id)
        .with(Node::leaf("name", &x.name))
        .with(Node::leaf("description", &x.description))
        .with(Node::leaf("interface", &x.interface))
        .with(Node::leaf("linked", x.linked))
        .with(Node::new("mac").with(Node::leaf("address", &x.mac)))
        .with(Node::leaf("plugged", x.plugged))
        .with(Node::reference(
            "network",
            &href("networks", &x.network),
            &x.network,
        ))
        .with(Node::reference("vm", &href("vms", &x.vm), &x.vm));
    match &x.vnic_profile {
        Some(p) => n.with(Node::reference("vnic_profile", &href("vnicprofiles", p), p)),
        None => n,
    }
}

/// The Blank template.
pub fn blank_template(cluster: Option<&str>) -> Node {
    let mut n = obj("template", "templates", BLANK_TEMPLATE)
        .with(Node::leaf("name", "Blank"))
        .with(Node::leaf("description", "Blank template"))
        .with(Node::leaf("comment", ""))
        .with(Node::leaf("memory", 1u64 << 30))
        .with(Node::new("os").with(Node::leaf("type", "other")))
        .with(Node::leaf("status", "ok"))
        .with(Node::leaf("type", "server"))
        .with(
            Node::new("version")
                .with(Node::leaf("version_name", "base version"))
                .with(Node::leaf("version_number", 1))
                .with(Node::reference(
                    "base_template",
                    &href("templates", BLANK_TEMPLATE),
                    BLANK_TEMPLATE,
                )),
        );
    if let Some(c) = cluster {
        n.push(Node::reference("cluster", &href("clusters", c), c));
    }
    n
}

pub fn event(e: &Event) -> Node {
    let mut n = obj("event", "events", &e.id.to_string())
        .with(Node::leaf("code", e.code))
        .with(Node::leaf("description", &e.description))
        .with(Node::leaf("severity", &e.severity))
        .with(Node::leaf("time", iso8601(e.time)))
        .with(Node::leaf("origin", e.origin.as_deref().unwrap_or("oVirt")))
        .with(Node::leaf("custom_id", e.custom_id.unwrap_or(-1)))
        .with(Node::leaf("flood_rate", 0))
        .opt("correlation_id", e.correlation_id.as_ref());
    if let Some(h) = &e.host {
        n.push(Node::reference("host", &href("hosts", h), h));
    }
    if let Some(v) = &e.vm {
        n.push(Node::reference("vm", &href("vms", v), v));
    }
    if let Some(c) = &e.cluster {
        n.push(Node::reference("cluster", &href("clusters", c), c));
    }
    if let Some(d) = &e.data_center {
        n.push(Node::reference("data_center", &href("datacenters", d), d));
    }
    n
}

pub fn job(j: &Job) -> Node {
    let hr = href("jobs", &j.id);
    linked(obj("job", "jobs", &j.id), "Job", &hr)
        .with(Node::leaf("description", &j.description))
        .with(Node::leaf("auto_cleared", true))
        .with(Node::leaf("external", false))
        .with(Node::leaf(
            "last_updated",
            iso8601(j.end_time.unwrap_or(j.start_time)),
        ))
        .with(Node::leaf("start_time", iso8601(j.start_time)))
        .opt("end_time", j.end_time.map(iso8601))
        .with(Node::leaf("status", &j.status))
        .with(Node::reference(
            "owner",
            &format!("{BASE}/users/{}", crate::api::access::ADMIN_USER_ID),
            crate::api::access::ADMIN_USER_ID,
        ))
}

/// `<action><status>complete</status></action>` (with a job link when given).
pub fn action_done(job: Option<&str>) -> Node {
    let mut n = Node::new("action").with(Node::leaf("status", "complete"));
    if let Some(j) = job {
        n.push(Node::reference("job", &href("jobs", j), j));
    }
    n
}

/// A storage domain; `attached` renders it as seen under its data center.
pub fn storage_domain(s: &StorageDomain, committed: u64) -> Node {
    let hr = href("storagedomains", &s.id);
    let mut storage = Node::new("storage")
        .with(Node::leaf("type", &s.storage_type))
        .with(Node::leaf("path", &s.path));
    if !s.address.is_empty() {
        storage.push(Node::leaf("address", &s.address));
    }
    if !s.vfs_type.is_empty() {
        storage.push(Node::leaf("vfs_type", &s.vfs_type));
    }
    if !s.mount_options.is_empty() {
        storage.push(Node::leaf("mount_options", &s.mount_options));
    }
    let mut n = obj("storage_domain", "storagedomains", &s.id);
    links(&mut n, "StorageDomain", &hr);
    n = n
        .with(Node::leaf("name", &s.name))
        .with(Node::leaf("description", &s.description))
        .with(Node::leaf("comment", ""))
        .with(Node::leaf("available", s.available))
        .with(Node::leaf("used", s.used))
        .with(Node::leaf("committed", committed))
        .with(Node::leaf("backup", false))
        .with(Node::leaf("block_size", 512))
        .with(Node::leaf("critical_space_action_blocker", 5))
        .with(Node::leaf("discard_after_delete", false))
        .with(Node::leaf("external_status", "ok"))
        .with(Node::leaf("master", s.master))
        .with(Node::leaf("status", &s.status))
        .with(storage)
        .with(Node::leaf("storage_format", "v5"))
        .with(Node::leaf("supports_discard", false))
        .with(Node::leaf("supports_discard_zeroes_data", false))
        .with(Node::leaf("type", "data"))
        .with(Node::leaf("warning_low_space_indicator", 10))
        .with(Node::leaf("wipe_after_delete", false));
    if let Some(dc) = &s.data_center {
        n.push(Node::new("data_centers").with(Node::reference(
            "data_center",
            &href("datacenters", dc),
            dc,
        )));
    }
    n
}

/// A storage domain under `/datacenters/{dc}/storagedomains`.
pub fn attached_storage_domain(s: &StorageDomain, dc: &str, committed: u64) -> Node {
    let mut n = storage_domain(s, committed);
    n.set_attr(
        "href",
        format!("{}/storagedomains/{}", href("datacenters", dc), s.id),
    );
    n.push(Node::reference("data_center", &href("datacenters", dc), dc));
    n
}

pub fn disk(d: &Disk) -> Node {
    linked(obj("disk", "disks", &d.id), "Disk", &href("disks", &d.id))
        .with(Node::leaf("name", &d.name))
        .with(Node::leaf("alias", &d.name))
        .with(Node::leaf("description", &d.description))
        .with(Node::leaf("actual_size", d.actual_size))
        .with(Node::leaf("backup", "none"))
        .with(Node::leaf("content_type", &d.content_type))
        .with(Node::leaf("format", &d.format))
        .with(Node::leaf("image_id", d.leaf()))
        .with(Node::leaf("propagate_errors", false))
        .with(Node::leaf("provisioned_size", d.provisioned_size))
        .with(Node::leaf("qcow_version", "qcow2_v3"))
        .with(Node::leaf("shareable", false))
        .with(Node::leaf("sparse", d.sparse))
        .with(Node::leaf("status", &d.status))
        .with(Node::leaf("storage_type", "image"))
        .with(Node::leaf("total_size", d.actual_size))
        .with(Node::leaf("wipe_after_delete", false))
        .with(Node::new("storage_domains").with(Node::reference(
            "storage_domain",
            &href("storagedomains", &d.storage_domain),
            &d.storage_domain,
        )))
}

/// A disk attachment of a VM (or template); its id is the disk's.
pub fn disk_attachment(d: &Disk, owner_kind: &str, owner: &str) -> Node {
    let owner_tag = if owner_kind == "templates" {
        "template"
    } else {
        "vm"
    };
    Node::new("disk_attachment")
        .attr(
            "href",
            format!("{}/diskattachments/{}", href(owner_kind, owner), d.id),
        )
        .attr("id", &d.id)
        .with(Node::leaf("active", !d.inactive))
        .with(Node::leaf("bootable", d.bootable))
        .with(Node::leaf("interface", &d.interface))
        .with(Node::leaf("pass_discard", false))
        .with(Node::leaf("read_only", false))
        .with(Node::leaf("uses_scsi_reservation", false))
        .with(Node::reference("disk", &href("disks", &d.id), &d.id))
        .with(Node::reference(owner_tag, &href(owner_kind, owner), owner))
}

pub fn snapshot(s: &Snapshot) -> Node {
    Node::new("snapshot")
        .attr("href", format!("{}/snapshots/{}", href("vms", &s.vm), s.id))
        .attr("id", &s.id)
        .with(Node::leaf("description", &s.description))
        .with(Node::leaf("date", iso8601(s.date)))
        .with(Node::leaf("persist_memorystate", false))
        .with(Node::leaf("snapshot_status", &s.status))
        .with(Node::leaf("snapshot_type", "regular"))
        .with(Node::reference("vm", &href("vms", &s.vm), &s.vm))
}

/// The "Active VM" snapshot every VM has.
pub fn active_snapshot(vm: &Vm, id: &str) -> Node {
    Node::new("snapshot")
        .attr("href", format!("{}/snapshots/{id}", href("vms", &vm.id)))
        .attr("id", id)
        .with(Node::leaf("description", "Active VM"))
        .with(Node::leaf("date", iso8601(vm.creation_time)))
        .with(Node::leaf("persist_memorystate", false))
        .with(Node::leaf("snapshot_status", "ok"))
        .with(Node::leaf("snapshot_type", "active"))
        .with(Node::reference("vm", &href("vms", &vm.id), &vm.id))
}

pub fn template(t: &Template) -> Node {
    let hr = href("templates", &t.id);
    let mut os = Node::new("os").with(Node::leaf("type", &t.os_type));
    if !t.kernel.is_empty() {
        os.push(Node::leaf("kernel", &t.kernel));
        os.push(Node::leaf("initrd", &t.initrd));
        os.push(Node::leaf("cmdline", &t.cmdline));
    }
    let mut n = obj("template", "templates", &t.id);
    links(&mut n, "Template", &hr);
    n.with(Node::leaf("name", &t.name))
        .with(Node::leaf("description", &t.description))
        .with(Node::leaf("comment", ""))
        .with(
            Node::new("cpu")
                .with(Node::leaf("architecture", "x86_64"))
                .with(
                    Node::new("topology")
                        .with(Node::leaf("cores", t.cores))
                        .with(Node::leaf("sockets", t.sockets))
                        .with(Node::leaf("threads", t.threads)),
                ),
        )
        .with(Node::leaf("creation_time", iso8601(t.creation_time)))
        .with(Node::leaf("memory", t.memory))
        .with(os)
        .with(Node::leaf("status", &t.status))
        .with(Node::leaf("type", "server"))
        .with({
            let base = t.base_template.as_deref().unwrap_or(&t.id);
            let name = match (&t.base_template, t.version_name.as_str()) {
                (None, "") => "base version",
                (_, n) => n,
            };
            Node::new("version")
                .with(Node::leaf("version_name", name))
                .with(Node::leaf("version_number", t.version_number))
                .with(Node::reference(
                    "base_template",
                    &href("templates", base),
                    base,
                ))
        })
        .with(Node::reference(
            "cluster",
            &href("clusters", &t.cluster),
            &t.cluster,
        ))
}

pub fn step(j: &Job, s: &Step) -> Node {
    Node::new("step")
        .attr("href", format!("{}/steps/{}", href("jobs", &j.id), s.id))
        .attr("id", &s.id)
        .with(Node::leaf("description", &s.description))
        .with(Node::leaf("external", false))
        .with(Node::leaf("number", s.number))
        .with(Node::leaf("start_time", iso8601(s.start_time)))
        .opt("end_time", s.end_time.map(iso8601))
        .with(Node::leaf("status", &s.status))
        .with(Node::leaf("type", &s.step_type))
        .with(Node::reference("job", &href("jobs", &j.id), &j.id))
}

/// An image transfer; its URLs once it is ready (they carry the ticket).
pub fn image_transfer(t: &ImageTransfer, image: Option<&str>) -> Node {
    let hr = href("imagetransfers", &t.id);
    let mut n = linked(
        obj("image_transfer", "imagetransfers", &t.id),
        "ImageTransfer",
        &hr,
    )
    .with(Node::leaf("active", t.active))
    .with(Node::leaf("direction", &t.direction))
    .with(Node::leaf("format", &t.format))
    .with(Node::leaf("inactivity_timeout", t.inactivity_timeout))
    .with(Node::leaf("phase", &t.phase));
    if !t.proxy_url.is_empty() && t.phase == "transferring" {
        n.push(Node::leaf("proxy_url", &t.proxy_url));
    }
    n.push(Node::leaf("shallow", t.shallow));
    n.push(Node::leaf("timeout_policy", &t.timeout_policy));
    if !t.transfer_url.is_empty() && t.phase == "transferring" {
        n.push(Node::leaf("transfer_url", &t.transfer_url));
    }
    n.push(Node::leaf("transferred", t.transferred));
    n.push(Node::reference("disk", &href("disks", &t.disk), &t.disk));
    if let Some(h) = &t.host {
        n.push(Node::reference("host", &href("hosts", h), h));
    }
    if let Some(i) = image {
        n.push(Node::new("image").attr("id", i));
    }
    n
}
