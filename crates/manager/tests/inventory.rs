//! Tags (a tree, assigned to VMs and hosts, searched by), external events, updating
//! and removing data centers, clusters and networks, operating systems by id.

use halyard_manager::api::node::Node;
use halyard_testinfra::manager::{Database, ManagerProc};

fn doc(b: &str) -> Node {
    Node::parse_xml(b.as_bytes()).unwrap_or_else(|e| panic!("{e}: {b}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_events_and_containers() {
    let m = ManagerProc::start(Database::Sqlite, "").await;
    let t = m.token().await;
    let api = |method: &'static str, path: String, body: &'static str| {
        let (m, t) = (&m, &t);
        async move { m.api(t, method, &path, body).await }
    };
    // Tags: a parent and a child; names unique.
    let (c, b) = api(
        "POST",
        "/tags".into(),
        "<tag><name>prod</name><description>production</description></tag>",
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let prod = doc(&b).id().expect("id").to_string();
    let (c, b) = api(
        "POST",
        "/tags".into(),
        "<tag><name>web</name><parent><name>prod</name></parent></tag>",
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let web = doc(&b).id().expect("id").to_string();
    assert_eq!(
        doc(&b).get("parent").and_then(Node::id),
        Some(prod.as_str())
    );
    assert_eq!(
        api("POST", "/tags".into(), "<tag><name>prod</name></tag>")
            .await
            .0,
        409
    );
    let (_, b) = api("GET", "/tags".into(), "").await;
    let names: Vec<_> = doc(&b)
        .all("tag")
        .filter_map(|x| x.text_of("name").map(str::to_string))
        .collect();
    assert!(names.contains(&"web".to_string()) && names.contains(&"root".to_string()));
    // Assigned to a VM, found by tag=.
    let (c, b) = api("POST", "/vms".into(), "<vm><name>tagged</name><cluster><name>Default</name></cluster><template><name>Blank</name></template></vm>").await;
    assert_eq!(c, 201, "{b}");
    let vm = doc(&b).id().expect("id").to_string();
    api("POST", "/vms".into(), "<vm><name>plain</name><cluster><name>Default</name></cluster><template><name>Blank</name></template></vm>").await;
    let (c, b) = api(
        "POST",
        format!("/vms/{vm}/tags"),
        Box::leak(format!("<tag id=\"{web}\"/>").into_boxed_str()),
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let (_, b) = api("GET", format!("/vms/{vm}/tags"), "").await;
    assert_eq!(doc(&b).all("tag").count(), 1, "{b}");
    let (_, b) = api("GET", "/vms?search=tag%3Dweb".into(), "").await;
    let found: Vec<_> = doc(&b)
        .all("vm")
        .filter_map(|v| v.text_of("name").map(str::to_string))
        .collect();
    assert_eq!(found, vec!["tagged"]);
    // Removing the parent removes the child and its assignment.
    assert_eq!(api("DELETE", format!("/tags/{prod}"), "").await.0, 200);
    let (_, b) = api("GET", format!("/vms/{vm}/tags"), "").await;
    assert_eq!(doc(&b).all("tag").count(), 0, "{b}");
    assert_eq!(api("GET", format!("/tags/{web}"), "").await.0, 404);

    // External events.
    let (c, b) = api("POST", "/events".into(), "<event><description>backup done</description><severity>warning</severity><origin>mybackup</origin><custom_id>42</custom_id></event>").await;
    assert_eq!(c, 201, "{b}");
    let e = doc(&b);
    assert_eq!(e.text_of("code"), Some("12001"));
    assert_eq!(e.text_of("origin"), Some("mybackup"));
    assert_eq!(e.text_of("custom_id"), Some("42"));
    assert_eq!(
        api(
            "POST",
            "/events".into(),
            "<event><description>x</description></event>"
        )
        .await
        .0,
        400
    );

    // Data centers, clusters, networks: update, and removal refused while in use.
    let (_, b) = api("GET", "/datacenters".into(), "").await;
    let dc = doc(&b)
        .get("data_center")
        .and_then(Node::id)
        .expect("dc")
        .to_string();
    let (c, b) = api(
        "PUT",
        format!("/datacenters/{dc}"),
        "<data_center><description>main</description></data_center>",
    )
    .await;
    assert_eq!(c, 200, "{b}");
    assert_eq!(doc(&b).text_of("description"), Some("main"));
    assert_eq!(
        api("DELETE", format!("/datacenters/{dc}"), "").await.0,
        409,
        "it has clusters"
    );
    let (c, b) = api(
        "POST",
        "/datacenters".into(),
        "<data_center><name>spare</name></data_center>",
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let spare = doc(&b).id().expect("id").to_string();
    let (c, b) = api(
        "POST",
        "/clusters".into(),
        Box::leak(
            format!("<cluster><name>c2</name><data_center id=\"{spare}\"/></cluster>")
                .into_boxed_str(),
        ),
    )
    .await;
    assert_eq!(c, 201, "{b}");
    let c2 = doc(&b).id().expect("id").to_string();
    let (c, b) = api(
        "PUT",
        format!("/clusters/{c2}"),
        "<cluster><name>c2b</name></cluster>",
    )
    .await;
    assert_eq!(c, 200, "{b}");
    let (c, b) = api("POST", "/networks".into(), Box::leak(format!("<network><name>storage</name><mtu>9000</mtu><data_center id=\"{spare}\"/></network>").into_boxed_str())).await;
    assert_eq!(c, 201, "{b}");
    let net = doc(&b).id().expect("id").to_string();
    assert_eq!(
        api(
            "PUT",
            format!("/networks/{net}"),
            "<network><mtu>1500</mtu></network>"
        )
        .await
        .0,
        200
    );
    assert_eq!(api("DELETE", format!("/networks/{net}"), "").await.0, 200);
    assert_eq!(api("DELETE", format!("/clusters/{c2}"), "").await.0, 200);
    assert_eq!(
        api("DELETE", format!("/datacenters/{spare}"), "").await.0,
        200
    );
    assert_eq!(api("GET", format!("/datacenters/{spare}"), "").await.0, 404);
    let (c, b) = api("GET", "/operatingsystems/1".into(), "").await;
    assert_eq!(c, 200, "{b}");
    assert_eq!(doc(&b).text_of("name"), Some("other_linux"));
}
