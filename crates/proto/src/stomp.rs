//! STOMP 1.2 frames: an incremental decoder with hard size limits, and an encoder.
//!
//! The decoder never buffers more than one frame's worth of bytes: a frame whose
//! `content-length` exceeds [`Limits::max_body`] is refused as soon as its headers are
//! read, and a frame without `content-length` is refused as soon as its body grows past
//! the limit. Header values are unescaped (`\c`, `\n`, `\r`, `\\`) for every command but
//! CONNECT and CONNECTED, as STOMP 1.2 says.

use std::fmt;

/// Frame commands of STOMP 1.2 (client and server side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    Connected,
    Message,
    Receipt,
    Error,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    pub fn parse(s: &[u8]) -> Option<Command> {
        Some(match s {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            b"CONNECTED" => Command::Connected,
            b"MESSAGE" => Command::Message,
            b"RECEIPT" => Command::Receipt,
            b"ERROR" => Command::Error,
            _ => return None,
        })
    }

    /// CONNECT, STOMP and CONNECTED frames carry their header values unescaped.
    fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Ordered frame headers. When a name repeats, the first occurrence wins on lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.push(name, value);
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn new(command: Command) -> Self {
        Frame {
            command,
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(name, value);
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// An ERROR frame with a short `message` header and a longer body.
    pub fn error(message: &str, detail: &str) -> Self {
        Frame::new(Command::Error)
            .header("message", message)
            .header("content-type", "text/plain")
            .body(detail.as_bytes().to_vec())
    }

    /// Serialises the frame; `content-length` is always written (any given one is replaced).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 64 + self.headers.len() * 32);
        out.extend_from_slice(self.command.as_str().as_bytes());
        out.push(b'\n');
        let escape = self.command.escapes_headers();
        for (k, v) in self.headers.iter() {
            if k == "content-length" {
                continue;
            }
            push_header_part(&mut out, k, escape);
            out.push(b':');
            push_header_part(&mut out, v, escape);
            out.push(b'\n');
        }
        out.extend_from_slice(b"content-length:");
        out.extend_from_slice(self.body.len().to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
        out.extend_from_slice(&self.body);
        out.push(0);
        out
    }
}

fn push_header_part(out: &mut Vec<u8>, s: &str, escape: bool) {
    if !escape {
        // Unescaped frames cannot carry these bytes at all; drop them rather than
        // produce a frame the peer would misparse.
        out.extend(s.bytes().filter(|b| !matches!(b, b'\n' | b'\r' | b':')));
        return;
    }
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b':' => out.extend_from_slice(b"\\c"),
            _ => out.push(b),
        }
    }
}

/// What the decoder yields: a frame or a heart-beat (a bare EOL between frames).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Frame(Frame),
    HeartBeat,
}

/// Size limits of the decoder.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of the command line and all header lines together.
    pub max_header_bytes: usize,
    /// Number of header lines.
    pub max_headers: usize,
    /// Bytes of the body.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_headers: 256,
            max_body: 16 * 1024 * 1024,
        }
    }
}

/// Why a byte stream is not valid STOMP. Every variant ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StompError {
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("header block exceeds {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("more than {limit} headers")]
    TooManyHeaders { limit: usize },
    #[error("frame body of {size} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge { size: usize, limit: usize },
    #[error("header line without a colon: {0:?}")]
    MalformedHeader(String),
    #[error("invalid escape sequence in header {0:?}")]
    BadEscape(String),
    #[error("headers are not valid UTF-8")]
    NotUtf8,
    #[error("invalid content-length {0:?}")]
    BadContentLength(String),
    #[error("frame body is not terminated by a NUL byte")]
    MissingNul,
}

enum State {
    /// Waiting for a command line (or heart-beats).
    Idle,
    /// Headers parsed; waiting for the body.
    Body {
        command: Command,
        headers: Headers,
        content_length: Option<usize>,
    },
}

/// The most buffer an idle decoder keeps.
const KEPT_BUFFER: usize = 16 * 1024;

/// Incremental STOMP decoder. Feed it bytes with [`Decoder::feed`], take items with
/// [`Decoder::next_item`].
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of unconsumed data in `buf`.
    pos: usize,
    /// Where the NUL search resumes for a body without content-length.
    scan: usize,
    state: State,
    limits: Limits,
    failed: bool,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            buf: Vec::new(),
            pos: 0,
            scan: 0,
            state: State::Idle,
            limits,
            failed: false,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes held that do not yet form a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Appends received bytes. Call [`Decoder::next_item`] until it returns `Ok(None)`
    /// before feeding more, so that limits are enforced chunk by chunk.
    pub fn feed(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.scan = 0;
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete item, `Ok(None)` when more bytes are needed, or an error after
    /// which the decoder yields the same error forever.
    pub fn next_item(&mut self) -> Result<Option<Item>, StompError> {
        if self.failed {
            return Err(StompError::MissingNul);
        }
        let r = self.step();
        if r.is_err() {
            self.failed = true;
            self.buf = Vec::new();
            self.pos = 0;
        }
        r
    }

    fn step(&mut self) -> Result<Option<Item>, StompError> {
        loop {
            match &self.state {
                State::Idle => {
                    let data = &self.buf[self.pos..];
                    if data.is_empty() {
                        return Ok(None);
                    }
                    // Heart-beats: EOL between frames. NULs after a frame are tolerated too.
                    if data[0] == b'\n' {
                        self.pos += 1;
                        return Ok(Some(Item::HeartBeat));
                    }
                    if data[0] == b'\r' {
                        if data.len() < 2 {
                            return Ok(None);
                        }
                        if data[1] == b'\n' {
                            self.pos += 2;
                            return Ok(Some(Item::HeartBeat));
                        }
                    }
                    if data[0] == 0 {
                        self.pos += 1;
                        continue;
                    }
                    // Header block ends with an empty line.
                    let end = match find_header_end(data) {
                        Some(e) => e,
                        None => {
                            if data.len() > self.limits.max_header_bytes {
                                return Err(StompError::HeadersTooLarge {
                                    limit: self.limits.max_header_bytes,
                                });
                            }
                            // Reject a bad command early, without waiting for more bytes.
                            if let Some(nl) = data.iter().position(|&b| b == b'\n') {
                                let line = trim_cr(&data[..nl]);
                                if Command::parse(line).is_none() {
                                    return Err(StompError::UnknownCommand(
                                        String::from_utf8_lossy(&line[..line.len().min(64)])
                                            .into_owned(),
                                    ));
                                }
                            }
                            return Ok(None);
                        }
                    };
                    if end.block_len > self.limits.max_header_bytes {
                        return Err(StompError::HeadersTooLarge {
                            limit: self.limits.max_header_bytes,
                        });
                    }
                    let (command, headers) =
                        parse_header_block(&data[..end.block_len], &self.limits)?;
                    let content_length = match headers.get("content-length") {
                        Some(v) => {
                            let n: usize = v
                                .trim()
                                .parse()
                                .map_err(|_| StompError::BadContentLength(v.to_string()))?;
                            if n > self.limits.max_body {
                                return Err(StompError::BodyTooLarge {
                                    size: n,
                                    limit: self.limits.max_body,
                                });
                            }
                            Some(n)
                        }
                        None => None,
                    };
                    self.pos += end.total_len;
                    self.scan = self.pos;
                    self.state = State::Body {
                        command,
                        headers,
                        content_length,
                    };
                }
                State::Body { content_length, .. } => {
                    let data = &self.buf[self.pos..];
                    let body_len = match *content_length {
                        Some(n) => {
                            if data.len() < n + 1 {
                                return Ok(None);
                            }
                            if data[n] != 0 {
                                return Err(StompError::MissingNul);
                            }
                            n
                        }
                        None => {
                            let from = self.scan - self.pos;
                            match data[from..].iter().position(|&b| b == 0) {
                                Some(i) => from + i,
                                None => {
                                    if data.len() > self.limits.max_body {
                                        return Err(StompError::BodyTooLarge {
                                            size: data.len(),
                                            limit: self.limits.max_body,
                                        });
                                    }
                                    self.scan = self.buf.len();
                                    return Ok(None);
                                }
                            }
                        }
                    };
                    let body = data[..body_len].to_vec();
                    self.pos += body_len + 1;
                    let State::Body {
                        command, headers, ..
                    } = std::mem::replace(&mut self.state, State::Idle)
                    else {
                        unreachable!("state checked above");
                    };
                    self.compact();
                    return Ok(Some(Item::Frame(Frame {
                        command,
                        headers,
                        body,
                    })));
                }
            }
        }
    }

    fn compact(&mut self) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            // A large frame's buffer is not kept for the connection's life: a Manager
            // holds a connection per host, each of which sends tens of KiB of stats.
            if self.buf.capacity() > KEPT_BUFFER {
                self.buf.shrink_to(KEPT_BUFFER);
            }
            self.pos = 0;
            self.scan = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.scan = self.scan.saturating_sub(self.pos);
            self.pos = 0;
        }
    }
}

struct HeaderEnd {
    /// Length of command line plus header lines, without the blank line.
    block_len: usize,
    /// Including the blank line.
    total_len: usize,
}

fn find_header_end(data: &[u8]) -> Option<HeaderEnd> {
    let mut i = 0;
    while let Some(off) = data[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        let rest = &data[nl + 1..];
        if rest.first() == Some(&b'\n') {
            return Some(HeaderEnd {
                block_len: nl + 1,
                total_len: nl + 2,
            });
        }
        if rest.len() >= 2 && rest[0] == b'\r' && rest[1] == b'\n' {
            return Some(HeaderEnd {
                block_len: nl + 1,
                total_len: nl + 3,
            });
        }
        i = nl + 1;
    }
    None
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn parse_header_block(block: &[u8], limits: &Limits) -> Result<(Command, Headers), StompError> {
    let mut lines = block
        .split(|&b| b == b'\n')
        .map(trim_cr)
        .filter(|l| !l.is_empty());
    let cmd_line = lines.next().unwrap_or_default();
    let command = Command::parse(cmd_line).ok_or_else(|| {
        StompError::UnknownCommand(
            String::from_utf8_lossy(&cmd_line[..cmd_line.len().min(64)]).into_owned(),
        )
    })?;
    let escape = command.escapes_headers();
    let mut headers = Headers::new();
    for line in lines {
        if headers.len() >= limits.max_headers {
            return Err(StompError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        let line = std::str::from_utf8(line).map_err(|_| StompError::NotUtf8)?;
        let (k, v) = line.split_once(':').ok_or_else(|| {
            StompError::MalformedHeader(line.chars().take(64).collect::<String>())
        })?;
        if escape {
            headers.push(unescape(k)?, unescape(v)?);
        } else {
            headers.push(k, v);
        }
    }
    Ok((command, headers))
}

fn unescape(s: &str) -> Result<String, StompError> {
    if !s.contains('\\') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('c') => out.push(':'),
            Some('\\') => out.push('\\'),
            _ => return Err(StompError::BadEscape(s.chars().take(64).collect())),
        }
    }
    Ok(out)
}

/// Heart-beat negotiation, from the server's side. `client` is the CONNECT's
/// `heart-beat:cx,cy`; `server_min` is the smallest interval the server accepts (VDSM
/// clamps non-zero values to at least 1000 ms). Returns (server sends every, server
/// expects from client every) in milliseconds, 0 meaning never.
pub fn negotiate_heart_beat(client: Option<&str>, server_min: u64) -> (u64, u64) {
    let (cx, cy) = client
        .and_then(|v| {
            let (a, b) = v.split_once(',')?;
            Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?))
        })
        .unwrap_or((0, 0));
    let clamp = |v: u64| if v == 0 { 0 } else { v.max(server_min) };
    // cy: how often the client wants to receive; cx: how often the client sends.
    (clamp(cy), clamp(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(d: &mut Decoder) -> Result<Vec<Item>, StompError> {
        let mut v = Vec::new();
        while let Some(i) = d.next_item()? {
            v.push(i);
        }
        Ok(v)
    }

    /// A large frame's buffer is given back once the frame is taken: a Manager holds
    /// a connection per host.
    #[test]
    fn a_large_frames_buffer_is_not_kept() {
        let f = Frame::new(Command::Send)
            .header("destination", "x")
            .body(vec![b'a'; 200 * 1024]);
        let mut d = Decoder::new(Limits::default());
        d.feed(&f.encode());
        let items = decode_all(&mut d).expect("decodes");
        assert_eq!(items.len(), 1);
        assert!(d.buf.capacity() <= KEPT_BUFFER, "{}", d.buf.capacity());
        // And the next frame still decodes.
        d.feed(
            &Frame::new(Command::Send)
                .header("destination", "y")
                .body(b"z".to_vec())
                .encode(),
        );
        assert_eq!(decode_all(&mut d).expect("decodes").len(), 1);
    }

    #[test]
    fn round_trip_with_escapes() {
        let f = Frame::new(Command::Send)
            .header("destination", "a:b\nc\\d\re")
            .body(b"{\"x\":1}".to_vec());
        let mut d = Decoder::new(Limits::default());
        d.feed(&f.encode());
        let items = decode_all(&mut d).expect("decodes");
        assert_eq!(items.len(), 1);
        let Item::Frame(g) = &items[0] else {
            panic!("not a frame")
        };
        assert_eq!(g.headers.get("destination"), Some("a:b\nc\\d\re"));
        assert_eq!(g.body, b"{\"x\":1}");
        assert_eq!(g.headers.get("content-length"), Some("7"));
    }

    #[test]
    fn byte_by_byte_and_heartbeats() {
        let raw = b"\n\r\nCONNECT\r\naccept-version:1.2\r\nhost:x\r\n\r\n\0\nSEND\ndestination:q\n\nhello\0";
        let mut d = Decoder::new(Limits::default());
        let mut items = Vec::new();
        for b in raw.iter() {
            d.feed(&[*b]);
            items.extend(decode_all(&mut d).expect("valid"));
        }
        let frames: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                Item::Frame(f) => Some(f),
                _ => None,
            })
            .collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].command, Command::Connect);
        assert_eq!(frames[0].headers.get("accept-version"), Some("1.2"));
        assert_eq!(frames[1].body, b"hello");
        assert_eq!(
            items.iter().filter(|i| **i == Item::HeartBeat).count(),
            3,
            "two leading EOLs and one after the first frame"
        );
    }

    #[test]
    fn first_header_wins() {
        let mut d = Decoder::new(Limits::default());
        d.feed(b"SEND\nfoo:1\nfoo:2\n\n\0");
        let Some(Item::Frame(f)) = d.next_item().expect("ok") else {
            panic!("frame expected")
        };
        assert_eq!(f.headers.get("foo"), Some("1"));
    }

    #[test]
    fn content_length_allows_nul_in_body() {
        let mut d = Decoder::new(Limits::default());
        d.feed(b"SEND\ncontent-length:3\n\na\0b\0");
        let Some(Item::Frame(f)) = d.next_item().expect("ok") else {
            panic!("frame expected")
        };
        assert_eq!(f.body, b"a\0b");
    }

    #[test]
    fn oversized_content_length_refused_before_body() {
        let limits = Limits {
            max_body: 1000,
            ..Limits::default()
        };
        let mut d = Decoder::new(limits);
        d.feed(b"SEND\ncontent-length:1001\n\n");
        assert_eq!(
            d.next_item(),
            Err(StompError::BodyTooLarge {
                size: 1001,
                limit: 1000
            })
        );
    }

    #[test]
    fn oversized_body_without_length_refused() {
        let limits = Limits {
            max_body: 100,
            ..Limits::default()
        };
        let mut d = Decoder::new(limits);
        d.feed(b"SEND\n\n");
        assert_eq!(d.next_item(), Ok(None));
        d.feed(&[b'x'; 101]);
        assert!(matches!(
            d.next_item(),
            Err(StompError::BodyTooLarge { .. })
        ));
    }

    #[test]
    fn malformed_inputs() {
        for (raw, want) in [
            (&b"BOGUS\n\n\0"[..], "unknown command"),
            (b"SEND\nnocolon\n\n\0", "without a colon"),
            (b"SEND\nk:\\x\n\n\0", "invalid escape"),
            (b"SEND\ncontent-length:abc\n\n\0", "content-length"),
            (b"SEND\ncontent-length:1\n\nab\0", "NUL"),
            (b"GARBAGE-LINE\n", "unknown command"),
        ] {
            let mut d = Decoder::new(Limits::default());
            d.feed(raw);
            let e = decode_all(&mut d).expect_err("must fail");
            assert!(e.to_string().contains(want), "{e} vs {want}");
        }
    }

    #[test]
    fn connect_headers_not_unescaped() {
        let mut d = Decoder::new(Limits::default());
        d.feed(b"CONNECT\nlogin:a\\c\n\n\0");
        let Some(Item::Frame(f)) = d.next_item().expect("ok") else {
            panic!("frame expected")
        };
        assert_eq!(f.headers.get("login"), Some("a\\c"));
    }

    #[test]
    fn heart_beat_negotiation() {
        assert_eq!(negotiate_heart_beat(Some("0,24000"), 1000), (24000, 0));
        assert_eq!(negotiate_heart_beat(Some("10,5"), 1000), (1000, 1000));
        assert_eq!(negotiate_heart_beat(None, 1000), (0, 0));
        assert_eq!(negotiate_heart_beat(Some("x,y"), 1000), (0, 0));
    }
}
