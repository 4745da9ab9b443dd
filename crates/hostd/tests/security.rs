//! The agent's trust model, tried as an attacker would: who may command a host, what a
//! VM definition may make the host do, what idle sockets and huge documents cost, and
//! what a crash in the middle of replacing the identity leaves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use halyard_client::{Client, ClientError};
use halyard_testinfra::{HostOptions, TestHost};
use serde_json::json;

fn opts() -> HostOptions {
    HostOptions::new(env!("CARGO_BIN_EXE_halyard-hostd"))
}

fn ca_of(host: &TestHost) -> halyard_pki::Ca {
    halyard_pki::Ca::load(&host.pki.hostd.ca, &host.dir.join("pki/ca.key")).expect("the test CA")
}

/// A certificate of the host's CA with the extended key usages and role asked for
/// (what the CA no longer issues, or a future host-to-host client certificate).
fn custom_client(
    host: &TestHost,
    server_auth: bool,
    role: Option<halyard_pki::Role>,
) -> Arc<rustls::ClientConfig> {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    let ca_pem = std::fs::read_to_string(&host.pki.hostd.ca).expect("ca");
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(host.dir.join("pki/ca.key")).expect("key"))
            .expect("ca key");
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let mut p = CertificateParams::new(vec!["other-host".to_string()]).expect("params");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if server_auth {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if let Some(r) = role {
        p.subject_alt_names
            .push(SanType::URI(r.uri().try_into().expect("uri")));
    }
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &issuer).expect("signed");
    let dir = host.dir.join(format!("custom-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    halyard_pki::Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
    .save(&dir, "c")
    .expect("save");
    halyard_pki::client_config(&halyard_pki::TlsFiles {
        cert: dir.join("c.pem"),
        key: dir.join("c.key"),
        ca: host.pki.hostd.ca.clone(),
    })
    .expect("tls")
}

fn rpc_code(e: &ClientError) -> Option<i64> {
    match e {
        ClientError::Rpc(r) => Some(r.code),
        _ => None,
    }
}

fn minimal_xml(uuid: &str, name: &str, inject_os: &str, inject_devices: &str) -> String {
    format!(
        r#"<domain type="kvm" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"><name>{name}</name><uuid>{uuid}</uuid><memory unit="MiB">64</memory><vcpu>1</vcpu><os><type arch="x86_64">hvm</type>{inject_os}</os><devices><memballoon model="none"/>{inject_devices}</devices></domain>"#
    )
}

/// Only the Manager's certificate commands a host. Another host's (server-only) is
/// refused at the handshake; a client certificate of the CA without the Manager's role
/// (a host certificate as they were issued before roles, or a future host-to-host one)
/// gets an error for every verb, and the refusal reaches the Manager as an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_managers_certificate_commands_a_host() {
    let host = TestHost::start(opts()).await;
    let manager = host
        .client()
        .await
        .expect("the Manager's certificate connects");
    let mut events = manager.events();
    manager
        .call_value("Host.getVMList", json!({}))
        .await
        .expect("the Manager may list VMs");

    // A host certificate the CA issues now: a client too (for live migration), and
    // refused everything but the host-to-host verbs.
    let other_host = ca_of(&host)
        .issue(&["10.9.9.9".into()], halyard_pki::Usage::Host, 1)
        .expect("issue");
    let d = host.dir.join("other-host");
    std::fs::create_dir_all(&d).expect("dir");
    other_host.save(&d, "h").expect("save");
    let tls = halyard_pki::client_config(&halyard_pki::TlsFiles {
        cert: d.join("h.pem"),
        key: d.join("h.key"),
        ca: host.pki.hostd.ca.clone(),
    })
    .expect("tls");
    let c = Client::connect("127.0.0.1", host.port, tls)
        .await
        .expect("a host certificate connects");
    let e = c
        .call_value("Host.getVMList", json!({}))
        .await
        .expect_err("another host may not list VMs");
    assert_eq!(rpc_code(&e), Some(1401), "{e}");
    c.call_value("Host.ping2", json!({}))
        .await
        .expect("a host may ping another");
    c.close().await;

    let uuid = uuid::Uuid::new_v4().to_string();
    let xml = minimal_xml(&uuid, &host.domain_name("authz"), "", "");
    for (what, tls) in [
        (
            "host role with client auth",
            custom_client(&host, false, Some(halyard_pki::Role::Host)),
        ),
        (
            "no role (a host certificate from before roles)",
            custom_client(&host, true, None),
        ),
    ] {
        let c = Client::connect("127.0.0.1", host.port, tls.clone())
            .await
            .unwrap_or_else(|e| panic!("{what}: TLS is fine ({e})"));
        for (verb, params) in [
            ("Host.getVMList", json!({})),
            (
                "VM.create",
                json!({"vmID": uuid, "vmParams": {"vmId": uuid, "xml": xml}}),
            ),
            ("VM.destroy", json!({"vmID": uuid})),
            ("Host.getCertificateRequest", json!({})),
            // Power management and VM leases are the Manager's alone.
            (
                "Host.fenceNode",
                json!({"addr": "10.0.0.9", "port": "", "agent": "ipmilan", "username": "u",
                       "password": "p", "action": "off"}),
            ),
            (
                "Lease.create",
                json!({"lease": {"sd_id": uuid, "lease_id": uuid}}),
            ),
        ] {
            let e = c
                .call_value(verb, params)
                .await
                .expect_err(&format!("{what}: {verb} must be refused"));
            assert_eq!(rpc_code(&e), Some(1401), "{what}: {verb}: {e}");
            assert!(e.to_string().contains(verb), "{e}");
        }
        c.close().await;
        // The serial console channel on the same port: the Manager's only.
        let line = console_line(&host, tls, &format!("HALYARD-CONSOLE {uuid}\n")).await;
        assert!(line.starts_with("ERR 1401 "), "{what}: console: {line}");
    }
    let manager_tls = halyard_pki::client_config(&host.pki.client).expect("tls");
    let line = console_line(
        &host,
        manager_tls.clone(),
        &format!("HALYARD-CONSOLE {uuid}\n"),
    )
    .await;
    assert!(line.starts_with("ERR 1 "), "no such VM: {line}");
    let line = console_line(&host, manager_tls, "HALYARD-CONSOLE ../../dev/sda\n").await;
    assert!(line.starts_with("ERR 4 "), "a bad request: {line}");
    let out = host.virsh(&["dominfo", &uuid]);
    assert!(!out.status.success(), "no domain was created");
    // The Manager hears of it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut denied = 0;
    while Instant::now() < deadline && denied < 2 {
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
            if n.method == "|host|access_denied|" {
                assert!(n.params["what"].is_string(), "{:?}", n.params);
                denied += 1;
            }
        }
    }
    assert!(
        denied >= 2,
        "access_denied events reach the Manager's session"
    );
    // The Manager's session still works.
    manager
        .call_value("Host.ping2", json!({}))
        .await
        .expect("ping");
}

/// The answer line of the agent's console channel to `request`.
async fn console_line(host: &TestHost, tls: Arc<rustls::ClientConfig>, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = halyard_client::connect_tls("127.0.0.1", host.port, tls)
        .await
        .expect("TLS");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Every dangerous construct of a domain definition is refused with the element named,
/// no domain is created and nothing appears on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dangerous_vm_definitions_are_refused_and_nothing_appears() {
    let host = TestHost::start(opts()).await;
    let c = host.client().await.expect("client");
    let victim = tempfile::tempdir().expect("tmp");
    let v = victim.path().display().to_string();
    let listing = |d: &std::path::Path| -> Vec<String> { walk(d) };
    let before = listing(victim.path());
    let cases: Vec<(&str, String, String)> = vec![
        ("domain/os/kernel", "<kernel>/etc/shadow</kernel>".into(), String::new()),
        ("domain/os/initrd", "<initrd>/root/.ssh/authorized_keys</initrd>".into(), String::new()),
        ("domain/os/loader", format!("<loader>{v}/fw.bin</loader>"), String::new()),
        ("devices/disk/source", String::new(), r#"<disk type="file" device="disk"><source file="/etc/shadow"/><target dev="vda"/></disk>"#.into()),
        ("devices/disk/source", String::new(), r#"<disk type="block" device="disk"><source dev="/dev/vda"/><target dev="vdb"/></disk>"#.into()),
        ("devices/disk", String::new(), r#"<disk type="network" device="disk"><source protocol="nbd"/><target dev="vdc"/></disk>"#.into()),
        ("devices/filesystem", String::new(), r#"<filesystem type="mount" accessmode="passthrough"><source dir="/"/><target dir="host"/></filesystem>"#.into()),
        ("devices/hostdev", String::new(), r#"<hostdev mode="subsystem" type="pci" managed="yes"><source><address domain="0x0000" bus="0x00" slot="0x01" function="0x0"/></source></hostdev>"#.into()),
        ("devices/serial/source", String::new(), format!(r#"<serial type="file"><source path="{v}/serial.out"/><target port="0"/></serial>"#)),
        ("devices/serial/log", String::new(), format!(r#"<serial type="pty"><log file="{v}/newdir/console.log"/><target port="0"/></serial>"#)),
        ("devices/channel/source", String::new(), format!(r#"<channel type="unix"><source mode="bind" path="{v}/x.sock"/><target type="virtio" name="x"/></channel>"#)),
        ("devices/console type=tcp", String::new(), r#"<console type="tcp"><source mode="bind" host="127.0.0.1" service="4555"/></console>"#.into()),
        ("devices/emulator", String::new(), "<emulator>/bin/sh</emulator>".into()),
        ("devices/interface type=ethernet", String::new(), format!(r#"<interface type="ethernet"><script path="{v}/up.sh"/></interface>"#)),
        ("devices/interface/rom", String::new(), r#"<interface type="bridge"><source bridge="virbr9"/><rom file="/etc/shadow"/></interface>"#.into()),
        ("devices/rng/backend", String::new(), r#"<rng model="virtio"><backend model="random">/dev/vda</backend></rng>"#.into()),
        // A VM lease where libvirt does not enforce leases (this host's qemu.conf has no
        // sanlock lock manager): refused, not started without its guard.
        ("lock manager is not sanlock", String::new(), r#"<lease><key>k</key><lockspace>l</lockspace><target path="/tmp/x" offset="0"/></lease>"#.into()),
    ];
    let mut n = 0;
    let try_create = |xml: String, uuid: String| {
        let c = &c;
        async move {
            c.call_value(
                "VM.create",
                json!({"vmID": uuid, "vmParams": {"vmId": uuid, "xml": xml}}),
            )
            .await
        }
    };
    for (element, os, dev) in &cases {
        n += 1;
        let uuid = uuid::Uuid::new_v4().to_string();
        let xml = minimal_xml(&uuid, &host.domain_name(&format!("pol{n}")), os, dev);
        let e = try_create(xml, uuid.clone())
            .await
            .expect_err(&format!("{element} must be refused"));
        assert_eq!(rpc_code(&e), Some(9), "{element}: {e}");
        assert!(e.to_string().contains(element), "{element}: {e}");
        assert!(
            !host.virsh(&["dominfo", &uuid]).status.success(),
            "{element}: no domain"
        );
    }
    // Elements of the hypervisor's namespace and security labels.
    for (element, xml) in [
        (
            "domain/commandline",
            format!(
                r#"<domain type="kvm" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"><name>{}</name><uuid>UUID</uuid><memory unit="MiB">64</memory><os><type>hvm</type></os><qemu:commandline><qemu:arg value="-D"/><qemu:arg value="{v}/qemu.log"/></qemu:commandline></domain>"#,
                host.domain_name("polq")
            ),
        ),
        (
            "domain/capabilities",
            format!(
                r#"<domain type="kvm" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"><name>{}</name><uuid>UUID</uuid><memory unit="MiB">64</memory><os><type>hvm</type></os><qemu:capabilities><qemu:del capability="sandbox"/></qemu:capabilities></domain>"#,
                host.domain_name("polc")
            ),
        ),
        (
            "domain/seclabel",
            format!(
                r#"<domain type="kvm"><name>{}</name><uuid>UUID</uuid><memory unit="MiB">64</memory><os><type>hvm</type></os><seclabel type="none"/></domain>"#,
                host.domain_name("pols")
            ),
        ),
    ] {
        let uuid = uuid::Uuid::new_v4().to_string();
        let e = try_create(xml.replace("UUID", &uuid), uuid.clone())
            .await
            .expect_err(element);
        assert_eq!(rpc_code(&e), Some(9), "{element}: {e}");
        assert!(e.to_string().contains(element), "{element}: {e}");
        assert!(!host.virsh(&["dominfo", &uuid]).status.success());
    }
    assert_eq!(
        listing(victim.path()),
        before,
        "nothing appeared on the host"
    );
    // What the policy allows still starts (a diskless definition: SeaBIOS only).
    let uuid = uuid::Uuid::new_v4().to_string();
    let ok = try_create(
        minimal_xml(
            &uuid,
            &host.domain_name("polok"),
            "",
            r#"<serial type="pty"><target port="0"/></serial>"#,
        ),
        uuid.clone(),
    )
    .await
    .expect("an allowed definition is accepted");
    assert_eq!(ok["status"], "WaitForLaunch");
    let _ = c.call_value("VM.destroy", json!({"vmID": uuid})).await;
}

fn walk(d: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            out.push(e.path().display().to_string());
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            }
        }
    }
    out.sort();
    out
}

/// 300 sockets that never start TLS do not lock the Manager out: its connection and a
/// call get through within a second, and the refusals do not flood the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_do_not_lock_the_manager_out() {
    halyard_common::net::raise_nofile_limit();
    let host = TestHost::start(opts()).await;
    let log_before = host.log().len();
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", host.port))
                .await
                .expect("tcp"),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let c = host.client().await.expect("the Manager connects");
    c.call_value("Host.getVMList", json!({}))
        .await
        .expect("and calls");
    let took = t.elapsed();
    eprintln!("connect + Host.getVMList with 300 idle sockets open: {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = host.log().len() - log_before;
    eprintln!("log grew by {grown} bytes");
    assert!(
        grown < 20_000,
        "refusals are logged at a bounded rate: {grown} bytes"
    );
}

/// A document with 60,000 attributes on one element is refused at once. The request
/// is encoded before the clock starts (this measures the agent, not the test's own
/// debug-built JSON encoder): from the frame's first byte sent to the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_attribute_list_is_refused_quickly() {
    use halyard_proto::stomp::{Command, Decoder, Frame, Item, Limits};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = TestHost::start(opts()).await;
    let uuid = uuid::Uuid::new_v4().to_string();
    let attrs: String = (0..60_000).map(|i| format!(" a{i}=\"\"")).collect();
    let xml = format!(
        "<domain type=\"kvm\"{attrs}><name>{}</name><uuid>{uuid}</uuid></domain>",
        host.domain_name("attrs")
    );
    let req = json!({"jsonrpc": "2.0", "id": "big", "method": "VM.create",
                     "params": {"vmID": uuid, "vmParams": {"vmId": uuid, "xml": xml}}});
    let frame = Frame::new(Command::Send)
        .header("destination", "jms.topic.vdsm_requests")
        .header("reply-to", "jms.topic.vdsm_responses")
        .body(serde_json::to_vec(&req).expect("json"))
        .encode();
    let mut s = halyard_client::connect_tls("127.0.0.1", host.port, host.client_tls())
        .await
        .expect("tls");
    let mut hello = Frame::new(Command::Connect)
        .header("accept-version", "1.2")
        .encode();
    hello.extend(
        Frame::new(Command::Subscribe)
            .header("destination", "jms.topic.vdsm_responses")
            .header("id", "r")
            .encode(),
    );
    s.write_all(&hello).await.expect("hello");
    let mut dec = Decoder::new(Limits::default());
    let mut buf = vec![0u8; 65536];
    async fn read_until(
        s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        dec: &mut Decoder,
        buf: &mut [u8],
        want: Command,
    ) -> Frame {
        loop {
            while let Ok(Some(item)) = dec.next_item() {
                if let Item::Frame(f) = item {
                    if f.command == want {
                        return f;
                    }
                }
            }
            let n = s.read(buf).await.expect("read");
            assert!(n > 0, "closed");
            dec.feed(&buf[..n]);
        }
    }
    read_until(&mut s, &mut dec, &mut buf, Command::Connected).await;
    let t = Instant::now();
    s.write_all(&frame).await.expect("send");
    s.flush().await.expect("flush");
    let reply = read_until(&mut s, &mut dec, &mut buf, Command::Message).await;
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&reply.body).to_string();
    eprintln!(
        "VM.create with 60,000 attributes ({} bytes) refused in {took:?}",
        frame.len()
    );
    assert!(text.contains("more than 64 attributes"), "{text}");
    assert!(took < Duration::from_millis(50), "{took:?}");
    let c = host.client().await.expect("client");
    c.call_value("Host.ping2", json!({}))
        .await
        .expect("still serving");
}

/// The agent's key, certificate and CA are replaced as one unit: a crash after the key
/// was written and before the certificate (which used to leave a host that refuses to
/// start) leaves one that starts, with the new identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_identity_writes_leaves_a_host_that_starts() {
    let mut host = TestHost::start(opts()).await;
    host.opts.env = vec![("HALYARD_CRASH_POINT".into(), "identity-key-written".into())];
    host.restart().await;
    let c = host.client().await.expect("client");
    let csr = c
        .call_value("Host.getCertificateRequest", json!({}))
        .await
        .expect("csr");
    let cert = ca_of(&host)
        .sign_csr(
            csr.as_str().expect("pem"),
            &["127.0.0.1".into(), "localhost".into()],
            halyard_pki::Usage::Host,
            30,
        )
        .expect("signed");
    let r = c
        .call_value("Host.setCertificate", json!({"certificate": cert}))
        .await;
    assert!(r.is_err(), "the agent died in the middle: {r:?}");
    assert!(
        host.wait_exit(Duration::from_secs(10)).await.is_some(),
        "it crashed"
    );
    let key = std::fs::read_to_string(&host.pki.hostd.key).expect("key");
    let old = std::fs::read_to_string(&host.pki.hostd.cert).expect("cert");
    assert!(
        !halyard_pki::cert_matches_key(&old, &key),
        "the crash came between the key and the certificate"
    );
    host.opts.env.clear();
    host.restart().await; // waits until it answers
    let now = std::fs::read_to_string(&host.pki.hostd.cert).expect("cert");
    assert!(halyard_pki::cert_matches_key(&now, &key));
    assert_eq!(now, cert, "the new identity was installed");
    let c = host.client().await.expect("a client after the restart");
    c.call_value("Host.ping2", json!({})).await.expect("ping");
    assert!(host.log().contains("finished installing an identity"));
}

/// Enrollment tokens can be guessed a few times only: then every attempt, even with the
/// right token, waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_token_attempts_are_limited() {
    let mut o = opts();
    o.enroll_token = Some("the-right-token-123".into());
    let host = TestHost::start(o).await;
    let tls = halyard_pki::client_config_unverified(None).expect("tls");
    let c = Client::connect("127.0.0.1", host.port, tls)
        .await
        .expect("anonymous connection to an agent waiting for enrollment");
    for i in 0..6 {
        let e = c
            .call_value(
                "Host.getCertificateRequest",
                json!({"token": format!("guess-{i}")}),
            )
            .await
            .expect_err("wrong");
        assert!(e.to_string().contains("wrong or missing"), "{e}");
    }
    // The sixth wrong guess imposed a wait.
    let e = c
        .call_value("Host.getCertificateRequest", json!({"token": "guess-7"}))
        .await
        .expect_err("wrong");
    let e2 = c
        .call_value(
            "Host.getCertificateRequest",
            json!({"token": "the-right-token-123"}),
        )
        .await
        .expect_err("even the right one waits now");
    for e in [e, e2] {
        assert!(
            e.to_string().contains("too many wrong enrollment tokens"),
            "{e}"
        );
    }
    // Nothing but the enrollment verbs meanwhile.
    let e = c
        .call_value("Host.getVMList", json!({}))
        .await
        .expect_err("not enrolled");
    assert_eq!(rpc_code(&e), Some(1401), "{e}");
}
