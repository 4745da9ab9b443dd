//! The Manager's trust model, tried as an attacker on loopback would: registrations
//! that claim what they are not, host takeover by re-registration, certificates for the
//! Manager's own names, secrets in logs and files, login guessing, logout, idle
//! connections, huge documents, lost updates.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use halyard_manager::api::node::Node;
use halyard_testinfra::manager::{workspace_bin, Database, ManagerProc};
use halyard_testinfra::{HostOptions, TestHost};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn key() -> String {
    halyard_pki::new_key_pem().expect("key")
}

/// `command=register` from `from`, claiming `name`/`address`/`port`, with `key`.
/// What a registration claims, and where it comes from.
struct Claim<'a> {
    from: &'a str,
    name: &'a str,
    address: &'a str,
    port: u16,
    uid: &'a str,
}

fn claim<'a>(from: &'a str, name: &'a str, address: &'a str, port: u16, uid: &'a str) -> Claim<'a> {
    Claim {
        from,
        name,
        address,
        port,
        uid,
    }
}

async fn register(
    m: &ManagerProc,
    c: Claim<'_>,
    key: &str,
    join_token: Option<&str>,
) -> (u16, String) {
    let Claim {
        from,
        name,
        address,
        port,
        uid,
    } = c;
    let csr = halyard_pki::make_csr_for_key(&[address.to_string()], key).expect("csr");
    let url = format!(
        "{}/ovirt-engine/services/host-register?command=register&name={name}&address={address}&port={port}&uniqueId={uid}",
        m.url()
    );
    let mut headers = vec![("Content-Type", "application/x-pem-file")];
    if let Some(t) = join_token {
        headers.push(("Halyard-Join-Token", t));
    }
    let r = halyard_client::http::request_from(
        Some(ip(from)),
        m.tls(),
        "POST",
        &url,
        &headers,
        csr.as_bytes(),
    )
    .await
    .expect("register request");
    (r.status, r.text())
}

async fn get_certificate(m: &ManagerProc, uid: &str) -> (u16, String) {
    let r = halyard_client::http::request(
        m.tls(),
        "GET",
        &format!(
            "{}/ovirt-engine/services/host-register?command=get-certificate&uniqueId={uid}",
            m.url()
        ),
        &[],
        b"",
    )
    .await
    .expect("get-certificate");
    (r.status, r.text())
}

async fn host_node(m: &ManagerProc, t: &str, name: &str) -> Node {
    let (code, b) = m
        .api(t, "GET", &format!("/hosts?search=name%3D{name}"), "")
        .await;
    assert_eq!(code, 200, "{b}");
    Node::parse_xml(b.as_bytes())
        .expect("xml")
        .get("host")
        .cloned()
        .unwrap_or_else(|| panic!("no host {name}: {b}"))
}

async fn events(m: &ManagerProc, t: &str) -> String {
    m.api(t, "GET", "/events?max=200", "").await.1
}

/// Auto-approval follows the connection, never the claim; a known host cannot be taken
/// over by registering again; a pending host's key cannot be swapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_decided_on_the_peer_and_cannot_take_over_a_host() {
    let m = ManagerProc::start(Database::Sqlite, "auto_approve = [\"127.0.0.1\"]").await;
    let t = m.token().await;

    // An unapproved peer claiming the approved address: pending, no certificate.
    let (code, b) = register(
        &m,
        claim("127.0.0.2", "evil1", "127.0.0.1", 54321, "u-evil1"),
        &key(),
        None,
    )
    .await;
    assert_eq!(code, 200, "{b}");
    assert_eq!(get_certificate(&m, "u-evil1").await.0, 409);
    let h = host_node(&m, &t, "evil1").await;
    assert_eq!(h.text_of("status"), Some("pending_approval"));
    assert_eq!(h.text_of("registered_from"), Some("127.0.0.2"));
    assert!(h
        .text_of("key_fingerprint")
        .is_some_and(|f| f.starts_with("SHA256:")));
    // An approved peer asking to be reached elsewhere: pending too.
    let (code, _) = register(
        &m,
        claim("127.0.0.1", "evil2", "10.9.9.9", 54321, "u-evil2"),
        &key(),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(get_certificate(&m, "u-evil2").await.0, 409);

    // A host registering from its own approved address is approved: a server-only
    // certificate with the host role, for its address only.
    let good_key = key();
    let (code, b) = register(
        &m,
        claim("127.0.0.1", "good", "127.0.0.1", 1, "u-good"),
        &good_key,
        None,
    )
    .await;
    assert_eq!(code, 200, "{b}");
    let (code, cert) = get_certificate(&m, "u-good").await;
    assert_eq!(code, 200, "{cert}");
    assert!(halyard_pki::cert_matches_key(&cert, &good_key));
    assert_eq!(
        halyard_pki::role_of_pem(&cert),
        Some(halyard_pki::Role::Host)
    );
    assert_eq!(halyard_pki::cert_names(&cert), vec!["127.0.0.1"]);
    // The same agent asking again (restarted): nothing changes, same certificate.
    let (code, _) = register(
        &m,
        claim("127.0.0.1", "good", "127.0.0.1", 1, "u-good"),
        &good_key,
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(get_certificate(&m, "u-good").await.1, cert);

    // Takeover attempt: the known uniqueId, a new address, port and key.
    let evil_key = key();
    let (code, b) = register(
        &m,
        claim("127.0.0.2", "good", "127.0.0.3", 2, "u-good"),
        &evil_key,
        None,
    )
    .await;
    assert_eq!(code, 200, "{b}");
    let h = host_node(&m, &t, "good").await;
    assert_eq!(h.text_of("address"), Some("127.0.0.1"), "address unchanged");
    assert_eq!(h.text_of("port"), Some("1"), "port unchanged");
    let pending = h.get("pending_registration").expect("the change is shown");
    assert_eq!(pending.text_of("address"), Some("127.0.0.3"));
    assert_eq!(
        pending.text_of("key_fingerprint").map(str::to_string),
        halyard_pki::private_key_fingerprint(&evil_key)
    );
    assert_eq!(
        h.text_of("key_fingerprint").map(str::to_string),
        halyard_pki::private_key_fingerprint(&good_key),
        "the approved key stays"
    );
    assert_eq!(
        get_certificate(&m, "u-good").await.0,
        409,
        "no certificate for the new key"
    );
    let ev = events(&m, &t).await;
    assert!(ev.contains("registered again from 127.0.0.2"), "{ev}");
    // The admin approves it: now it applies.
    let id = h.id().expect("id").to_string();
    let (code, b) = m
        .api(&t, "POST", &format!("/hosts/{id}/approve"), "<action/>")
        .await;
    assert_eq!(code, 200, "{b}");
    let h = host_node(&m, &t, "good").await;
    assert_eq!(h.text_of("address"), Some("127.0.0.3"));
    assert!(h.get("pending_registration").is_none());
    let (code, cert) = get_certificate(&m, "u-good").await;
    assert_eq!(code, 200);
    assert!(halyard_pki::cert_matches_key(&cert, &evil_key));

    // A pending host's key cannot be swapped before the admin approves.
    let first = key();
    let (code, _) = register(
        &m,
        claim("127.0.0.2", "p1", "10.0.0.7", 54321, "u-p1"),
        &first,
        None,
    )
    .await;
    assert_eq!(code, 200);
    let (code, b) = register(
        &m,
        claim("127.0.0.2", "p1", "10.0.0.7", 54321, "u-p1"),
        &key(),
        None,
    )
    .await;
    assert_eq!(code, 409, "{b}");
    let h = host_node(&m, &t, "p1").await;
    assert_eq!(
        h.text_of("key_fingerprint").map(str::to_string),
        halyard_pki::private_key_fingerprint(&first)
    );
    assert!(events(&m, &t)
        .await
        .contains("registered again from 127.0.0.2 with a different key"));
}

/// The CA signs no host certificate for the Manager's own names (its HTTPS
/// certificate names localhost here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_refuses_the_managers_names() {
    let m = ManagerProc::start(Database::Sqlite, "").await;
    let t = m.token().await;
    let (code, _) = register(
        &m,
        claim("127.0.0.2", "fake-manager", "localhost", 8443, "u-fm"),
        &key(),
        None,
    )
    .await;
    assert_eq!(code, 200);
    let id = host_node(&m, &t, "fake-manager")
        .await
        .id()
        .expect("id")
        .to_string();
    let (code, b) = m
        .api(&t, "POST", &format!("/hosts/{id}/approve"), "<action/>")
        .await;
    assert_eq!(code, 409, "{b}");
    assert!(b.contains("the Manager's own names"), "{b}");
    assert_eq!(get_certificate(&m, "u-fm").await.0, 409);
    // Nor through POST /hosts.
    let (code, b) = m
        .api(
            &t,
            "POST",
            "/hosts",
            "<host><name>fm2</name><address>LOCALHOST</address><root_password>tokentoken</root_password><cluster><name>Default</name></cluster></host>",
        )
        .await;
    assert!(code == 400 || code == 409, "{code} {b}");
    assert!(b.contains("own names"), "{b}");
}

/// Registrations that would wait for an admin are rate-limited per source and capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_registrations_are_rate_limited_and_capped() {
    let m = ManagerProc::start(
        Database::Sqlite,
        "max_pending_hosts = 5\npending_registrations_per_minute = 3",
    )
    .await;
    let pend = |from: &'static str, i: u32| {
        let m = &m;
        async move {
            let (name, uid) = (format!("r{i}"), format!("u-r{i}"));
            register(m, claim(from, &name, "10.0.0.1", 1, &uid), &key(), None).await
        }
    };
    for i in 0..3 {
        let (code, b) = pend("127.0.0.2", i).await;
        assert_eq!(code, 200, "{b}");
    }
    let (code, b) = pend("127.0.0.2", 3).await;
    assert_eq!(code, 429, "per source: {b}");
    for i in 4..6 {
        let (code, b) = pend("127.0.0.4", i).await;
        assert_eq!(code, 200, "{b}");
    }
    let (code, b) = pend("127.0.0.5", 6).await;
    assert_eq!(code, 429, "in all: {b}");
    assert!(b.contains("wait for approval"), "{b}");
}

/// A one-time join token approves a registration from anywhere, once, for its host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_approve_once_and_cannot_be_guessed() {
    let m = ManagerProc::start(Database::Sqlite, "").await;
    let t = m.token().await;
    let (code, b) = m
        .api(
            &t,
            "POST",
            "/jointokens",
            "<join_token><host_name>j1</host_name><cluster><name>Default</name></cluster><expires_in>600</expires_in></join_token>",
        )
        .await;
    assert_eq!(code, 201, "{b}");
    let n = Node::parse_xml(b.as_bytes()).expect("xml");
    let secret = n.text_of("token").expect("the secret, once").to_string();
    let (_, list) = m.api(&t, "GET", "/jointokens", "").await;
    assert!(
        list.contains(n.id().expect("id")) && !list.contains(&secret),
        "{list}"
    );
    // For j1 only.
    let (code, _) = register(
        &m,
        claim("127.0.0.2", "j2", "10.1.1.2", 1, "u-j2"),
        &key(),
        Some(&secret),
    )
    .await;
    assert_eq!(code, 409);
    let k = key();
    let (code, b) = register(
        &m,
        claim("127.0.0.2", "j1", "10.1.1.1", 1, "u-j1"),
        &k,
        Some(&secret),
    )
    .await;
    assert_eq!(code, 200, "{b}");
    let (code, cert) = get_certificate(&m, "u-j1").await;
    assert_eq!(code, 200, "approved by the token: {cert}");
    assert!(halyard_pki::cert_matches_key(&cert, &k));
    // Once.
    let (code, _) = register(
        &m,
        claim("127.0.0.2", "j1", "10.1.1.1", 1, "u-j1b"),
        &key(),
        Some(&secret),
    )
    .await;
    assert_eq!(code, 409);
    // Guessing: a few tries, then every try from that source waits.
    let mut last = 0;
    for i in 0..8 {
        last = register(
            &m,
            claim(
                "127.0.0.6",
                &format!("g{i}"),
                "10.1.1.9",
                1,
                &format!("u-g{i}"),
            ),
            &key(),
            Some("guess"),
        )
        .await
        .0;
    }
    assert_eq!(last, 429, "guesses are throttled");
}

/// No log holds the admin password; every file of the data directory is the
/// Manager's only; the engine certificate is not the CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_not_logged_and_files_are_private() {
    let m = ManagerProc::start(Database::Sqlite, "").await;
    let _ = m.token().await;
    let log = m.log();
    assert!(!m.password.is_empty());
    assert!(!log.contains(&m.password), "the password is in the log");
    let data = m.dir.join("data");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for f in walk(&data) {
        let want = if f.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&f), want, "{}", f.display());
    }
    assert!(data.join("manager.db").exists());
    let get = |r: &'static str| {
        let m = &m;
        async move {
            halyard_client::http::request(
                m.tls(),
                "GET",
                &format!(
                    "{}/ovirt-engine/services/pki-resource?resource={r}&format=X509-PEM-CA",
                    m.url()
                ),
                &[],
                b"",
            )
            .await
            .expect("pki-resource")
            .text()
        }
    };
    let ca = get("ca-certificate").await;
    let engine = get("engine-certificate").await;
    assert_eq!(
        ca,
        std::fs::read_to_string(data.join("pki/ca.pem")).expect("ca")
    );
    assert_eq!(
        engine,
        std::fs::read_to_string(data.join("pki/engine.pem")).expect("engine")
    );
    assert_ne!(ca, engine);
}

fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

async fn login(m: &ManagerProc, user: &str, password: &str) -> (u16, String, Option<String>) {
    let body = format!(
        "grant_type=password&scope=ovirt-app-api&username={}&password={}",
        halyard_common::text::percent_encode(user),
        halyard_common::text::percent_encode(password)
    );
    let r = halyard_client::http::request(
        m.tls(),
        "POST",
        &format!("{}/ovirt-engine/sso/oauth/token", m.url()),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
    .await
    .expect("token request");
    (
        r.status,
        r.text(),
        r.header("retry-after").map(str::to_string),
    )
}

/// Failed logins are throttled per user with a doubling wait; a huge user name costs
/// a bounded log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_throttled_and_bounded_in_the_log() {
    let m = ManagerProc::start(Database::Sqlite, "login_free_failures = 3").await;
    for _ in 0..4 {
        let (code, b, _) = login(&m, "admin@internal", "wrong").await;
        assert_eq!(code, 400, "{b}");
    }
    let (code, b, retry) = login(&m, "admin@internal", "wrong").await;
    assert_eq!(code, 429, "{b}");
    assert!(retry.is_some());
    // The right password waits too (the guesser cannot tell it was right).
    let (code, _, retry) = login(&m, "admin@internal", &m.password).await;
    assert_eq!(code, 429);
    let secs: u64 = retry.and_then(|r| r.parse().ok()).expect("retry-after");
    tokio::time::sleep(Duration::from_secs(secs + 1)).await;
    let (code, b, _) = login(&m, "admin@internal", &m.password).await;
    assert_eq!(code, 200, "{b}");
    // A 512 KiB user name.
    let huge = "x".repeat(512 * 1024);
    let (code, _, _) = login(&m, &huge, "p").await;
    assert_eq!(code, 400);
    let log = m.log();
    assert!(
        !log.contains(&"x".repeat(100)),
        "a failed login logs at most 64 characters of its user"
    );
    assert!(log.lines().all(|l| l.len() < 4096));
}

/// sso-logout revokes the token however it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_token_however_it_is_sent() {
    let m = ManagerProc::start(Database::Sqlite, "").await;
    for how in ["query", "form", "bearer"] {
        let t = m.token().await;
        assert_eq!(m.api(&t, "GET", "", "").await.0, 200);
        let base = format!("{}/ovirt-engine/services/sso-logout", m.url());
        let auth = format!("Bearer {t}");
        let form = format!("token={t}");
        let (method, url, headers, body): (&str, String, Vec<(&str, &str)>, &[u8]) = match how {
            "query" => ("GET", format!("{base}?scope=&token={t}"), vec![], b""),
            "form" => (
                "POST",
                base.clone(),
                vec![("Content-Type", "application/x-www-form-urlencoded")],
                form.as_bytes(),
            ),
            _ => (
                "POST",
                base.clone(),
                vec![("Authorization", auth.as_str())],
                b"",
            ),
        };
        let r = halyard_client::http::request(m.tls(), method, &url, &headers, body)
            .await
            .expect("logout");
        assert_eq!(r.status, 200);
        assert_eq!(m.api(&t, "GET", "", "").await.0, 401, "revoked by {how}");
    }
}

/// 1,000 connections that never speak leave an API call answered within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_stall_the_api() {
    halyard_common::net::raise_nofile_limit();
    let m = ManagerProc::start(Database::Sqlite, "").await;
    let t = m.token().await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", m.port))
                .await
                .expect("tcp"),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let (code, b) = m.api(&t, "GET", "/hosts", "").await;
    let took = t0.elapsed();
    eprintln!("GET /hosts with 1,000 idle connections open: {took:?}");
    assert_eq!(code, 200, "{b}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    drop(idle);
}

/// An element with 60,000 attributes is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_attribute_list_is_refused_quickly() {
    let m = ManagerProc::start(Database::Sqlite, "").await;
    let t = m.token().await;
    let attrs: String = (0..60_000).map(|i| format!(" a{i}=\"\"")).collect();
    let body = format!("<vm{attrs}><name>a</name></vm>");
    let t0 = Instant::now();
    let (code, b) = m.api(&t, "POST", "/vms", &body).await;
    let took = t0.elapsed();
    eprintln!(
        "POST /vms with 60,000 attributes ({} bytes) refused in {took:?}",
        body.len()
    );
    assert_eq!(code, 400, "{b}");
    assert!(b.contains("more than 64 attributes"), "{b}");
    assert!(took < Duration::from_millis(50), "{took:?}");
}

/// A token lifetime the Manager cannot represent is refused at start, with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_token_lifetime_is_refused_at_start() {
    let d = tempfile::tempdir().expect("tmp");
    let cfg = d.path().join("m.toml");
    std::fs::write(
        &cfg,
        format!(
            "address = \"127.0.0.1\"\nport = 0\ndata_dir = \"{}\"\ntoken_lifetime_secs = 18446744073709551615\n",
            d.path().join("data").display()
        ),
    )
    .expect("config");
    let out = std::process::Command::new(workspace_bin("halyard-manager", "halyard-manager"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("token_lifetime_secs"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A certificate renewal and a PUT of the same host at the same time: the PUT is never
/// lost (the renewal changes only the certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_racing_put_loses_no_update() {
    let m = ManagerProc::start(Database::Sqlite, "auto_approve = [\"127.0.0.1\"]").await;
    let name = format!("race{}", std::process::id());
    let mut o = HostOptions::new(workspace_bin("halyard-hostd", "halyard-hostd"));
    o.manager_url = Some(m.url());
    o.host_name = name.clone();
    let _host = TestHost::start(o).await;
    let t = m.token().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let (_, b) = m
            .api(&t, "GET", &format!("/hosts?search=name%3D{name}"), "")
            .await;
        let h = Node::parse_xml(b.as_bytes())
            .ok()
            .and_then(|n| n.get("host").cloned());
        if let Some(h) = h.filter(|h| h.text_of("status") == Some("up")) {
            break h.id().expect("id").to_string();
        }
        assert!(Instant::now() < deadline, "host not up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut lost = 0;
    for round in 0..100 {
        let prio = round % 11 - 1;
        let renew_path = format!("/hosts/{id}/enrollcertificate");
        let put_path = format!("/hosts/{id}");
        let put_body = format!("<host><spm><priority>{prio}</priority></spm></host>");
        let renew = m.api(&t, "POST", &renew_path, "<action/>");
        let put = m.api(&t, "PUT", &put_path, &put_body);
        let ((rc, rb), (pc, pb)) = tokio::join!(renew, put);
        assert_eq!(rc, 200, "renewal: {rb}");
        assert_eq!(pc, 200, "PUT: {pb}");
        let h = host_node(&m, &t, &name).await;
        let got = h
            .get("spm")
            .and_then(|s| s.text_of("priority"))
            .and_then(|p| p.parse::<i64>().ok());
        if got != Some(prio) {
            lost += 1;
        }
    }
    eprintln!("100 renewals racing a PUT: {lost} updates lost");
    assert_eq!(lost, 0);
}
