//! A minimal HTTPS/1.1 client (one request per connection) for the Manager's REST API
//! and host registration: enough for the agent and the CLI without pulling in a full
//! HTTP stack.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ClientError;

/// A response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Splits `https://host:port/path?query` into (host, port, path-and-query).
pub fn split_url(url: &str) -> Result<(String, u16, String), ClientError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| ClientError::Protocol(format!("not an https URL: {url}")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(a) = authority.strip_prefix('[') {
        let (h, p) = a
            .split_once(']')
            .ok_or_else(|| ClientError::Protocol(format!("bad host in {url}")))?;
        (h.to_string(), p.strip_prefix(':').unwrap_or("443"))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p),
            None => (authority.to_string(), "443"),
        }
    };
    let port = port
        .parse()
        .map_err(|_| ClientError::Protocol(format!("bad port in {url}")))?;
    Ok((host, port, path.to_string()))
}

/// Bounds on a response (the peer may be anyone: the agent talks to a Manager before
/// it trusts it).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Status line and headers.
    pub max_head: usize,
    /// The whole response as read from the connection.
    pub max_response: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 64 * 1024,
            max_response: 64 * 1024 * 1024,
        }
    }
}

fn find(h: &[u8], pat: &[u8]) -> Option<usize> {
    h.windows(pat.len()).position(|w| w == pat)
}

fn proto(msg: impl Into<String>) -> ClientError {
    ClientError::Protocol(msg.into())
}

/// Decodes a chunked body. Every length is checked against what is there: a chunk
/// size of `ffffffffffffffff` is an error, not an overflow.
pub fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    loop {
        let nl = find(b, b"\r\n").ok_or_else(|| proto("bad chunked body"))?;
        let line = std::str::from_utf8(&b[..nl]).map_err(|_| proto("bad chunk size"))?;
        let size_s = line.split(';').next().unwrap_or("").trim();
        if size_s.is_empty() || size_s.len() > 16 {
            return Err(proto("bad chunk size"));
        }
        let size = u64::from_str_radix(size_s, 16).map_err(|_| proto("bad chunk size"))?;
        b = &b[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        let size = usize::try_from(size).map_err(|_| proto("chunk too large"))?;
        let need = size
            .checked_add(2)
            .ok_or_else(|| proto("chunk too large"))?;
        if b.len() < need {
            return Err(proto("truncated chunk"));
        }
        if &b[size..need] != b"\r\n" {
            return Err(proto("chunk without its line end"));
        }
        out.extend_from_slice(&b[..size]);
        b = &b[need..];
    }
}

/// Parses a whole HTTP/1.1 response (read until the peer closed). Untrusted input:
/// bounded head, checked lengths, clear errors, never a panic.
pub fn parse_response(buf: &[u8], limits: &Limits) -> Result<HttpResponse, ClientError> {
    if buf.len() > limits.max_response {
        return Err(proto(format!(
            "response larger than {} bytes",
            limits.max_response
        )));
    }
    let end = find(&buf[..buf.len().min(limits.max_head + 4)], b"\r\n\r\n").ok_or_else(|| {
        if buf.len() > limits.max_head {
            proto(format!("HTTP header larger than {} bytes", limits.max_head))
        } else {
            proto("no HTTP header")
        }
    })?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| proto("HTTP header is not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(proto("bad status line"));
    }
    let status: u16 = parts
        .next()
        .filter(|c| c.len() == 3)
        .and_then(|c| c.parse().ok())
        .filter(|c| (100..=599).contains(c))
        .ok_or_else(|| proto("bad status line"))?;
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| proto("malformed header line"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let raw = &buf[end + 4..];
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let chunked =
        get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(raw)?
    } else if let Some(cl) = get("content-length") {
        let n: usize = cl.parse().map_err(|_| {
            proto(format!(
                "bad Content-Length {:?}",
                cl.chars().take(32).collect::<String>()
            ))
        })?;
        if raw.len() < n {
            return Err(proto("the body is shorter than its Content-Length"));
        }
        raw[..n].to_vec()
    } else {
        raw.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Sends one request over TLS and reads the whole response (`Connection: close`).
pub async fn request(
    tls: Arc<rustls::ClientConfig>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, ClientError> {
    request_from(None, tls, method, url, headers, body).await
}

/// [`request`] from a given local address (a host with several addresses).
pub async fn request_from(
    local: Option<std::net::IpAddr>,
    tls: Arc<rustls::ClientConfig>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, ClientError> {
    request_limited(local, tls, method, url, headers, body, Limits::default()).await
}

/// [`request_from`] with other limits (a benchmark reading a 25,000-VM list).
pub async fn request_limited(
    local: Option<std::net::IpAddr>,
    tls: Arc<rustls::ClientConfig>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    limits: Limits,
) -> Result<HttpResponse, ClientError> {
    let (host, port, path) = split_url(url)?;
    let mut s = crate::connect_tls_from(local, &host, port, tls).await?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        if k.contains(['\r', '\n']) || v.contains(['\r', '\n']) {
            return Err(ClientError::Protocol("header with a line break".into()));
        }
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let io = async {
        s.write_all(req.as_bytes()).await?;
        s.write_all(body).await?;
        s.flush().await?;
        let mut buf = Vec::new();
        // Peers may close without close_notify: what was read counts. A peer that
        // sends more than the limit is not read further.
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > limits.max_response {
                        break;
                    }
                }
                Err(e) if !buf.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
        Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(120), io)
        .await
        .map_err(|_| ClientError::Timeout(Duration::from_secs(120)))?
        .map_err(ClientError::Tls)?;
    parse_response(&buf, &limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_chunks() {
        assert_eq!(
            split_url("https://m.example:8443/ovirt-engine/api?x=1").expect("ok"),
            ("m.example".into(), 8443, "/ovirt-engine/api?x=1".into())
        );
        assert_eq!(
            split_url("https://[::1]/").expect("ok"),
            ("::1".into(), 443, "/".into())
        );
        assert!(split_url("http://x/").is_err());
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").expect("ok"),
            b"abcde"
        );
        assert!(dechunk(b"zz\r\n").is_err());
    }

    #[test]
    fn hostile_lengths_are_errors() {
        // The chunk size that overflowed size + 2.
        assert!(dechunk(b"ffffffffffffffff\r\nabc").is_err());
        assert!(dechunk(b"fffffffffffffffff\r\nabc").is_err());
        assert!(dechunk(b"5\r\nab\r\n").is_err());
        assert!(dechunk(b"2\r\nabXY0\r\n\r\n").is_err());
        let l = Limits::default();
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef", &l).expect("ok");
        assert_eq!(r.body, b"abc");
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nx"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"SMTP 200\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK",
        ] {
            assert!(
                parse_response(bad, &l).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let big_head = [
            b"HTTP/1.1 200 OK\r\nX: ".to_vec(),
            vec![b'a'; 70_000],
            b"\r\n\r\n".to_vec(),
        ]
        .concat();
        assert!(parse_response(&big_head, &l).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_response_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_response(&b, &Limits::default());
            let _ = dechunk(&b);
        }

        #[test]
        fn parse_response_never_panics_on_http_like(s in "HTTP/1\\.[01] [0-9]{1,4} [A-Z]{0,3}(\r\n[A-Za-z-]{1,12}: ?[0-9a-fA-F;]{0,20})*\r\n\r\n([0-9a-fA-F]{1,17}\r\n[a-z]{0,5}\r\n){0,4}") {
            let _ = parse_response(s.as_bytes(), &Limits::default());
        }
    }
}
