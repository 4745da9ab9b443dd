//! The declared collections (api::records): bookmarks, roles and permits, users and
//! permissions, MAC pools (NIC addresses come from the cluster's pool), vNIC profiles,
//! affinity labels and groups, quotas; what goes with an object when it is removed.

use halyard_manager::api::node::Node;
use halyard_testinfra::manager::{Database, ManagerProc};

fn doc(b: &str) -> Node {
    Node::parse_xml(b.as_bytes()).unwrap_or_else(|e| panic!("{e}: {b}"))
}

/// The id of the first `tag` of a list answer.
fn first_id(b: &str, tag: &str, what: &str) -> String {
    doc(b)
        .all(tag)
        .next()
        .and_then(|x| x.id().map(str::to_string))
        .unwrap_or_else(|| panic!("no {what} in {b}"))
}

fn names(b: &str, tag: &str) -> Vec<String> {
    doc(b)
        .all(tag)
        .filter_map(|x| x.text_of("name").map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_collections_are_real() {
    let mut proc = ManagerProc::start(Database::Sqlite, "").await;
    let m = &proc;
    let t = m.token().await;
    let api = |method: &'static str, path: String, body: String| {
        let t = &t;
        async move {
            let body: &'static str = Box::leak(body.into_boxed_str());
            m.api(t, method, &path, body).await
        }
    };
    let id_of = |b: &str| doc(b).id().expect("id").to_string();

    // Bookmarks: add, search, update, remove; required members and unknown ones.
    let (c, b) = api(
        "POST",
        "/bookmarks".into(),
        "<bookmark><name>mine</name><value>vms: name=a*</value></bookmark>".into(),
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let bm = id_of(&b);
    assert_eq!(
        api(
            "POST",
            "/bookmarks".into(),
            "<bookmark><name>x</name></bookmark>".into()
        )
        .await
        .0,
        400
    );
    let (c, b) = api(
        "POST",
        "/bookmarks".into(),
        "<bookmark><name>y</name><value>v</value><bogus/></bookmark>".into(),
    )
    .await;
    assert!(c == 400 && b.contains("bogus"), "{b}");
    assert_eq!(
        api(
            "POST",
            "/bookmarks".into(),
            "<bookmark><name>mine</name><value>v</value></bookmark>".into()
        )
        .await
        .0,
        409
    );
    let (c, b) = api(
        "PUT",
        format!("/bookmarks/{bm}"),
        "<bookmark><value>vms: name=b*</value></bookmark>".into(),
    )
    .await;
    assert_eq!(c, 200, "{b}");
    assert_eq!(doc(&b).text_of("value"), Some("vms: name=b*"));
    let (_, b) = api("GET", "/bookmarks?search=name%3Dmi*".into(), String::new()).await;
    assert_eq!(names(&b, "bookmark"), vec!["mine"]);
    assert_eq!(
        api("DELETE", format!("/bookmarks/{bm}"), String::new())
            .await
            .0,
        200
    );
    assert_eq!(
        api("GET", format!("/bookmarks/{bm}"), String::new())
            .await
            .0,
        404
    );

    // Roles: oVirt's predefined ones, read-only; a new one with permits by name.
    let (_, b) = api("GET", "/roles".into(), String::new()).await;
    let roles = names(&b, "role");
    assert!(
        roles.contains(&"SuperUser".into()) && roles.contains(&"UserRole".into()),
        "{roles:?}"
    );
    let super_user = "00000000-0000-0000-0000-000000000001";
    let (_, b) = api("GET", format!("/roles/{super_user}/permits"), String::new()).await;
    assert_eq!(doc(&b).all("permit").count(), 97, "{b}");
    assert_eq!(
        api(
            "PUT",
            format!("/roles/{super_user}"),
            "<role><description>x</description></role>".into()
        )
        .await
        .0,
        409
    );
    assert_eq!(
        api("DELETE", format!("/roles/{super_user}"), String::new())
            .await
            .0,
        409
    );
    let (c, b) = api("POST", "/roles".into(), "<role><name>vmstarter</name><administrative>false</administrative><permits><permit><name>run_vm</name></permit><permit id=\"1300\"/></permits></role>".into()).await;
    assert_eq!(c, 201, "{b}");
    let role = id_of(&b);
    let (_, b) = api("GET", format!("/roles/{role}/permits"), String::new()).await;
    assert_eq!(names(&b, "permit"), vec!["run_vm", "login"]);
    let (c, b) = api(
        "POST",
        "/roles".into(),
        "<role><name>bad</name><permits><permit><name>create_host</name></permit></permits></role>"
            .into(),
    )
    .await;
    assert!(c == 400 && b.contains("create_host"), "{b}");
    let (c, b) = api(
        "POST",
        "/roles".into(),
        "<role><name>bad</name><permits><permit><name>no_such</name></permit></permits></role>"
            .into(),
    )
    .await;
    assert_eq!(c, 404, "{b}");

    // Users: admin@internal is there; a user not in the directory cannot be added.
    let (_, b) = api(
        "GET",
        "/users?search=usrname%3Dadmin%40internal-authz".into(),
        String::new(),
    )
    .await;
    assert_eq!(doc(&b).all("user").count(), 1, "{b}");
    let admin = first_id(&b, "user", "admin");
    let (c, b) = api("POST", "/users".into(), "<user><user_name>eve@internal-authz</user_name><domain><name>internal-authz</name></domain></user>".into()).await;
    assert_eq!(c, 404, "{b}");
    let (_, b) = api("GET", "/domains".into(), String::new()).await;
    assert_eq!(names(&b, "domain"), vec!["internal-authz"]);

    // A VM; a permission on it for admin with the new role.
    let (c, b) = api("POST", "/vms".into(), "<vm><name>v1</name><cluster><name>Default</name></cluster><template><name>Blank</name></template></vm>".into()).await;
    assert_eq!(c, 201, "{b}");
    let vm = id_of(&b);
    let (c, b) = api(
        "POST",
        format!("/vms/{vm}/permissions"),
        format!("<permission><role id=\"{role}\"/><user id=\"{admin}\"/></permission>"),
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let perm = id_of(&b);
    assert_eq!(
        doc(&b).get("vm").and_then(Node::id),
        Some(vm.as_str()),
        "{b}"
    );
    let (_, b) = api("GET", format!("/users/{admin}/permissions"), String::new()).await;
    assert_eq!(
        doc(&b).all("permission").count(),
        2,
        "system SuperUser + the VM's: {b}"
    );
    assert_eq!(
        api("DELETE", format!("/roles/{role}"), String::new())
            .await
            .0,
        409,
        "in use"
    );

    // MAC pools: the cluster's pool gives the NICs their addresses; duplicates refused.
    let (c, b) = api("POST", "/macpools".into(), "<mac_pool><name>small</name><ranges><range><from>02:00:00:00:00:10</from><to>02:00:00:00:00:11</to></range></ranges></mac_pool>".into()).await;
    assert_eq!(c, 201, "{b}");
    let pool = id_of(&b);
    let (c, b) = api("POST", "/macpools".into(), "<mac_pool><name>bad</name><ranges><range><from>02:00:00:00:00:20</from><to>02:00:00:00:00:10</to></range></ranges></mac_pool>".into()).await;
    assert_eq!(c, 400, "{b}");
    let (_, b) = api(
        "GET",
        "/clusters?search=name%3DDefault".into(),
        String::new(),
    )
    .await;
    let cluster = first_id(&b, "cluster", "cluster");
    let (c, b) = api(
        "PUT",
        format!("/clusters/{cluster}"),
        format!("<cluster><mac_pool id=\"{pool}\"/></cluster>"),
    )
    .await;
    assert_eq!(c, 200, "{b}");
    let mut macs = Vec::new();
    for i in 0..2 {
        let (c, b) = api(
            "POST",
            format!("/vms/{vm}/nics"),
            format!("<nic><name>nic{i}</name></nic>"),
        )
        .await;
        assert_eq!(c, 201, "{b}");
        macs.push(
            doc(&b)
                .get("mac")
                .and_then(|x| x.text_of("address"))
                .expect("mac")
                .to_string(),
        );
    }
    macs.sort();
    assert_eq!(macs, vec!["02:00:00:00:00:10", "02:00:00:00:00:11"]);
    let (c, b) = api(
        "POST",
        format!("/vms/{vm}/nics"),
        "<nic><name>nic9</name></nic>".into(),
    )
    .await;
    assert!(c == 409 && b.contains("Not enough MAC"), "{b}");
    let (c, b) = api(
        "POST",
        format!("/vms/{vm}/nics"),
        "<nic><name>nic9</name><mac><address>02:00:00:00:00:10</address></mac></nic>".into(),
    )
    .await;
    assert!(c == 409 && b.contains("already in use"), "{b}");
    assert_eq!(
        api("DELETE", format!("/macpools/{pool}"), String::new())
            .await
            .0,
        409,
        "the cluster uses it"
    );

    // vNIC profiles: the network's own, another under the network, a NIC on it.
    let (_, b) = api(
        "GET",
        "/networks?search=name%3Dovirtmgmt".into(),
        String::new(),
    )
    .await;
    let net = first_id(&b, "network", "net");
    let (_, b) = api(
        "GET",
        format!("/networks/{net}/vnicprofiles"),
        String::new(),
    )
    .await;
    assert_eq!(names(&b, "vnic_profile"), vec!["ovirtmgmt"]);
    let (c, b) = api(
        "POST",
        format!("/networks/{net}/vnicprofiles"),
        "<vnic_profile><name>mirror</name><port_mirroring>true</port_mirroring></vnic_profile>"
            .into(),
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let prof = id_of(&b);
    assert_eq!(
        doc(&b).get("network").and_then(Node::id),
        Some(net.as_str())
    );
    let (c, b) = api("POST", "/vnicprofiles".into(), "<vnic_profile><name>x</name><port_mirroring>maybe</port_mirroring><network><name>ovirtmgmt</name></network></vnic_profile>".into()).await;
    assert!(c == 400 && b.contains("Boolean"), "{b}");
    api(
        "PUT",
        format!("/clusters/{cluster}"),
        "<cluster><mac_pool><name>Default</name></mac_pool></cluster>".into(),
    )
    .await;
    let (c, b) = api(
        "POST",
        format!("/vms/{vm}/nics"),
        format!("<nic><name>nic5</name><vnic_profile id=\"{prof}\"/></nic>"),
    )
    .await;
    assert_eq!(c, 201, "{b}");
    assert_eq!(
        doc(&b).get("vnic_profile").and_then(Node::id),
        Some(prof.as_str())
    );
    assert_eq!(
        api("DELETE", format!("/vnicprofiles/{prof}"), String::new())
            .await
            .0,
        409,
        "a NIC uses it"
    );

    // Affinity labels: assigned from the VM's side and from the label's.
    let (c, b) = api(
        "POST",
        "/affinitylabels".into(),
        "<affinity_label><name>fast</name></affinity_label>".into(),
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let label = id_of(&b);
    let (c, b) = api(
        "POST",
        format!("/vms/{vm}/affinitylabels"),
        format!("<affinity_label id=\"{label}\"/>"),
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let (_, b) = api("GET", format!("/affinitylabels/{label}/vms"), String::new()).await;
    assert_eq!(
        doc(&b).all("vm").filter_map(Node::id).collect::<Vec<_>>(),
        vec![vm.as_str()]
    );
    let (_, b) = api("GET", format!("/vms/{vm}/affinitylabels"), String::new()).await;
    assert_eq!(names(&b, "affinity_label"), vec!["fast"]);

    // Affinity groups of the cluster.
    let (c, b) = api("POST", format!("/clusters/{cluster}/affinitygroups"), format!("<affinity_group><name>apart</name><vms_rule><enabled>true</enabled><positive>false</positive><enforcing>true</enforcing></vms_rule><vms><vm id=\"{vm}\"/></vms></affinity_group>")).await;
    assert_eq!(c, 201, "{b}");
    let g = doc(&b);
    assert_eq!(
        g.get("vms_rule").and_then(|r| r.text_of("positive")),
        Some("false")
    );
    assert!(g
        .attr_of("href")
        .unwrap_or("")
        .contains(&format!("/clusters/{cluster}/affinitygroups/")));

    // Quotas with limits.
    let (_, b) = api(
        "GET",
        "/datacenters?search=name%3DDefault".into(),
        String::new(),
    )
    .await;
    let dc = first_id(&b, "data_center", "dc");
    let (c, b) = api(
        "POST",
        format!("/datacenters/{dc}/quotas"),
        "<quota><name>q1</name></quota>".into(),
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let q = id_of(&b);
    assert_eq!(doc(&b).text_of("cluster_soft_limit_pct"), Some("80"));
    let (c, b) = api("POST", format!("/datacenters/{dc}/quotas/{q}/quotaclusterlimits"), "<quota_cluster_limit><vcpu_limit>4</vcpu_limit><memory_limit>8</memory_limit></quota_cluster_limit>".into()).await;
    assert_eq!(c, 201, "{b}");

    // Removing the VM takes its permission and label membership along.
    assert_eq!(
        api("DELETE", format!("/vms/{vm}"), String::new()).await.0,
        200
    );
    assert_eq!(
        api("GET", format!("/permissions/{perm}"), String::new())
            .await
            .0,
        404
    );
    let (_, b) = api("GET", format!("/affinitylabels/{label}/vms"), String::new()).await;
    assert_eq!(doc(&b).all("vm").count(), 0, "{b}");
    // Removing the quota takes its limits.
    assert_eq!(
        api(
            "DELETE",
            format!("/datacenters/{dc}/quotas/{q}"),
            String::new()
        )
        .await
        .0,
        200
    );
    let (_, roles_before) = api("GET", "/roles".into(), String::new()).await;
    let (_, labels_before) = api("GET", "/affinitylabels".into(), String::new()).await;
    // Everything survives a restart, and nothing predefined is made twice.
    proc.restart().await;
    let t = proc.token().await;
    let (_, roles_after) = proc.api(&t, "GET", "/roles", "").await;
    let (_, labels_after) = proc.api(&t, "GET", "/affinitylabels", "").await;
    assert_eq!(roles_before, roles_after);
    assert_eq!(labels_before, labels_after);
}

/// A VM pool's VMs are real VMs made from its template; growing it makes more,
/// allocating starts one, removing it removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_pools_make_their_vms() {
    let m = ManagerProc::start(Database::Sqlite, "").await;
    let t = m.token().await;
    let (c, b) = m.api(&t, "POST", "/vmpools", "<vm_pool><name>pool</name><size>2</size><cluster><name>Default</name></cluster><template><name>Blank</name></template></vm_pool>").await;
    assert_eq!(c, 201, "{b}");
    let pool = doc(&b).id().expect("id").to_string();
    let (_, b) = m.api(&t, "GET", "/vms?search=pool%3Dpool", "").await;
    let mut vms = names(&b, "vm");
    vms.sort();
    assert_eq!(vms, vec!["pool-1", "pool-2"]);
    let (c, b) = m
        .api(
            &t,
            "PUT",
            &format!("/vmpools/{pool}"),
            "<vm_pool><size>3</size></vm_pool>",
        )
        .await;
    assert_eq!(c, 200, "{b}");
    let (_, b) = m.api(&t, "GET", "/vms?search=pool%3Dpool", "").await;
    assert_eq!(names(&b, "vm").len(), 3, "{b}");
    let (c, b) = m
        .api(
            &t,
            "PUT",
            &format!("/vmpools/{pool}"),
            "<vm_pool><size>1</size></vm_pool>",
        )
        .await;
    assert_eq!(c, 409, "{b}");
    // No host is up: allocating says so, with the scheduler's reason.
    let (c, b) = m
        .api(
            &t,
            "POST",
            &format!("/vmpools/{pool}/allocatevm"),
            "<action/>",
        )
        .await;
    assert!(c == 409 && b.contains("no host"), "{b}");
    assert_eq!(
        m.api(&t, "DELETE", &format!("/vmpools/{pool}"), "").await.0,
        200
    );
    let (_, b) = m.api(&t, "GET", "/vms", "").await;
    assert_eq!(names(&b, "vm").len(), 0, "{b}");
}

/// An instance type sizes the VMs made with it; it cannot be removed while they exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_types_size_new_vms() {
    let m = ManagerProc::start(Database::Sqlite, "").await;
    let t = m.token().await;
    let (c, b) = m.api(&t, "POST", "/instancetypes", "<instance_type><name>small</name><memory>536870912</memory><cpu><topology><sockets>1</sockets><cores>2</cores><threads>1</threads></topology></cpu><high_availability><enabled>true</enabled><priority>50</priority></high_availability></instance_type>").await;
    assert_eq!(c, 201, "{b}");
    let it = doc(&b).id().expect("id").to_string();
    let (c, b) = m
        .api(
            &t,
            "POST",
            "/instancetypes",
            "<instance_type><name>huge</name><memory>1</memory></instance_type>",
        )
        .await;
    assert_eq!(c, 400, "{b}");
    let (c, b) = m.api(&t, "POST", "/vms", "<vm><name>sized</name><cluster><name>Default</name></cluster><template><name>Blank</name></template><instance_type><name>small</name></instance_type></vm>").await;
    assert_eq!(c, 201, "{b}");
    let v = doc(&b);
    assert_eq!(v.text_of("memory"), Some("536870912"), "{b}");
    assert_eq!(
        v.get("cpu")
            .and_then(|c| c.get("topology"))
            .and_then(|t| t.text_of("cores")),
        Some("2")
    );
    assert_eq!(v.get("instance_type").and_then(Node::id), Some(it.as_str()));
    // Its high availability too.
    let ha = v.get("high_availability").expect("high_availability");
    assert_eq!(
        (ha.text_of("enabled"), ha.text_of("priority")),
        (Some("true"), Some("50")),
        "{b}"
    );
    let (c, b) = m
        .api(
            &t,
            "POST",
            "/instancetypes",
            "<instance_type><name>odd</name><high_availability><priority>101</priority></high_availability></instance_type>",
        )
        .await;
    assert_eq!(c, 400, "{b}");
    assert_eq!(
        m.api(&t, "DELETE", &format!("/instancetypes/{it}"), "")
            .await
            .0,
        409
    );
}

/// The directory (`halyard-manager directory`, oVirt's ovirt-aaa-jdbc-tool): written
/// while the Manager runs; users and groups are added to the API from it only, once;
/// a directory user logs in only while it holds SuperUser on the system.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_principals_and_who_may_log_in() {
    let m = ManagerProc::start(Database::Sqlite, "").await;
    let t = m.token().await;
    let api = |method: &'static str, path: String, body: String| {
        let t = &t;
        let m = &m;
        async move {
            let body: &'static str = Box::leak(body.into_boxed_str());
            m.api(t, method, &path, body).await
        }
    };
    let pw = m.dir.join("alice.pw");
    std::fs::write(&pw, "correct-horse\n").expect("pw");
    let short = m.dir.join("short.pw");
    std::fs::write(&short, "short\n").expect("pw");
    let pw_arg = pw.to_string_lossy().into_owned();
    let short_arg = short.to_string_lossy().into_owned();
    m.directory(&["profile", "add", "corp"], false);
    m.directory(
        &["user", "add", "alice@corp", "--password-file", &pw_arg],
        false,
    );
    m.directory(&["user", "add", "bob@internal"], false);
    m.directory(&["group", "add", "ops@corp"], false);
    m.directory(&["group", "add-member", "ops@corp", "alice@corp"], false);
    for (bad, why) in [
        (vec!["user", "add", "carol@nowhere"], "does not exist"),
        (vec!["user", "add", "alice@corp"], "exists"),
        (vec!["user", "add", "bad name@corp"], "not a valid name"),
        (vec!["user", "add", "carol"], "NAME@PROFILE"),
        (
            vec!["user", "add", "carol@corp", "--password-file", &short_arg],
            "at least 8",
        ),
        (
            vec!["user", "remove", "admin@internal"],
            "cannot be removed",
        ),
        (
            vec!["group", "add-member", "ops@corp", "zed@corp"],
            "does not exist",
        ),
    ] {
        let out = m.directory(&bad, true);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{bad:?}: {err}");
    }
    let out = m.directory(&["list"], false);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("user alice@corp (password set)")
            && list.contains("user bob@internal (no password)")
            && list.contains("group ops@corp members: alice@corp"),
        "{list}"
    );
    assert!(!list.contains("correct-horse"), "{list}");

    // The profile is a domain of the API.
    let (_, b) = api("GET", "/domains".into(), String::new()).await;
    assert_eq!(names(&b, "domain"), vec!["corp-authz", "internal-authz"]);
    let (c, b) = api(
        "POST",
        "/users".into(),
        "<user><user_name>alice@corp-authz</user_name><domain><name>corp-authz</name></domain></user>"
            .into(),
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let alice = doc(&b).id().expect("id").to_string();
    assert_eq!(doc(&b).text_of("principal"), Some("alice"), "{b}");
    assert_eq!(
        doc(&b).get("domain").and_then(Node::id),
        Some("636F72702D617574687A"),
        "{b}"
    );
    let (c, _) = api(
        "POST",
        "/users".into(),
        "<user><user_name>alice@corp-authz</user_name></user>".into(),
    )
    .await;
    assert_eq!(c, 409, "added once");
    let (c, b) = api(
        "POST",
        "/users".into(),
        "<user><user_name>eve@corp-authz</user_name></user>".into(),
    )
    .await;
    assert!(c == 404 && b.contains("not found in the directory"), "{b}");
    let (_, b) = api(
        "GET",
        "/users?search=usrname%3Dalice%40corp-authz".into(),
        String::new(),
    )
    .await;
    assert_eq!(doc(&b).all("user").count(), 1, "{b}");

    // The right password, but no SuperUser on the system: refused, and says why.
    let (c, b) = m.login("alice@corp", "correct-horse").await;
    assert!(c == 400 && b.contains("SuperUser"), "{b}");
    let (c, b) = m.login("alice@corp", "wrong-horse").await;
    assert!(c == 400 && b.contains("incorrect"), "{b}");
    let (c, b) = m.login("bob@internal", "").await;
    assert!(c == 400 && b.contains("incorrect"), "no password: {b}");

    // Groups come from the directory too; SuperUser through the group lets alice in.
    let (c, b) = api(
        "POST",
        "/groups".into(),
        "<group><name>nope</name><domain><name>corp-authz</name></domain></group>".into(),
    )
    .await;
    assert!(c == 404 && b.contains("not found in the directory"), "{b}");
    let (c, b) = api(
        "POST",
        "/groups".into(),
        "<group><name>ops</name><domain><name>corp-authz</name></domain></group>".into(),
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let ops = doc(&b).id().expect("id").to_string();
    let (c, b) = api(
        "POST",
        format!("/groups/{ops}/permissions"),
        "<permission><role><name>SuperUser</name></role></permission>".into(),
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let perm = doc(&b).id().expect("id").to_string();
    let (c, b) = m.login("alice@corp", "correct-horse").await;
    assert_eq!(c, 200, "{b}");
    // A SuperUser permission on one object is not enough.
    assert_eq!(
        api("DELETE", format!("/permissions/{perm}"), String::new())
            .await
            .0,
        200
    );
    let (_, b) = api("GET", "/datacenters".into(), String::new()).await;
    let dc = first_id(&b, "data_center", "dc");
    let (c, b) = api(
        "POST",
        format!("/users/{alice}/permissions"),
        format!("<permission><role><name>SuperUser</name></role><data_center id=\"{dc}\"/></permission>"),
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let (c, b) = m.login("alice@corp", "correct-horse").await;
    assert!(c == 400 && b.contains("SuperUser"), "{b}");
    let (c, b) = api(
        "POST",
        format!("/users/{alice}/permissions"),
        "<permission><role><name>SuperUser</name></role></permission>".into(),
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let (c, b) = m.login("alice@corp", "correct-horse").await;
    assert_eq!(c, 200, "{b}");
    // A permission on a network (oVirt's model has no member for it: Halyard shows one).
    let (_, b) = api(
        "GET",
        "/networks?search=name%3Dovirtmgmt".into(),
        String::new(),
    )
    .await;
    let net = first_id(&b, "network", "ovirtmgmt");
    let (c, b) = api(
        "POST",
        format!("/networks/{net}/permissions"),
        format!(
            "<permission><role><name>GlusterAdmin</name></role><user id=\"{alice}\"/></permission>"
        ),
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let (_, b) = api("GET", format!("/networks/{net}/permissions"), String::new()).await;
    assert_eq!(doc(&b).all("permission").count(), 1, "{b}");
    let (c, b) = api(
        "POST",
        "/permissions".into(),
        format!("<permission><role><name>GlusterAdmin</name></role><user id=\"{alice}\"/><network id=\"{net}\"/></permission>"),
    )
    .await;
    assert_eq!(c, 400, "not settable: {b}");
    // Out of the directory: no more logins.
    m.directory(&["user", "remove", "alice@corp"], false);
    let (c, b) = m.login("alice@corp", "correct-horse").await;
    assert!(c == 400 && b.contains("incorrect"), "{b}");
}
