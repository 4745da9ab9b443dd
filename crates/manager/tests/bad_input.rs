//! Bad input to the Manager's API: each gets a clear fault (XML, never HTML), nothing is
//! changed, and the Manager keeps serving.

use std::time::Duration;

use halyard_manager::api::node::Node;
use halyard_testinfra::manager::{Database, ManagerProc};

fn fault_detail(body: &str) -> String {
    Node::parse_xml(body.as_bytes())
        .ok()
        .filter(|n| n.name == "fault")
        .and_then(|n| n.text_of("detail").map(str::to_string))
        .unwrap_or_else(|| panic!("not an XML fault: {body}"))
}

async fn vm_names(m: &ManagerProc, t: &str) -> Vec<String> {
    let (code, body) = m.api(t, "GET", "/vms", "").await;
    assert_eq!(code, 200, "{body}");
    let n = Node::parse_xml(body.as_bytes()).expect("xml");
    n.all("vm")
        .filter_map(|v| v.text_of("name").map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_faults_and_change_nothing() {
    let m = ManagerProc::start(Database::Sqlite, "max_body_bytes = 65536").await;
    let t = m.token().await;
    let cluster = "<cluster><name>Default</name></cluster>";

    // A good VM to compare against.
    let (code, body) = m
        .api(
            &t,
            "POST",
            "/vms",
            &format!("<vm><name>keep</name>{cluster}<template><name>Blank</name></template></vm>"),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let before = vm_names(&m, &t).await;

    let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><vm><name>&lol3;</name><cluster><name>Default</name></cluster></vm>"#;
    let huge = format!(
        "<vm><name>big</name><description>{}</description>{cluster}</vm>",
        "x".repeat(200_000)
    );
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("billion laughs", "/vms", laughs.to_string(), 400, "DOCTYPE"),
        ("body over the limit", "/vms", huge, 413, "exceeds"),
        (
            "malformed XML",
            "/vms",
            "<vm><name>x</vm>".into(),
            400,
            "malformed",
        ),
        (
            "not XML at all",
            "/vms",
            "{ hello".into(),
            400,
            "syntactically incorrect",
        ),
        (
            "unknown element",
            "/vms",
            format!("<vm><name>u</name><bogus_field>1</bogus_field>{cluster}</vm>"),
            400,
            "bogus_field",
        ),
        (
            "wrong root",
            "/vms",
            "<host><name>x</name></host>".into(),
            400,
            "expected a <vm>",
        ),
        (
            "negative memory",
            "/vms",
            format!("<vm><name>n</name><memory>-5</memory>{cluster}</vm>"),
            400,
            "memory",
        ),
        (
            "absurd memory",
            "/vms",
            format!("<vm><name>n</name><memory>99999999999999999999</memory>{cluster}</vm>"),
            400,
            "memory",
        ),
        (
            "kernel path with ..",
            "/vms",
            format!(
                "<vm><name>k</name><os><kernel>/boot/../etc/shadow</kernel></os>{cluster}</vm>"
            ),
            400,
            "kernel",
        ),
        (
            "duplicate name",
            "/vms",
            format!("<vm><name>keep</name>{cluster}</vm>"),
            409,
            "already in use",
        ),
        (
            "unknown cluster",
            "/vms",
            "<vm><name>c</name><cluster id=\"11111111-2222-3333-4444-555555555555\"/></vm>".into(),
            404,
            "not found",
        ),
        (
            "control characters in a name",
            "/vms",
            format!("<vm><name>a&#7;b</name>{cluster}</vm>"),
            400,
            "name",
        ),
    ];
    for (what, path, body, want, needle) in cases {
        let (code, resp) = m.api(&t, "POST", path, &body).await;
        assert_eq!(code, want, "{what}: {resp}");
        let d = fault_detail(&resp);
        assert!(d.contains(needle), "{what}: {d}");
    }
    // Quotes and SQL-like text in names are just names.
    let odd = "x'; DROP TABLE objects; -- \"q\"";
    let esc = odd
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;");
    let (code, body) = m
        .api(
            &t,
            "POST",
            "/vms",
            &format!("<vm><name>{esc}</name>{cluster}</vm>"),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    // ... and in searches.
    let q = "name%3D%22x%27%3B+DROP+TABLE+objects%3B+--+*%22";
    let (code, body) = m.api(&t, "GET", &format!("/vms?search={q}"), "").await;
    assert_eq!(code, 200, "{body}");
    let n = Node::parse_xml(body.as_bytes()).expect("xml");
    assert_eq!(n.all("vm").count(), 1, "{body}");
    for bad in [
        "name%3D%27%3B+DROP+TABLE+objects%3B+--",
        "bogus%3D1",
        "name%3D%22open",
        "name%3Da+or",
        "name%3Da+sortby+bogus",
        "page+0",
    ] {
        let (code, body) = m.api(&t, "GET", &format!("/vms?search={bad}"), "").await;
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(fault_detail(&body).contains("invalid search"));
    }
    // Bad ids.
    for path in [
        "/vms/not-a-uuid",
        "/vms/11111111-2222-3333-4444-555555555555",
        "/vms/..%2F..%2Fetc",
        "/hosts/0",
        "/vms/11111111-2222-3333-4444-555555555555/nics",
        "/nothing/here",
    ] {
        let (code, body) = m.api(&t, "GET", path, "").await;
        assert_eq!(code, 404, "{path}: {body}");
        fault_detail(&body);
    }
    let (code, body) = m
        .api(
            &t,
            "POST",
            "/vms/11111111-2222-3333-4444-555555555555/start",
            "<action/>",
        )
        .await;
    assert_eq!(code, 404, "{body}");

    // Nothing changed but the one VM with the odd name.
    let mut after = vm_names(&m, &t).await;
    after.retain(|n| n != odd);
    assert_eq!(before, after);

    // Authentication: no token, a bad token, an expired one; all XML faults, 401.
    let (code, body) = m.api("", "GET", "/vms", "").await;
    assert_eq!(code, 401);
    assert!(body.contains("<fault>"), "{body}");
    let (code, _) = m.api("bogus", "GET", "/vms", "").await;
    assert_eq!(code, 401);
    // Unknown paths outside the API are XML faults too.
    let r = halyard_client::http::request(
        m.tls(),
        "GET",
        &format!("{}/ovirt-engine/nope", m.url()),
        &[],
        b"",
    )
    .await
    .expect("request");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("<fault>"));

    // Still serving.
    assert_eq!(m.api(&t, "GET", "", "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_refused() {
    let m = ManagerProc::start(Database::Sqlite, "token_lifetime_secs = 1").await;
    let t = m.token().await;
    assert_eq!(m.api(&t, "GET", "", "").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, body) = m.api(&t, "GET", "", "").await;
    assert_eq!(code, 401, "{body}");
    assert!(body.starts_with("<?xml"), "{body}");
    // Logout revokes.
    let t = m.token().await;
    let r = halyard_client::http::request(
        m.tls(),
        "POST",
        &format!("{}/ovirt-engine/services/sso-logout", m.url()),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("scope=ovirt-app-api&token={t}").as_bytes(),
    )
    .await
    .expect("logout");
    assert_eq!(r.status, 200);
    assert_eq!(m.api(&t, "GET", "", "").await.0, 401);
    // The CA is served where clients look for it.
    let r = halyard_client::http::request(
        m.tls(),
        "GET",
        &format!(
            "{}/ovirt-engine/services/pki-resource?resource=ca-certificate&format=X509-PEM-CA",
            m.url()
        ),
        &[],
        b"",
    )
    .await
    .expect("ca");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("BEGIN CERTIFICATE"));
}
