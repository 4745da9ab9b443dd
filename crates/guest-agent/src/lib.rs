//! Halyard's guest agent: serves the QEMU guest agent protocol on the virtio-serial
//! port `org.qemu.guest_agent.0`, so that libvirt (`virsh qemu-agent-command`,
//! `domifaddr --source agent`, `virDomainGetGuestInfo`) and the host agent learn about
//! the guest. One small static executable with no runtime dependencies.
//!
//! - [`protocol`]: framing of untrusted input, requests, answers, errors.
//! - [`commands`]: the commands and what they read from the guest.
//! - [`serve`]: the loop over one byte stream.

pub mod commands;
pub mod protocol;

use std::io::{Read, Write};

use protocol::{answer, parse, Framer, Input, QgaError};

/// Answers every input of one stream until it ends. Returns the shutdown mode if a
/// guest-shutdown was asked for.
pub fn serve<R: Read, W: Write>(
    agent: &mut commands::Agent,
    rd: &mut R,
    wr: &mut W,
    max_message: usize,
) -> std::io::Result<Option<String>> {
    let mut framer = Framer::new(max_message);
    let mut buf = [0u8; 4096];
    loop {
        let n = match rd.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for input in framer.feed(&buf[..n]) {
            if let Some(out) = handle(agent, input) {
                wr.write_all(&out)?;
                wr.flush()?;
            }
            if let Some(mode) = agent.shutdown.take() {
                return Ok(Some(mode));
            }
        }
    }
}

/// The bytes to write for one input (None: no answer).
pub fn handle(agent: &mut commands::Agent, input: Input) -> Option<Vec<u8>> {
    let err = |e: QgaError| Some(answer(None, &Err(e)));
    match input {
        Input::TooLong => err(QgaError::generic("JSON parse error, message too long")),
        Input::Incomplete => err(QgaError::generic("JSON parse error, incomplete message")),
        Input::Message(m) => {
            let req = match parse(&m) {
                Ok(r) => r,
                Err(e) => return err(e),
            };
            let delimited = req.execute == "guest-sync-delimited";
            match agent.run(&req) {
                Ok(None) => None,
                r => {
                    let r = r.map(|v| v.unwrap_or(serde_json::Value::Null));
                    let mut out = answer(req.id.as_ref(), &r);
                    if delimited {
                        out.insert(0, 0xFF);
                    }
                    Some(out)
                }
            }
        }
    }
}
