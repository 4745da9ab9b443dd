//! JSON-RPC 2.0 messages as VDSM uses them inside STOMP frames: single requests,
//! batches, notifications (no `id`), named or positional params.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;

/// The error object of a JSON-RPC response.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }
    pub fn parse_error(detail: impl std::fmt::Display) -> Self {
        RpcError::new(PARSE_ERROR, format!("Parse error: {detail}"))
    }
    pub fn invalid_request(detail: impl std::fmt::Display) -> Self {
        RpcError::new(INVALID_REQUEST, format!("Invalid request: {detail}"))
    }
    pub fn method_not_found(method: &str) -> Self {
        RpcError::new(
            METHOD_NOT_FOUND,
            format!("The method does not exist or is not available: {method}"),
        )
    }
    pub fn invalid_params(detail: impl std::fmt::Display) -> Self {
        RpcError::new(INVALID_PARAMS, format!("Invalid params: {detail}"))
    }
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        RpcError::new(INTERNAL_ERROR, format!("Internal error: {detail}"))
    }
}

/// Request parameters as sent.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Params {
    #[default]
    None,
    Named(Map<String, Value>),
    Positional(Vec<Value>),
}

impl Params {
    /// Binds the params to a typed struct. `names` gives the order of positional
    /// parameters; named params are taken as they are.
    pub fn bind<T: DeserializeOwned>(&self, names: &[&str]) -> Result<T, RpcError> {
        let map = match self {
            Params::None => Map::new(),
            Params::Named(m) => m.clone(),
            Params::Positional(v) => {
                if v.len() > names.len() {
                    return Err(RpcError::invalid_params(format!(
                        "expected at most {} positional params, got {}",
                        names.len(),
                        v.len()
                    )));
                }
                names
                    .iter()
                    .zip(v.iter())
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect()
            }
        };
        serde_json::from_value(Value::Object(map)).map_err(RpcError::invalid_params)
    }

    pub fn to_value(&self) -> Value {
        match self {
            Params::None => Value::Object(Map::new()),
            Params::Named(m) => Value::Object(m.clone()),
            Params::Positional(v) => Value::Array(v.clone()),
        }
    }
}

/// A parsed request. `id == None` makes it a notification (no response).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub method: String,
    pub params: Params,
}

impl Request {
    pub fn new(id: impl Into<Value>, method: impl Into<String>, params: Value) -> Self {
        let params = match params {
            Value::Object(m) => Params::Named(m),
            Value::Array(v) => Params::Positional(v),
            _ => Params::None,
        };
        Request {
            id: Some(id.into()),
            method: method.into(),
            params,
        }
    }

    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("jsonrpc".into(), "2.0".into());
        m.insert("method".into(), Value::String(self.method.clone()));
        m.insert("params".into(), self.params.to_value());
        if let Some(id) = &self.id {
            m.insert("id".into(), id.clone());
        }
        Value::Object(m)
    }
}

/// A response: the id of the request and its result or error.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub id: Value,
    pub outcome: Result<Value, RpcError>,
}

impl Response {
    pub fn ok(id: Value, result: Value) -> Self {
        Response {
            id,
            outcome: Ok(result),
        }
    }
    pub fn err(id: Value, error: RpcError) -> Self {
        Response {
            id,
            outcome: Err(error),
        }
    }

    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("jsonrpc".into(), "2.0".into());
        match &self.outcome {
            // The `result` key must be present even for verbs without a result.
            Ok(v) => m.insert("result".into(), v.clone()),
            Err(e) => m.insert(
                "error".into(),
                serde_json::to_value(e).unwrap_or(Value::Null),
            ),
        };
        m.insert("id".into(), self.id.clone());
        Value::Object(m)
    }

    /// Parses a response object (client side).
    pub fn from_value(v: Value) -> Result<Response, RpcError> {
        let Value::Object(mut m) = v else {
            return Err(RpcError::invalid_request("response is not an object"));
        };
        let id = m.remove("id").unwrap_or(Value::Null);
        if let Some(e) = m.remove("error") {
            if !e.is_null() {
                let e: RpcError = serde_json::from_value(e).map_err(RpcError::invalid_params)?;
                return Ok(Response::err(id, e));
            }
        }
        match m.remove("result") {
            Some(r) => Ok(Response::ok(id, r)),
            None => Err(RpcError::invalid_request(
                "response has neither result nor error",
            )),
        }
    }
}

/// A server-initiated notification (VDSM events).
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub method: String,
    pub params: Value,
}

impl Notification {
    pub fn to_value(&self) -> Value {
        serde_json::json!({"jsonrpc": "2.0", "method": self.method, "params": self.params})
    }
}

/// One entry of an incoming message: a valid request, or an error to answer with.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Request(Request),
    Invalid(Response),
}

/// A whole incoming message body.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Single(Entry),
    Batch(Vec<Entry>),
}

/// Parses a message body. Never fails: malformed input becomes an [`Entry::Invalid`]
/// carrying the error response to send.
pub fn parse_message(body: &[u8]) -> Message {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Message::Single(Entry::Invalid(Response::err(
                Value::Null,
                RpcError::parse_error(e),
            )))
        }
    };
    match v {
        Value::Array(items) => {
            if items.is_empty() {
                return Message::Single(Entry::Invalid(Response::err(
                    Value::Null,
                    RpcError::invalid_request("empty batch"),
                )));
            }
            Message::Batch(items.into_iter().map(parse_entry).collect())
        }
        other => Message::Single(parse_entry(other)),
    }
}

fn parse_entry(v: Value) -> Entry {
    let Value::Object(mut m) = v else {
        return Entry::Invalid(Response::err(
            Value::Null,
            RpcError::invalid_request("not an object"),
        ));
    };
    let id = m.remove("id");
    let id_for_error = match &id {
        Some(v @ (Value::String(_) | Value::Number(_))) => v.clone(),
        _ => Value::Null,
    };
    let fail = |msg: &str| {
        Entry::Invalid(Response::err(
            id_for_error.clone(),
            RpcError::invalid_request(msg),
        ))
    };
    match &id {
        None | Some(Value::String(_)) | Some(Value::Number(_)) | Some(Value::Null) => {}
        _ => return fail("id must be a string, a number or null"),
    }
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return fail("jsonrpc must be \"2.0\"");
    }
    let method = match m.remove("method") {
        Some(Value::String(s)) => s,
        _ => return fail("method must be a string"),
    };
    let params = match m.remove("params") {
        None | Some(Value::Null) => Params::None,
        Some(Value::Object(o)) => Params::Named(o),
        Some(Value::Array(a)) => Params::Positional(a),
        Some(_) => return fail("params must be an object or an array"),
    };
    Entry::Request(Request { id, method, params })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn single_named() {
        let m = parse_message(br#"{"jsonrpc":"2.0","method":"Host.ping2","params":{},"id":"1"}"#);
        let Message::Single(Entry::Request(r)) = m else {
            panic!("request expected")
        };
        assert_eq!(r.method, "Host.ping2");
        assert_eq!(r.id, Some(json!("1")));
    }

    #[test]
    fn notification_has_no_id() {
        let m = parse_message(br#"{"jsonrpc":"2.0","method":"x"}"#);
        let Message::Single(Entry::Request(r)) = m else {
            panic!("request expected")
        };
        assert_eq!(r.id, None);
    }

    #[test]
    fn batch_with_bad_entry() {
        let m =
            parse_message(br#"[{"jsonrpc":"2.0","method":"a","id":1}, 5, {"method":"b","id":2}]"#);
        let Message::Batch(v) = m else {
            panic!("batch expected")
        };
        assert!(matches!(v[0], Entry::Request(_)));
        let Entry::Invalid(r) = &v[1] else { panic!() };
        assert_eq!(
            r.outcome.as_ref().err().map(|e| e.code),
            Some(INVALID_REQUEST)
        );
        let Entry::Invalid(r) = &v[2] else { panic!() };
        assert_eq!(r.id, json!(2));
    }

    #[test]
    fn parse_errors() {
        for raw in [&b"{"[..], b"", b"\xff", b"[]", b"\"x\""] {
            let Message::Single(Entry::Invalid(r)) = parse_message(raw) else {
                panic!("invalid expected for {raw:?}")
            };
            assert!(r.outcome.is_err());
        }
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    struct P {
        vm_id: String,
        #[serde(default)]
        force: bool,
    }

    #[test]
    fn bind_positional_and_named() {
        let p = Params::Positional(vec![json!("abc"), json!(true)]);
        let b: P = p.bind(&["vmId", "force"]).expect("binds");
        assert_eq!(b.vm_id, "abc");
        assert!(b.force);
        let p = Params::Named(
            json!({"vmId": "x"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let b: P = p.bind(&["vmId", "force"]).expect("binds");
        assert!(!b.force);
        let p = Params::Named(json!({"vmId": 5}).as_object().cloned().unwrap_or_default());
        let e = p.bind::<P>(&["vmId"]).expect_err("wrong type");
        assert_eq!(e.code, INVALID_PARAMS);
        let p = Params::Positional(vec![json!("a"), json!(true), json!(1)]);
        assert!(p.bind::<P>(&["vmId", "force"]).is_err());
    }

    #[test]
    fn response_shape() {
        let r = Response::ok(json!("u1"), Value::Null).to_value();
        assert_eq!(r, json!({"jsonrpc":"2.0","result":null,"id":"u1"}));
        let back = Response::from_value(r).expect("parses");
        assert_eq!(back.outcome, Ok(Value::Null));
    }
}
