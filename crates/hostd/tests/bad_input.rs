//! Bad input to the agent: each case gets a clear error (STOMP ERROR, JSON-RPC or VDSM
//! error code, TLS refusal) and the agent keeps serving other clients.

use std::sync::Arc;
use std::time::{Duration, Instant};

use halyard_proto::stomp::{self, Command, Frame, Item};
use halyard_testinfra::{rss_kib, HostOptions, TestHost};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn opts() -> HostOptions {
    HostOptions::new(env!("CARGO_BIN_EXE_halyard-hostd"))
}

/// A raw TLS connection speaking STOMP by hand.
struct Raw {
    s: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    dec: stomp::Decoder,
    closed: bool,
}

impl Raw {
    async fn connect(host: &TestHost) -> Raw {
        Raw::with_tls(host, host.client_tls()).await
    }

    async fn with_tls(host: &TestHost, tls: Arc<rustls::ClientConfig>) -> Raw {
        let s = halyard_client::connect_tls("127.0.0.1", host.port, tls)
            .await
            .expect("TLS connect");
        Raw {
            s,
            dec: stomp::Decoder::new(stomp::Limits::default()),
            closed: false,
        }
    }

    async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.s.write_all(data).await?;
        self.s.flush().await
    }

    async fn hello(&mut self) {
        let mut d = Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("host", "t")
            .encode();
        d.extend(
            Frame::new(Command::Subscribe)
                .header("destination", "jms.topic.vdsm_responses")
                .header("id", "sub-r")
                .encode(),
        );
        self.send(&d).await.expect("send hello");
        let f = self.frame(Duration::from_secs(5)).await.expect("CONNECTED");
        assert_eq!(f.command, Command::Connected);
    }

    /// The next frame (heart-beats skipped), or None on close/timeout.
    async fn frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            match self.dec.next_item() {
                Ok(Some(Item::Frame(f))) => return Some(f),
                Ok(Some(Item::HeartBeat)) => continue,
                Ok(None) => {}
                Err(e) => panic!("agent sent bad STOMP: {e}"),
            }
            if self.closed {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.dec.feed(&buf[..n]),
                Err(_) => return None,
            }
        }
    }

    /// True if the peer closed the connection within `timeout`.
    async fn is_closed(&mut self, timeout: Duration) -> bool {
        while self.frame(timeout).await.is_some() {}
        self.closed
    }

    async fn request(&mut self, body: &str) -> Value {
        let f = Frame::new(Command::Send)
            .header("destination", "jms.topic.vdsm_requests")
            .header("reply-to", "jms.topic.vdsm_responses")
            .body(body.as_bytes().to_vec());
        self.send(&f.encode()).await.expect("send");
        let r = self.frame(Duration::from_secs(10)).await.expect("a reply");
        assert_eq!(r.command, Command::Message, "{r:?}");
        assert_eq!(r.headers.get("subscription"), Some("sub-r"));
        serde_json::from_slice(&r.body).expect("JSON reply")
    }
}

async fn still_serving(host: &TestHost) {
    let c = host.client().await.expect("a good client still connects");
    assert_eq!(
        c.call_value("Host.ping2", json!({})).await.expect("ping2"),
        json!(true)
    );
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_stomp_frames_get_error_and_close() {
    let host = TestHost::start(opts()).await;
    for bad in [
        &b"BOGUS\n\n\0"[..],
        b"SEND\nno-colon-header\n\n\0",
        b"SEND\nk:\\q\n\n\0",
        b"SEND\ncontent-length:abc\n\n\0",
        b"SEND\ncontent-length:2\n\nabc\0",
        b"\xff\xfe\xfd garbage\n",
    ] {
        let mut r = Raw::connect(&host).await;
        r.send(bad).await.expect("send");
        let f = r
            .frame(Duration::from_secs(5))
            .await
            .expect("an ERROR frame");
        assert_eq!(f.command, Command::Error, "for {bad:?}");
        assert!(!f.body.is_empty());
        assert!(
            r.is_closed(Duration::from_secs(5)).await,
            "closed after {bad:?}"
        );
        still_serving(&host).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_refused_without_buffering() {
    let host = TestHost::start(opts()).await;
    let pid = host.pid().expect("agent pid");
    let before = rss_kib(pid).expect("rss");

    // A declared 1 GiB body: refused as soon as the headers are read.
    let mut r = Raw::connect(&host).await;
    r.hello().await;
    let t0 = Instant::now();
    r.send(b"SEND\ndestination:jms.topic.vdsm_requests\ncontent-length:1073741824\n\n")
        .await
        .expect("send headers");
    let f = r.frame(Duration::from_secs(5)).await.expect("ERROR");
    assert_eq!(f.command, Command::Error);
    let body = String::from_utf8_lossy(&f.body).to_string();
    assert!(body.contains("exceeds"), "{body}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(r.is_closed(Duration::from_secs(5)).await);

    // No content-length: the body is cut off once it passes the limit (1 MiB here).
    let mut r = Raw::connect(&host).await;
    r.hello().await;
    let _ = r
        .send(b"SEND\ndestination:jms.topic.vdsm_requests\n\n")
        .await;
    let chunk = vec![b'x'; 256 * 1024];
    for _ in 0..32 {
        if r.send(&chunk).await.is_err() {
            break; // the agent closed the connection: expected
        }
    }
    let f = r.frame(Duration::from_secs(5)).await;
    if let Some(f) = f {
        assert_eq!(f.command, Command::Error);
    }
    assert!(r.is_closed(Duration::from_secs(5)).await);

    let after = rss_kib(pid).expect("rss");
    eprintln!("agent RSS before {before} KiB, after {after} KiB");
    assert!(
        after < before + 4 * 1024,
        "the agent buffered the oversized frames: {before} -> {after} KiB"
    );
    still_serving(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_rpc_and_vdsm_errors() {
    let host = TestHost::start(opts()).await;
    let mut r = Raw::connect(&host).await;
    r.hello().await;
    let code = |v: &Value| v["error"]["code"].as_i64().unwrap_or(0);

    let v = r.request("{ not json").await;
    assert_eq!(code(&v), -32700, "{v}");
    assert_eq!(v["id"], Value::Null);

    let v = r
        .request(r#"{"jsonrpc":"1.0","method":"Host.ping2","id":"a"}"#)
        .await;
    assert_eq!(code(&v), -32600, "{v}");

    let v = r
        .request(r#"{"jsonrpc":"2.0","method":"Host.nothing","params":{},"id":"b"}"#)
        .await;
    assert_eq!(code(&v), -32601, "{v}");
    assert_eq!(v["id"], "b");

    let v = r
        .request(r#"{"jsonrpc":"2.0","method":"VM.getStats","params":{"vmID":5},"id":"c"}"#)
        .await;
    assert_eq!(code(&v), -32602, "wrong type: {v}");

    let v = r.request(r#"{"jsonrpc":"2.0","method":"VM.getStats","params":{"vmID":"../../etc/passwd"},"id":"d"}"#).await;
    assert_eq!(code(&v), -32602, "not a UUID: {v}");

    let v = r.request(r#"{"jsonrpc":"2.0","method":"VM.destroy","params":{"vmID":"6c1d6b9e-1f3c-4a55-9d2e-000000000000"},"id":"e"}"#).await;
    assert_eq!(code(&v), 1, "unknown VM: {v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("does not exist"));

    let v = r.request(r#"{"jsonrpc":"2.0","method":"VM.shutdown","params":["6c1d6b9e-1f3c-4a55-9d2e-000000000000"],"id":"e2"}"#).await;
    assert_eq!(code(&v), 1, "positional params, unknown VM: {v}");

    let v = r
        .request(r#"{"jsonrpc":"2.0","method":"VM.create","params":{"vmParams":{}},"id":"f"}"#)
        .await;
    assert_eq!(code(&v), 11, "missing xml: {v}");

    let v = r.request(r#"{"jsonrpc":"2.0","method":"VM.create","params":{"vmParams":{"xml":"<domain><name>x"}},"id":"g"}"#).await;
    assert_eq!(code(&v), 91, "broken XML: {v}");

    let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><domain><name>&lol2;</name><uuid>6c1d6b9e-1f3c-4a55-9d2e-000000000001</uuid></domain>"#;
    let req = json!({"jsonrpc":"2.0","method":"VM.create","params":{"vmParams":{"xml": laughs}},"id":"h"});
    let v = r.request(&req.to_string()).await;
    assert_eq!(code(&v), 91, "entity expansion: {v}");

    // A batch gets an array of answers; the notification in it none.
    let v = r
        .request(r#"[{"jsonrpc":"2.0","method":"Host.ping2","id":1},{"jsonrpc":"2.0","method":"Host.ping2"},{"jsonrpc":"2.0","method":"No.such","id":2}]"#)
        .await;
    let a = v.as_array().expect("batch answer");
    assert_eq!(a.len(), 2, "{v}");
    assert_eq!(a[0]["result"], true);
    assert_eq!(code(&a[1]), -32601);

    // A lone notification gets no answer: the next reply is the ping's.
    let f = Frame::new(Command::Send)
        .header("destination", "jms.topic.vdsm_requests")
        .header("reply-to", "jms.topic.vdsm_responses")
        .body(br#"{"jsonrpc":"2.0","method":"Host.ping2"}"#.to_vec());
    r.send(&f.encode()).await.expect("send");
    let v = r
        .request(r#"{"jsonrpc":"2.0","method":"Host.ping2","id":"z"}"#)
        .await;
    assert_eq!(v["id"], "z");
    assert_eq!(v["result"], true);

    // The session survived all of it.
    let v = r
        .request(r#"{"jsonrpc":"2.0","method":"Host.getVMList","params":{},"id":"last"}"#)
        .await;
    assert_eq!(v["result"], json!([]));
    still_serving(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_session_rules() {
    let host = TestHost::start(opts()).await;

    // Version check.
    let mut r = Raw::connect(&host).await;
    r.send(
        &Frame::new(Command::Connect)
            .header("accept-version", "1.0")
            .encode(),
    )
    .await
    .expect("send");
    let f = r.frame(Duration::from_secs(5)).await.expect("ERROR");
    assert_eq!(f.command, Command::Error);
    assert_eq!(f.body, b"Version unsupported");

    // Nothing before CONNECT: a SEND first gets an ERROR, no answer, and the end.
    let mut r = Raw::connect(&host).await;
    let f = Frame::new(Command::Send)
        .header("destination", "jms.topic.vdsm_requests")
        .header("reply-to", "jms.topic.vdsm_responses")
        .body(br#"{"jsonrpc":"2.0","id":"x","method":"Host.getVMList","params":{}}"#.to_vec());
    r.send(&f.encode()).await.expect("send");
    let f = r.frame(Duration::from_secs(5)).await.expect("ERROR");
    assert_eq!(f.command, Command::Error, "{f:?}");
    assert!(
        String::from_utf8_lossy(&f.body).contains("before CONNECT"),
        "{f:?}"
    );
    assert!(r.is_closed(Duration::from_secs(5)).await);

    // Heart-beats: the agent sends one every second when asked to; SUBSCRIBE without id
    // is an error that keeps the session; DISCONNECT gets its RECEIPT.
    let mut r = Raw::connect(&host).await;
    r.send(
        &Frame::new(Command::Connect)
            .header("accept-version", "1.1,1.2")
            .header("heart-beat", "0,1000")
            .encode(),
    )
    .await
    .expect("send");
    let f = r.frame(Duration::from_secs(5)).await.expect("CONNECTED");
    assert_eq!(f.command, Command::Connected);
    assert_eq!(f.headers.get("version"), Some("1.2"));
    assert_eq!(f.headers.get("heart-beat"), Some("1000,0"));
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_millis(2500), r.s.read(&mut buf))
        .await
        .expect("a heart-beat within 2.5 s")
        .expect("read");
    assert_eq!(&buf[..n], b"\n");
    r.send(
        &Frame::new(Command::Subscribe)
            .header("destination", "x")
            .encode(),
    )
    .await
    .expect("send");
    let f = r.frame(Duration::from_secs(5)).await.expect("ERROR");
    assert_eq!(f.command, Command::Error);
    r.send(
        &Frame::new(Command::Disconnect)
            .header("receipt", "r-7")
            .encode(),
    )
    .await
    .expect("send");
    let f = r.frame(Duration::from_secs(5)).await.expect("RECEIPT");
    assert_eq!(f.command, Command::Receipt);
    assert_eq!(f.headers.get("receipt-id"), Some("r-7"));
    assert!(r.is_closed(Duration::from_secs(5)).await);
    still_serving(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_valid_certificate_are_refused() {
    let host = TestHost::start(opts()).await;
    let other_ca = tempfile::tempdir().expect("tempdir");
    let foreign = halyard_pki::init_dev_pki(other_ca.path(), &["x".into()], false).expect("pki");
    let anonymous = halyard_pki::client_config_anonymous(&host.pki.client.ca).expect("tls");
    // Trusts the agent, but presents a certificate of another CA.
    let wrong_ca = halyard_pki::client_config(&halyard_pki::TlsFiles {
        cert: foreign.client.cert.clone(),
        key: foreign.client.key.clone(),
        ca: host.pki.client.ca.clone(),
    })
    .expect("tls");
    for (what, tls) in [("no certificate", anonymous), ("foreign CA", wrong_ca)] {
        let res = halyard_client::Client::over(
            match halyard_client::connect_tls("127.0.0.1", host.port, tls).await {
                Ok(s) => s,
                Err(_) => continue, // refused during the handshake: fine
            },
            "127.0.0.1",
        )
        .await;
        assert!(res.is_err(), "{what}: the agent must refuse the session");
        still_serving(&host).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        host.log().contains("TLS handshake refused"),
        "{}",
        host.log()
    );
}
