//! The data server's local service (imageio's unix socket) over a real qemu-nbd export:
//! PUT bodies arriving in tiny frames and in large ones, writes that cross the NBD
//! request size, reads back, a refused ticket, OPTIONS naming the socket.
//! Needs `qemu-img` and `qemu-nbd` (Debian's qemu-utils).

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::Request;
use hyper_util::rt::TokioIo;

use halyard_imageio::{ImageServer, Limits, Role, TicketSpec};

const SIZE: u64 = 32 << 20;
const TICKET: &str = "5b1c3b1e-3d4f-4b8e-9a6b-0c2d4e6f8a10";

struct Nbd(Child);

impl Drop for Nbd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_nbd(image: &Path, socket: &Path) -> Nbd {
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(image)
        .arg(SIZE.to_string())
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let child = Command::new("qemu-nbd")
        .arg(format!("--socket={}", socket.display()))
        .args([
            "--format=qcow2",
            "--persistent",
            "--shared=8",
            "--export-name=",
        ])
        .arg(image)
        .spawn()
        .expect("qemu-nbd");
    let nbd = Nbd(child);
    for _ in 0..100 {
        if socket.exists() {
            return nbd;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("qemu-nbd did not start");
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn send(sock: &Path, req: Request<Body>) -> (u16, Bytes) {
    let s = tokio::net::UnixStream::connect(sock)
        .await
        .expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let res = tx.send_request(req).await.expect("request");
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, body)
}

fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|e: std::convert::Infallible| match e {})
        .boxed()
}

/// A request body given frame by frame, each frame polled on its own.
struct Frames(std::collections::VecDeque<Bytes>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// A PUT of `data` at `offset`, its body sent in frames of `frame` bytes.
fn put(offset: u64, data: &[u8], frame: usize) -> Request<Body> {
    let frames = data.chunks(frame).map(Bytes::copy_from_slice).collect();
    Request::put(format!("/images/{TICKET}?flush=y"))
        .header(
            "content-range",
            format!("bytes {}-{}/*", offset, offset + data.len() as u64 - 1),
        )
        .header("content-length", data.len())
        .body(Frames(frames).boxed())
        .expect("request")
}

fn get(offset: u64, len: u64) -> Request<Body> {
    Request::get(format!("/images/{TICKET}"))
        .header("range", format!("bytes={}-{}", offset, offset + len - 1))
        .body(empty())
        .expect("request")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_service_writes_every_frame_size_and_checks_tickets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nbd_sock = dir.path().join("nbd.sock");
    let _nbd = qemu_nbd(&dir.path().join("disk.qcow2"), &nbd_sock);
    let server = ImageServer::new(Role::Host, Limits::default(), None);
    server
        .tickets()
        .add(TicketSpec {
            uuid: TICKET.into(),
            size: SIZE,
            url: format!("nbd:unix:{}", nbd_sock.display()),
            ops: vec!["read".into(), "write".into()],
            timeout: 300,
            inactivity_timeout: None,
            transfer_id: Some("t-local".into()),
            filename: None,
            sparse: true,
            dirty: false,
        })
        .expect("ticket");
    let sock = dir.path().join("imageio.sock");
    let l = tokio::net::UnixListener::bind(&sock).expect("bind");
    tokio::spawn(
        server
            .clone()
            .serve_local(l, sock.to_string_lossy().into_owned()),
    );

    // OPTIONS names the socket.
    let (st, body) = send(
        &sock,
        Request::options(format!("/images/{TICKET}"))
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["unix_socket"], sock.to_string_lossy().as_ref(), "{v}");

    // Frames of 1 byte, of 1000 bytes, of 64 KiB and of 3 MiB; the last write
    // (20 MiB in 3 MiB frames) crosses the 8 MiB NBD request size twice.
    let cases: [(u64, usize, usize, u8); 4] = [
        (0, 70_000, 1, 1),
        (1 << 20, 3 << 20, 1000, 2),
        (5 << 20, 5 << 20, 64 << 10, 3),
        (11 << 20, 20 << 20, 3 << 20, 4),
    ];
    for (offset, len, frame, seed) in cases {
        let data = pattern(len, seed);
        let (st, body) = send(&sock, put(offset, &data, frame)).await;
        assert_eq!(st, 200, "PUT {len} bytes in frames of {frame}: {body:?}");
        let (st, back) = send(&sock, get(offset, len as u64)).await;
        assert_eq!(st, 206);
        assert!(
            back.as_ref() == data.as_slice(),
            "read back {len} bytes written in frames of {frame}: different"
        );
    }
    // What lies between the writes is still zero.
    let (_, gap) = send(&sock, get(70_000, (1 << 20) - 70_000)).await;
    assert!(gap.iter().all(|b| *b == 0));

    // A ticket that is not there: 403, as on the TCP port.
    let other = TICKET.replace('5', "6");
    let (st, _) = send(
        &sock,
        Request::get(format!("/images/{other}"))
            .header("range", "bytes=0-9")
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(st, 403);
    // A client that leaves half-way through its body: 400, the data before the
    // end written, the server going on.
    let mut raw = tokio::net::UnixStream::connect(&sock)
        .await
        .expect("connect");
    let head = format!(
        "PUT /images/{TICKET} HTTP/1.1\r\nhost: localhost\r\ncontent-range: bytes 0-199/*\r\ncontent-length: 200\r\n\r\n"
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(head.as_bytes()).await.expect("write");
    raw.write_all(&pattern(100, 9)).await.expect("write");
    raw.shutdown().await.expect("shutdown");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("Partial content"),
        "{answer}"
    );
    let (st, _) = send(&sock, get(0, 16)).await;
    assert_eq!(st, 206, "the server goes on after a client left half-way");
}

/// A write abandoned half-way (its HTTP client gone while the data server was sending
/// it to qemu-nbd) must not put its connection back into the pool: the next request on
/// it would be taken as the rest of the write's data and never be answered.
#[tokio::test]
async fn an_abandoned_write_leaves_no_connection_out_of_step() {
    use halyard_imageio::backend::{Backend, NbdBackend};
    use std::future::Future;
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("nbd.sock");
    let _nbd = qemu_nbd(&dir.path().join("disk.qcow2"), &sock);
    let b = Backend::Nbd(NbdBackend::open(&sock).await.expect("open the export"));
    b.write(0, vec![Bytes::from(vec![0x5a; 1 << 20])])
        .await
        .expect("first write");
    {
        // 8 MiB does not fit the socket's buffer: polled once, the write sends its
        // header and part of its data, then waits for room; it is dropped there.
        let w = b.write(1 << 20, vec![Bytes::from(vec![0xa5; 8 << 20])]);
        let mut w = std::pin::pin!(w);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            w.as_mut().poll(&mut cx).is_pending(),
            "the write waits for room"
        );
    }
    let got = tokio::time::timeout(Duration::from_secs(10), b.read(0, 1 << 20))
        .await
        .expect("a read after the abandoned write is answered")
        .expect("read");
    assert!(got.iter().all(|x| *x == 0x5a), "the first write's data");
}
