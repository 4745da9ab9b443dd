//! The QEMU guest agent wire protocol: JSON objects `{"execute": .., "arguments": ..,
//! "id": ..}` in, `{"return": ..}` or `{"error": {"class", "desc"}}` out, one per line.
//!
//! Input is untrusted (the host, or anything that can write the port). The [`Framer`]
//! cuts the byte stream into messages: a message ends when its top-level object closes
//! (strings and escapes are followed), or at a newline while it is incomplete (then it
//! is an error). A 0xFF byte drops a partial message (the client resynchronises, as
//! with qemu-ga). A message longer than the limit is an error and is skipped up to its
//! end.

use serde_json::{json, Map, Value};

/// Default largest message (qemu-ga's limit is in this range).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// One framed input.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A complete message (bytes of one JSON object, or garbage to answer with an error).
    Message(Vec<u8>),
    /// A newline ended an incomplete object.
    Incomplete,
    /// A message longer than the limit (its bytes were dropped).
    TooLong,
}

/// Cuts bytes into messages; see the module doc.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Skipping an over-long message until its end.
    skipping: bool,
    max: usize,
}

impl Framer {
    pub fn new(max: usize) -> Framer {
        Framer {
            buf: Vec::new(),
            depth: 0,
            in_string: false,
            escaped: false,
            skipping: false,
            max,
        }
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.depth = 0;
        self.in_string = false;
        self.escaped = false;
    }

    /// Feeds bytes; returns the inputs they complete.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Input> {
        let mut out = Vec::new();
        for &b in data {
            if b == 0xFF {
                self.reset();
                self.skipping = false;
                continue;
            }
            if self.skipping {
                // The over-long message ends at its closing brace or a newline.
                self.track(b);
                if b == b'\n' || (self.depth == 0 && !self.in_string && b == b'}') {
                    self.reset();
                    self.skipping = false;
                }
                continue;
            }
            if self.buf.is_empty() && self.depth == 0 && b.is_ascii_whitespace() {
                continue;
            }
            // JSON strings cannot hold a raw newline: it always ends a message.
            if b == b'\n' {
                if !self.buf.is_empty() {
                    // A line that is not a complete object.
                    let msg = std::mem::take(&mut self.buf);
                    let complete = self.depth == 0;
                    self.reset();
                    out.push(if complete {
                        Input::Message(msg)
                    } else {
                        Input::Incomplete
                    });
                }
                continue;
            }
            self.buf.push(b);
            self.track(b);
            if self.buf.len() > self.max {
                let done = self.depth == 0 && !self.in_string;
                self.reset();
                self.skipping = !done;
                out.push(Input::TooLong);
                continue;
            }
            if self.depth == 0 && !self.in_string && (b == b'}' || b == b']') {
                out.push(Input::Message(std::mem::take(&mut self.buf)));
                self.reset();
            }
        }
        out
    }

    fn track(&mut self, b: u8) {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            return;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            _ => {}
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub execute: String,
    pub arguments: Map<String, Value>,
    pub id: Option<Value>,
}

/// An error answer: qemu-ga's classes.
#[derive(Debug, Clone, PartialEq)]
pub struct QgaError {
    pub class: &'static str,
    pub desc: String,
}

impl QgaError {
    pub fn generic(desc: impl Into<String>) -> QgaError {
        QgaError {
            class: "GenericError",
            desc: desc.into(),
        }
    }
    pub fn not_found(cmd: &str) -> QgaError {
        QgaError {
            class: "CommandNotFound",
            desc: format!("The command {cmd} has not been found"),
        }
    }
    pub fn disabled(cmd: &str) -> QgaError {
        QgaError {
            class: "CommandNotFound",
            desc: format!("The command {cmd} has been disabled for this instance"),
        }
    }
    pub fn bad_param(name: &str, expected: &str) -> QgaError {
        QgaError::generic(format!(
            "Invalid parameter type for '{name}', expected: {expected}"
        ))
    }
    pub fn missing(name: &str) -> QgaError {
        QgaError::generic(format!("Parameter '{name}' is missing"))
    }
}

/// Parses one framed message into a request.
pub fn parse(msg: &[u8]) -> Result<Request, QgaError> {
    let v: Value = serde_json::from_slice(msg)
        .map_err(|e| QgaError::generic(format!("JSON parse error, {e}")))?;
    let Value::Object(mut o) = v else {
        return Err(QgaError::generic("Expected 'object' in QMP input"));
    };
    let id = o.remove("id");
    let execute = match o.remove("execute") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(QgaError::generic(
                "QMP input member 'execute' must be a string",
            ))
        }
        None => return Err(QgaError::generic("QMP input lacks member 'execute'")),
    };
    let arguments = match o.remove("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(a)) => a,
        Some(_) => {
            return Err(QgaError::generic(
                "QMP input member 'arguments' must be an object",
            ))
        }
    };
    if let Some((k, _)) = o.iter().next() {
        return Err(QgaError::generic(format!(
            "QMP input member '{k}' is unexpected"
        )));
    }
    Ok(Request {
        execute,
        arguments,
        id,
    })
}

/// The answer line (without the newline) for a result.
pub fn answer(id: Option<&Value>, r: &Result<Value, QgaError>) -> Vec<u8> {
    let mut v = match r {
        Ok(x) => json!({ "return": x }),
        Err(e) => json!({"error": {"class": e.class, "desc": e.desc}}),
    };
    if let Some(id) = id {
        v["id"] = id.clone();
    }
    let mut s = serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec());
    s.push(b'\n');
    s
}

/// Typed access to arguments.
pub struct Args<'a>(pub &'a Map<String, Value>);

impl Args<'_> {
    pub fn int(&self, k: &str) -> Result<Option<i64>, QgaError> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| QgaError::bad_param(k, "integer")),
        }
    }
    pub fn str(&self, k: &str) -> Result<Option<&str>, QgaError> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(QgaError::bad_param(k, "string")),
        }
    }
    pub fn bool(&self, k: &str) -> Result<Option<bool>, QgaError> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(QgaError::bad_param(k, "boolean")),
        }
    }
    pub fn strings(&self, k: &str) -> Result<Vec<String>, QgaError> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| QgaError::bad_param(k, "array of strings"))
                })
                .collect(),
            Some(_) => Err(QgaError::bad_param(k, "array")),
        }
    }
}

/// Standard base64 (guest-exec input and output).
pub fn b64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

pub fn b64_decode(s: &str) -> Result<Vec<u8>, QgaError> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if !bytes.len().is_multiple_of(4) {
        return Err(QgaError::generic("Invalid base64 data"));
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for q in bytes.chunks(4) {
        let pad = q.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 {
            return Err(QgaError::generic("Invalid base64 data"));
        }
        let mut n = 0u32;
        for (i, c) in q.iter().enumerate() {
            let v = if i >= 4 - pad {
                0
            } else {
                val(*c).ok_or_else(|| QgaError::generic("Invalid base64 data"))?
            };
            n = (n << 6) | v;
        }
        let b = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&b[..3 - pad]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msgs(f: &mut Framer, s: &[u8]) -> Vec<Input> {
        f.feed(s)
    }

    #[test]
    fn frames_objects_lines_and_resync() {
        let mut f = Framer::new(1024);
        let r = msgs(
            &mut f,
            b"{\"execute\":\"guest-ping\"}\n{\"execute\":\"a\",\"arguments\":{\"x\":\"}{\\\"\"}}",
        );
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            Input::Message(b"{\"execute\":\"guest-ping\"}".to_vec())
        );
        // Half an object, then a newline: an error, then the next one is fine.
        let r = msgs(
            &mut f,
            b"{\"execute\": \"guest-\n{\"execute\":\"guest-ping\"}",
        );
        assert_eq!(r[0], Input::Incomplete);
        assert!(matches!(r[1], Input::Message(_)));
        // 0xFF drops a partial message.
        let r = msgs(&mut f, b"{\"execute\"\xff{\"execute\":\"x\"}");
        assert_eq!(r, vec![Input::Message(b"{\"execute\":\"x\"}".to_vec())]);
        // Over-long: one TooLong, the rest of it skipped, then service goes on.
        let mut long = b"{\"execute\":\"".to_vec();
        long.extend(std::iter::repeat_n(b'a', 5000));
        long.extend(b"\"}\n{\"execute\":\"guest-ping\"}");
        let r = msgs(&mut f, &long);
        assert_eq!(r[0], Input::TooLong);
        assert_eq!(r.len(), 2, "{r:?}");
        // Garbage is a message (answered with a parse error).
        let r = msgs(&mut f, b"hello\n");
        assert_eq!(r, vec![Input::Message(b"hello".to_vec())]);
    }

    #[test]
    fn parses_requests_and_refuses_bad_ones() {
        let r = parse(br#"{"execute":"guest-sync","arguments":{"id":5},"id":"x"}"#).expect("ok");
        assert_eq!(r.execute, "guest-sync");
        assert_eq!(r.id, Some(json!("x")));
        assert!(parse(b"[1]").is_err());
        assert!(parse(br#"{"execute":1}"#).is_err());
        assert!(parse(br#"{"execute":"a","arguments":3}"#).is_err());
        assert!(parse(br#"{"execute":"a","extra":3}"#).is_err());
        assert!(parse(b"{").is_err());
        let a = json!({"id": "x"});
        let m = a.as_object().expect("obj");
        assert_eq!(
            Args(m).int("id").expect_err("type").desc,
            "Invalid parameter type for 'id', expected: integer"
        );
    }

    #[test]
    fn base64_round_trip() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            assert_eq!(
                b64_decode(&b64_encode(s.as_bytes())).expect("ok"),
                s.as_bytes()
            );
        }
        assert_eq!(b64_encode(b"foobar"), "Zm9vYmFy");
        assert!(b64_decode("Zm9v!").is_err());
        assert!(b64_decode("Z===").is_err());
    }

    proptest! {
        #[test]
        fn framer_and_parser_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20)) {
            let mut f = Framer::new(256);
            for c in &chunks {
                for i in f.feed(c) {
                    if let Input::Message(m) = i {
                        prop_assert!(m.len() <= 256);
                        let _ = parse(&m);
                    }
                }
            }
        }

        #[test]
        fn every_object_comes_out_whole(names in proptest::collection::vec("[a-z\\-]{1,20}", 1..10), split in 1usize..50) {
            let mut stream = Vec::new();
            for n in &names {
                stream.extend(serde_json::to_vec(&json!({"execute": n, "arguments": {"s": "}{\"\n"}})).expect("json"));
            }
            let mut f = Framer::new(MAX_MESSAGE);
            let mut got = Vec::new();
            for c in stream.chunks(split) {
                for i in f.feed(c) {
                    if let Input::Message(m) = i {
                        got.push(parse(&m).expect("parses").execute);
                    }
                }
            }
            prop_assert_eq!(got, names);
        }

        #[test]
        fn base64_any(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(b64_decode(&b64_encode(&data)).expect("ok"), data);
        }
    }
}
