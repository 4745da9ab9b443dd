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

fn find(h: &[u8], pat: &[u8]) -> Option<usize> {
    h.windows(pat.len()).position(|w| w == pat)
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    loop {
        let nl =
            find(b, b"\r\n").ok_or_else(|| ClientError::Protocol("bad chunked body".into()))?;
        let size_s = std::str::from_utf8(&b[..nl])
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        let size = usize::from_str_radix(size_s, 16)
            .map_err(|_| ClientError::Protocol("bad chunk size".into()))?;
        b = &b[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err(ClientError::Protocol("truncated chunk".into()));
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Sends one request over TLS and reads the whole response (`Connection: close`).
pub async fn request(
    tls: Arc<rustls::ClientConfig>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, ClientError> {
    let (host, port, path) = split_url(url)?;
    let mut s = crate::connect_tls(&host, port, tls).await?;
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
        // Peers may close without close_notify: what was read counts.
        match s.read_to_end(&mut buf).await {
            Ok(_) => {}
            Err(e) if !buf.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e),
        }
        Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(120), io)
        .await
        .map_err(|_| ClientError::Timeout(Duration::from_secs(120)))?
        .map_err(ClientError::Tls)?;
    let end =
        find(&buf, b"\r\n\r\n").ok_or_else(|| ClientError::Protocol("no HTTP header".into()))?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ClientError::Protocol("bad status line".into()))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let raw = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(raw)? } else { raw.to_vec() };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
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
}
