//! oVirt's search language through the API: `or`, comparisons, cross-object fields,
//! `sortby`, `page`, `case_sensitive`, and Blank in every data center (what Ansible's
//! `ovirt_vm` asks: `name=Blank and datacenter=Default`).

use halyard_manager::api::node::Node;
use halyard_testinfra::manager::{Database, ManagerProc};

fn names(body: &str, item: &str) -> Vec<String> {
    Node::parse_xml(body.as_bytes())
        .unwrap_or_else(|e| panic!("{e}: {body}"))
        .all(item)
        .filter_map(|v| v.text_of("name").map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_language_through_the_api() {
    let m = ManagerProc::start(Database::Sqlite, "").await;
    let t = m.token().await;
    for (name, mib) in [("alpha1", 512u64), ("Alpha2", 1024), ("beta1", 2048)] {
        let (code, b) = m
            .api(
                &t,
                "POST",
                "/vms",
                &format!("<vm><name>{name}</name><memory>{}</memory><cluster><name>Default</name></cluster><template><name>Blank</name></template></vm>", mib << 20),
            )
            .await;
        assert_eq!(code, 201, "{b}");
    }
    let q = |s: &str| {
        s.replace(' ', "+")
            .replace('=', "%3D")
            .replace('"', "%22")
            .replace('<', "%3C")
            .replace('>', "%3E")
    };
    let vms = |search: &'static str, extra: &'static str| {
        let (m, t) = (&m, &t);
        async move {
            let (code, b) = m
                .api(t, "GET", &format!("/vms?search={}{extra}", q(search)), "")
                .await;
            assert_eq!(code, 200, "{search}: {b}");
            names(&b, "vm")
        }
    };
    assert_eq!(vms("name=alpha*", "").await, vec!["alpha1"]);
    assert_eq!(
        vms("name=alpha* sortby name", "&case_sensitive=false").await,
        vec!["alpha1", "Alpha2"]
    );
    assert_eq!(
        vms("name=beta1 or name=alpha1 sortby name desc", "").await,
        vec!["beta1", "alpha1"]
    );
    assert_eq!(
        vms("memory >= 1024 sortby memory", "").await,
        vec!["Alpha2", "beta1"]
    );
    assert_eq!(
        vms(
            "Clusters.name=Default and status=down sortby name page 2",
            "&max=2"
        )
        .await,
        vec!["beta1"]
    );
    assert_eq!(
        vms("datacenter=Default and name!=beta1 sortby name", "").await,
        vec!["Alpha2", "alpha1"]
    );
    assert!(vms("datacenter=Nowhere", "").await.is_empty());
    // Blank is in every data center.
    let (code, b) = m
        .api(
            &t,
            "GET",
            &format!(
                "/templates?search={}",
                q("name=Blank and datacenter=Default")
            ),
            "",
        )
        .await;
    assert_eq!(code, 200, "{b}");
    assert_eq!(names(&b, "template"), vec!["Blank"]);
    // Hosts by their VMs' fields are known fields; unknown ones are refused by name.
    let (code, b) = m
        .api(
            &t,
            "GET",
            &format!("/hosts?search={}", q("Vms.status=up")),
            "",
        )
        .await;
    assert_eq!(code, 200, "{b}");
    let (code, b) = m
        .api(&t, "GET", &format!("/vms?search={}", q("Vms.bogus=1")), "")
        .await;
    assert_eq!(code, 400, "{b}");
    assert!(b.contains("Vms.bogus"), "{b}");
}
