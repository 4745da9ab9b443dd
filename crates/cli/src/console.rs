//! `halyard vms console NAME`: a VM's serial console through the Manager (its
//! WebSocket at `/ovirt-engine/services/console/serial/{id}`), as `virsh console`:
//! the terminal in raw mode, `Ctrl-]` ends the session. Without a terminal (a pipe),
//! the end of standard input ends it.

use std::io::{IsTerminal, Read, Write};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::rest::Session;

/// `Ctrl-]`, virsh's escape character.
pub const ESCAPE: u8 = 0x1d;

/// The terminal's settings, put back when dropped.
struct RawTerminal(Option<String>);

fn stty(args: &[&str]) -> Option<String> {
    let o = std::process::Command::new("stty")
        .args(args)
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

impl RawTerminal {
    fn enter() -> RawTerminal {
        if !std::io::stdin().is_terminal() {
            return RawTerminal(None);
        }
        let saved = stty(&["-g"]);
        if saved.is_some() {
            stty(&["raw", "-echo"]);
        }
        RawTerminal(saved)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            stty(&[s.as_str()]);
        }
    }
}

/// Input up to the escape character (`None` once it or the end of input came).
fn until_escape(b: &[u8]) -> (&[u8], bool) {
    match b.iter().position(|&c| c == ESCAPE) {
        Some(i) => (&b[..i], true),
        None => (b, false),
    }
}

pub async fn serial(sess: &Session, id: &str, name: &str) -> anyhow::Result<()> {
    let (url, tls, token) = sess.parts();
    let (host, port, _) = halyard_client::http::split_url(url)?;
    let stream = halyard_client::connect_tls(&host, port, tls).await?;
    let target = format!(
        "wss://{}:{port}/ovirt-engine/services/console/serial/{id}",
        if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        }
    );
    let mut req = target.into_client_request().context("the console's URL")?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("the token is not a header value")?,
    );
    let (ws, _) = match tokio_tungstenite::client_async(req, stream).await {
        Ok(x) => x,
        Err(tungstenite::Error::Http(r)) => {
            let body = r
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .trim()
                .to_string();
            bail!(
                "the console of vm {name} was refused: {body} (HTTP {})",
                r.status().as_u16()
            );
        }
        Err(e) => bail!("the console of vm {name}: {e}"),
    };
    eprint!("Connected to vm {name}'s serial console. Escape character is ^]\r\n");
    let raw = RawTerminal::enter();
    let (mut tx, mut rx) = ws.split();
    // Standard input on its own thread (a blocking read never holds the runtime).
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let (data, escaped) = until_escape(&buf[..n]);
                    if !data.is_empty() && in_tx.blocking_send(data.to_vec()).is_err() {
                        break;
                    }
                    if escaped {
                        break;
                    }
                }
            }
        }
    });
    let mut stdout = std::io::stdout();
    let r: anyhow::Result<()> = loop {
        tokio::select! {
            m = rx.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    stdout.write_all(&b)?;
                    stdout.flush()?;
                }
                Some(Ok(Message::Text(t))) => {
                    stdout.write_all(t.as_bytes())?;
                    stdout.flush()?;
                }
                Some(Ok(Message::Close(_))) | None => break Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(e.into()),
            },
            i = in_rx.recv() => match i {
                Some(data) => tx.send(Message::Binary(data.into())).await?,
                None => {
                    let _ = tx.send(Message::Close(None)).await;
                    break Ok(());
                }
            },
        }
    };
    drop(raw);
    eprint!("\r\nDisconnected from vm {name}'s serial console.\r\n");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escape_character_ends_input() {
        assert_eq!(until_escape(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(until_escape(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(until_escape(b"\x1d"), (&b""[..], true));
    }
}
