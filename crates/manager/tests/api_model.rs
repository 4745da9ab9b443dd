//! Every `href` reachable from `/ovirt-engine/api` gets a real answer or an honest
//! fault: a document, or 501 naming the service Halyard does not implement yet. Never
//! a 404 for a link the Manager itself wrote, never a 500.

mod conform;

use std::collections::{BTreeSet, VecDeque};

use conform::conforms;

use halyard_manager::api::node::Node;
use halyard_testinfra::manager::{Database, ManagerProc};

fn hrefs(n: &Node, out: &mut Vec<String>) {
    if let Some(h) = n.attr_of("href") {
        out.push(h.to_string());
    }
    for c in &n.children {
        hrefs(c, out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_link_gets_a_real_answer_or_an_honest_fault() {
    let m = ManagerProc::start(Database::Sqlite, "").await;
    let t = m.token().await;
    // Something of each kind the walk can reach.
    let (code, b) = m
        .api(
            &t,
            "POST",
            "/vms",
            "<vm><name>walk</name><cluster><name>Default</name></cluster><template><name>Blank</name></template></vm>",
        )
        .await;
    assert_eq!(code, 201, "{b}");
    let vm = Node::parse_xml(b.as_bytes())
        .expect("xml")
        .id()
        .expect("id")
        .to_string();
    let (code, b) = m
        .api(
            &t,
            "POST",
            &format!("/vms/{vm}/nics"),
            "<nic><name>nic1</name></nic>",
        )
        .await;
    assert_eq!(code, 201, "{b}");

    let base = "/ovirt-engine/api";
    let mut seen = BTreeSet::new();
    let mut todo = VecDeque::from([base.to_string()]);
    let (mut real, mut honest) = (0, Vec::new());
    let mut wrong = Vec::new();
    // Every answer's elements are members of its model type.
    let mut off_model = Vec::new();
    while let Some(h) = todo.pop_front() {
        if !seen.insert(h.clone()) || seen.len() > 3000 {
            continue;
        }
        let path = h.trim_start_matches(base);
        let (code, body) = m.api(&t, "GET", path, "").await;
        let doc = Node::parse_xml(body.as_bytes());
        match (code, &doc) {
            (200, Ok(n)) => {
                real += 1;
                off_model.extend(conforms(path, n));
                let mut found = Vec::new();
                hrefs(n, &mut found);
                for f in found {
                    if f.starts_with(base) && !f.contains('{') && !f.contains('?') {
                        todo.push_back(f);
                    }
                }
            }
            (501, Ok(n))
                if n.name == "fault"
                    && n.text_of("detail")
                        .is_some_and(|d| d.contains("does not implement")) =>
            {
                honest.push(path.to_string());
            }
            // A service of the model that has no GET (add-only imports, /options).
            (405, Ok(n))
                if n.name == "fault"
                    && n.text_of("detail")
                        .is_some_and(|d| d.contains("not a method")) =>
            {
                honest.push(path.to_string());
            }
            _ => wrong.push(format!(
                "{code} GET {path}: {}",
                body.chars().take(300).collect::<String>()
            )),
        }
    }
    eprintln!(
        "{} links: {real} real answers, {} honest 501s, {} wrong",
        seen.len(),
        honest.len(),
        wrong.len()
    );
    for h in &honest {
        eprintln!("  501 {h}");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    off_model.sort();
    off_model.dedup();
    assert!(off_model.is_empty(), "{}", off_model.join("\n"));
    assert!(real >= 20, "the walk reached the real collections");
    assert!(seen.contains(&format!("{base}/vms/{vm}/nics")));
}

/// Methods and actions the model does not have are refused as such; what it has and
/// Halyard does not do is a 501 naming the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_decides_what_exists() {
    let m = ManagerProc::start(Database::Sqlite, "").await;
    let t = m.token().await;
    for (method, path, code, text) in [
        ("GET", "/nothing", 404, "No resource"),
        (
            "GET",
            "/vms/00000000-0000-0000-0000-000000000001/bogus",
            404,
            "No resource",
        ),
        ("PUT", "/vms", 405, "not a method of VmsService"),
        ("DELETE", "/clusterlevels", 405, "not a method"),
        (
            "POST",
            "/vms/00000000-0000-0000-0000-000000000001/freezefilesystems",
            501,
            "the action freeze_filesystems of VmService",
        ),
        (
            "GET",
            "/externalhostproviders",
            501,
            "ExternalHostProvidersService.list",
        ),
        (
            "POST",
            "/vms/00000000-0000-0000-0000-000000000001/reordermacaddresses",
            501,
            "the action reorder_mac_addresses of VmService",
        ),
        // Implemented actions answer for the VM they name.
        (
            "POST",
            "/vms/00000000-0000-0000-0000-000000000001/migrate",
            404,
            "not found",
        ),
    ] {
        let (got, body) = m.api(&t, method, path, "<action/>").await;
        assert_eq!(got, code, "{method} {path}: {body}");
        assert!(body.contains(text), "{method} {path}: {body}");
    }
}

/// What the model allows but Halyard does not act on is refused, naming it: the SDK's
/// set_vm_serial_number.py, pin_vm.py and set_vm_lease_storage_domain.py used to "pass"
/// with nothing changed (the first two are acted on now: their wrong input is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_halyard_does_not_act_on_is_refused() {
    let m = ManagerProc::start(Database::Sqlite, "").await;
    let t = m.token().await;
    let (code, b) = m
        .api(
            &t,
            "POST",
            "/vms",
            "<vm><name>strict</name><cluster><name>Default</name></cluster><template><name>Blank</name></template></vm>",
        )
        .await;
    assert_eq!(code, 201, "{b}");
    let vm = Node::parse_xml(b.as_bytes())
        .expect("xml")
        .id()
        .expect("id")
        .to_string();
    for (body, element) in [
        ("<vm><usb><enabled>true</enabled></usb></vm>", "usb&gt; is in oVirt"),
        ("<vm><high_availability><priority>500</priority></high_availability></vm>", "not a number from 0 to 100"),
        ("<vm><high_availability><enabled>yes</enabled></high_availability></vm>", "not a Boolean"),
        ("<vm><serial_number><policy>custom</policy></serial_number></vm>", "needs a serial number value"),
        ("<vm><serial_number><policy>custom</policy><value>a&#10;b</value></serial_number></vm>", "without control characters"),
        ("<vm><placement_policy><hosts><host><name>nosuchhost</name></host></hosts></placement_policy></vm>", "host \"nosuchhost\" does not exist"),
        ("<vm><console><enabled>maybe</enabled></console></vm>", "maybe"),
        ("<vm><cpu><cpu_tune><vcpu_pins><vcpu_pin><vcpu>0</vcpu><cpu_set>0</cpu_set></vcpu_pin></vcpu_pins></cpu_tune></cpu></vm>", "cpu/cpu_tune&gt;"),
        ("<vm><lease><storage_domain><name>nosuchsd</name></storage_domain></lease></vm>", "storage domain \"nosuchsd\" does not exist"),
        ("<vm><no_such_thing/></vm>", "unknown element &lt;no_such_thing&gt;"),
        ("<vm><os><boot><devices><device>floppy</device></devices></boot></os></vm>", "boot device must be hd, cdrom or network"),
        ("<vm><os><boot><devices><device>hd</device><device>hd</device></devices></boot></os></vm>", "named twice"),
        ("<vm><bios><type>q35_coreboot</type></bios></vm>", "bios type must be"),
    ] {
        let (code, b) = m.api(&t, "PUT", &format!("/vms/{vm}"), body).await;
        assert_eq!(code, 400, "{body}: {b}");
        assert!(b.contains(element), "{body}: {b}");
    }
    // A boot order is kept and shown.
    let (code, b) = m
        .api(
            &t,
            "PUT",
            &format!("/vms/{vm}"),
            "<vm><os><boot><devices><device>network</device><device>hd</device></devices></boot></os></vm>",
        )
        .await;
    assert_eq!(code, 200, "{b}");
    let (_, b) = m.api(&t, "GET", &format!("/vms/{vm}"), "").await;
    assert!(
        b.contains("<devices><device>network</device><device>hd</device></devices>"),
        "{b}"
    );
    // A template's disk formats: raw or cow, sparse, disks of the VM only.
    let other = "6f1f2b3c-0000-4000-8000-000000000001";
    for (disk, element) in [
        ("<sparse>false</sparse>", "sparse only"),
        ("<format>qcow</format>", "raw or cow"),
        ("<format>cow</format>", "is not a disk of VM"),
        (
            "<name>x</name>",
            "disk_attachments/disk/name&gt; is in oVirt",
        ),
    ] {
        let body = format!("<template><name>tf</name><vm id=\"{vm}\"><disk_attachments><disk_attachment><disk id=\"{other}\">{disk}</disk></disk_attachment></disk_attachments></vm></template>");
        let (code, b) = m.api(&t, "POST", "/templates", &body).await;
        assert_eq!(code, 400, "{body}: {b}");
        assert!(b.contains(element), "{body}: {b}");
    }
    for (q, element) in [
        ("clone=maybe", "clone must be true or false"),
        ("clone_permissions=true", "permissions"),
    ] {
        let (code, b) = m
            .api(&t, "POST", &format!("/vms?{q}"), "<vm><name>c2</name><cluster><name>Default</name></cluster><template><name>Blank</name></template></vm>")
            .await;
        assert_eq!(code, 400, "{q}: {b}");
        assert!(b.contains(element), "{q}: {b}");
    }
    let (code, b) = m
        .api(
            &t,
            "POST",
            &format!("/vms/{vm}/start"),
            "<action><pause>true</pause></action>",
        )
        .await;
    assert_eq!(code, 400, "{b}");
    assert!(b.contains("pause"), "{b}");
    // all_content: true or false only; true adds the VM's OVF.
    let (code, b) = m.api(&t, "GET", "/vms?all_content=maybe", "").await;
    assert_eq!(code, 400, "{b}");
    assert!(b.contains("all_content must be true or false"), "{b}");
    let (code, b) = m
        .api(&t, "GET", &format!("/vms/{vm}?all_content=true"), "")
        .await;
    assert_eq!(code, 200, "{b}");
    assert!(
        b.contains("<type>ovf</type>") && b.contains("ovf:Envelope"),
        "{b}"
    );
    let (_, b) = m.api(&t, "GET", &format!("/vms/{vm}"), "").await;
    assert!(
        !b.contains("<initialization>"),
        "only with all_content: {b}"
    );
    // The All-Content header too (as oVirt reads it); the parameter wins.
    let (code, b) = m
        .api_with(
            &t,
            "GET",
            &format!("/vms/{vm}"),
            "",
            &[("All-Content", "true")],
        )
        .await;
    assert!(code == 200 && b.contains("ovf:Envelope"), "{b}");
    let (_, b) = m
        .api_with(
            &t,
            "GET",
            &format!("/vms/{vm}?all_content=false"),
            "",
            &[("All-Content", "true")],
        )
        .await;
    assert!(!b.contains("<initialization>"), "{b}");
    let (code, _) = m
        .api_with(&t, "GET", "/vms", "", &[("All-Content", "maybe")])
        .await;
    assert_eq!(code, 400);
    assert!(b.contains("<name>strict</name>"), "nothing changed: {b}");
    assert!(!b.contains("<serial_number>"), "nothing changed: {b}");
    // What is acted on is stored and shown.
    let (code, b) = m
        .api(
            &t,
            "PUT",
            &format!("/vms/{vm}"),
            "<vm><serial_number><policy>vm</policy></serial_number><console><enabled>false</enabled></console></vm>",
        )
        .await;
    assert_eq!(code, 200, "{b}");
    let (_, b) = m.api(&t, "GET", &format!("/vms/{vm}"), "").await;
    assert!(
        b.contains("<serial_number><policy>vm</policy></serial_number>"),
        "{b}"
    );
    assert!(
        b.contains("<console><enabled>false</enabled></console>"),
        "{b}"
    );
}

/// A VM's virtual NUMA nodes: oVirt's rules on add, the highest index removed first,
/// pinning refused, at most MAX_NODES per VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_numa_nodes_follow_ovirts_rules() {
    let m = ManagerProc::start(Database::Sqlite, "").await;
    let t = m.token().await;
    let (code, b) = m
        .api(
            &t,
            "POST",
            "/vms",
            "<vm><name>numa</name><cluster><name>Default</name></cluster><template><name>Blank</name></template><memory>1073741824</memory><cpu><topology><sockets>2</sockets><cores>1</cores><threads>1</threads></topology></cpu></vm>",
        )
        .await;
    assert_eq!(code, 201, "{b}");
    let vm = Node::parse_xml(b.as_bytes())
        .expect("xml")
        .id()
        .expect("id")
        .to_string();
    let nodes = format!("/vms/{vm}/numanodes");
    let node = |i: u32, mem: u32, core: u32| {
        format!("<vm_numa_node><index>{i}</index><memory>{mem}</memory><cpu><cores><core><index>{core}</index></core></cores></cpu></vm_numa_node>")
    };
    let mut ids = Vec::new();
    for i in 0..2 {
        let (code, b) = m.api(&t, "POST", &nodes, &node(i, 512, i)).await;
        assert_eq!(code, 201, "{b}");
        ids.push(
            Node::parse_xml(b.as_bytes())
                .expect("xml")
                .id()
                .expect("id")
                .to_string(),
        );
    }
    for (body, fault) in [
        (node(2, 1, 0), "more NUMA nodes (3) than vCPUs (2)"),
        ("<vm_numa_node><index>0</index><memory>1</memory><numa_node_pins><numa_node_pin><index>0</index></numa_node_pin></numa_node_pins></vm_numa_node>".to_string(), "numa_node_pins&gt; is in oVirt"),
        ("<vm_numa_node><memory>many</memory></vm_numa_node>".to_string(), "is not a number"),
    ] {
        let (code, b) = m.api(&t, "POST", &nodes, &body).await;
        assert!(code == 400 || code == 409, "{body}: {code} {b}");
        assert!(b.contains(fault), "{body}: {b}");
    }
    // More memory than the VM's, a vCPU twice: the update is refused, nothing changes.
    let (code, b) = m
        .api(
            &t,
            "PUT",
            &format!("{nodes}/{}", ids[1]),
            "<vm_numa_node><memory>600</memory></vm_numa_node>",
        )
        .await;
    assert_eq!(code, 409, "{b}");
    assert!(b.contains("(1112 MiB) exceeds the VM's (1024 MiB)"), "{b}");
    let (code, b) = m
        .api(&t, "PUT", &format!("{nodes}/{}", ids[1]), &node(1, 256, 0))
        .await;
    assert_eq!(code, 409, "{b}");
    assert!(b.contains("vCPU 0 is in more than one NUMA node"), "{b}");
    let (_, b) = m.api(&t, "GET", &nodes, "").await;
    assert_eq!(b.matches("<vm_numa_node ").count(), 2, "{b}");
    assert_eq!(b.matches("<memory>512</memory>").count(), 2, "{b}");
    // The lowest index cannot go first; the highest can, then the other.
    let (code, b) = m
        .api(&t, "DELETE", &format!("{nodes}/{}", ids[0]), "")
        .await;
    assert_eq!(code, 409, "{b}");
    assert!(
        b.contains("only the node with the highest index (1)"),
        "{b}"
    );
    for id in ids.iter().rev() {
        let (code, b) = m.api(&t, "DELETE", &format!("{nodes}/{id}"), "").await;
        assert_eq!(code, 200, "{b}");
    }
    let (_, b) = m.api(&t, "GET", &nodes, "").await;
    assert!(!b.contains("<vm_numa_node "), "{b}");

    // The limit: a VM of 130 vCPUs takes 128 nodes, not a 129th.
    let (code, b) = m
        .api(&t, "PUT", &format!("/vms/{vm}"), "<vm><cpu><topology><sockets>130</sockets><cores>1</cores><threads>1</threads></topology></cpu></vm>")
        .await;
    assert_eq!(code, 200, "{b}");
    for i in 0..128 {
        let (code, b) = m.api(&t, "POST", &nodes, &node(i, 1, i)).await;
        assert_eq!(code, 201, "node {i}: {b}");
    }
    let (code, b) = m.api(&t, "POST", &nodes, &node(128, 1, 128)).await;
    assert_eq!(code, 409, "{b}");
    assert!(b.contains("a VM has at most 128"), "{b}");
}
