//! `halyard disks upload FILE --storage-domain SD`: a disk image (raw, qcow2) or an
//! ISO into a new disk, as the SDK's upload_disk.py does it: the disk is added (thin
//! COW for a qcow2, raw for a raw image or an ISO, `content_type=iso` for an ISO), an
//! image transfer (format raw) is started, the image's guest data is read through a
//! local read-only qemu-nbd (its extents: holes are skipped, the new disk reads
//! zeros there) and sent with `PUT`s with `Content-Range` to the transfer URL (the
//! host's, or the Manager's proxy with `--proxy`), then flushed and finalized. A
//! progress bar on stderr; a failure cancels the transfer (the disk goes with it).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::rest::Session;

/// Bytes one PUT carries.
const CHUNK: u64 = 8 << 20;

async fn wait_for(
    sess: &Session,
    path: &str,
    what: &str,
    done: impl Fn(&Value) -> Option<anyhow::Result<()>>,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let v = sess.call("GET", path, None).await?;
        if let Some(r) = done(&v) {
            r?;
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn bar(done: u64, total: u64, started: Instant) {
    let pct = (done * 100).checked_div(total).unwrap_or(100).min(100);
    let filled = (pct / 5) as usize;
    let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001) / (1 << 20) as f64;
    eprint!(
        "\r[{}{}] {pct:3}% {:>8} MiB {rate:7.1} MiB/s",
        "#".repeat(filled),
        " ".repeat(20 - filled),
        done >> 20
    );
    let _ = std::io::stderr().flush();
}

/// Uploads `file` into a new disk on `sd`; returns the disk's id.
pub async fn upload(
    sess: &Session,
    tls: std::sync::Arc<rustls::ClientConfig>,
    file: &Path,
    sd: &str,
    name: Option<String>,
    proxy: bool,
) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(file)
        .output()
        .await
        .context("running qemu-img info")?;
    if !out.status.success() {
        bail!(
            "qemu-img info: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let info: Value = serde_json::from_slice(&out.stdout)?;
    let fmt = info["format"].as_str().unwrap_or("").to_string();
    if !matches!(fmt.as_str(), "raw" | "qcow2") {
        bail!("{}: format {fmt:?}; raw, qcow2 or an ISO", file.display());
    }
    let vsize = info["virtual-size"].as_u64().unwrap_or(0);
    let iso = fmt == "raw" && {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(file)?;
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, 0x8000).is_ok() && &b == b"\x01CD001\x01\x00"
    };
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "upload".into());
    let name = name.unwrap_or_else(|| {
        format!(
            "{stem}.{}",
            if iso {
                "iso"
            } else if fmt == "qcow2" {
                "qcow2"
            } else {
                "raw"
            }
        )
    });
    let disk_format = if fmt == "qcow2" { "cow" } else { "raw" };
    // A disk's size is a multiple of 512 bytes.
    let size = vsize.div_ceil(512) * 512;
    let d = sess
        .call(
            "POST",
            "/disks",
            Some(json!({
                "name": name, "format": disk_format, "provisioned_size": size, "sparse": true,
                "content_type": if iso { "iso" } else { "data" },
                "storage_domains": {"storage_domain": [{"name": sd}]},
            })),
        )
        .await?;
    let disk_id = d["id"].as_str().unwrap_or_default().to_string();
    eprintln!("disk {name} ({disk_id}): {disk_format}, {} MiB", size >> 20);
    wait_for(
        sess,
        &format!("/disks/{disk_id}"),
        "the disk",
        |v| match v["status"].as_str() {
            Some("ok") => Some(Ok(())),
            Some("illegal") => Some(Err(anyhow::anyhow!("the disk became illegal"))),
            _ => None,
        },
    )
    .await?;
    let t = sess
        .call(
            "POST",
            "/imagetransfers",
            Some(json!({"disk": {"id": disk_id}, "direction": "upload", "format": "raw"})),
        )
        .await?;
    let tid = t["id"].as_str().unwrap_or_default().to_string();
    let tpath = format!("/imagetransfers/{tid}");
    let t = wait_for(sess, &tpath, "the transfer", |v| {
        match v["phase"].as_str() {
            Some("transferring") => Some(Ok(())),
            Some("initializing") => None,
            Some(p) => Some(Err(anyhow::anyhow!("the transfer is {p}"))),
            None => None,
        }
    })
    .await?;
    let url = t[if proxy { "proxy_url" } else { "transfer_url" }]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let sent = send(tls, file, &fmt, &url, vsize).await;
    eprintln!();
    if let Err(e) = sent {
        let _ = sess
            .call("POST", &format!("{tpath}/cancel"), Some(json!({})))
            .await;
        return Err(e.context("uploading (the transfer was cancelled and its disk removed)"));
    }
    sess.call("POST", &format!("{tpath}/finalize"), Some(json!({})))
        .await?;
    wait_for(sess, &tpath, "the transfer to finish", |v| {
        match v["phase"].as_str() {
            Some("finished_success") => Some(Ok(())),
            Some("finished_failure") => Some(Err(anyhow::anyhow!(
                "the Manager refused the uploaded image"
            ))),
            _ => None,
        }
    })
    .await?;
    Ok(disk_id)
}

/// Reads the image through a local qemu-nbd and PUTs its data extents.
async fn send(
    tls: std::sync::Arc<rustls::ClientConfig>,
    file: &Path,
    fmt: &str,
    url: &str,
    vsize: u64,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("halyard-upload-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("nbd.sock");
    let mut nbd = tokio::process::Command::new("qemu-nbd")
        .arg("--read-only")
        .arg("--persistent")
        .arg(format!("--format={fmt}"))
        .arg(format!("--socket={}", sock.display()))
        .arg(file)
        .kill_on_drop(true)
        .spawn()
        .context("starting qemu-nbd")?;
    let r = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if Instant::now() > deadline {
                bail!("qemu-nbd did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut c = halyard_imageio::nbd::Client::connect(&sock).await?;
        let extents = c.extents().await?;
        let started = Instant::now();
        let mut done = 0u64;
        let mut buf = vec![0u8; CHUNK as usize];
        for (start, len, flags) in extents {
            if flags & halyard_imageio::nbd::STATE_ZERO != 0 {
                // The new disk reads zeros there already.
                done += len;
                bar(done, vsize, started);
                continue;
            }
            let mut pos = start;
            while pos < start + len {
                let n = (start + len - pos).min(CHUNK) as usize;
                c.read(pos, &mut buf[..n]).await?;
                let range = format!("bytes {pos}-{}/*", pos + n as u64 - 1);
                let r = halyard_client::http::request(
                    tls.clone(),
                    "PUT",
                    &format!("{url}?flush=n"),
                    &[
                        ("Content-Range", &range),
                        ("Content-Type", "application/octet-stream"),
                    ],
                    &buf[..n],
                )
                .await?;
                if r.status != 200 {
                    bail!("PUT {range}: {} {}", r.status, r.text().trim());
                }
                pos += n as u64;
                done += n as u64;
                bar(done, vsize, started);
            }
        }
        let r = halyard_client::http::request(
            tls.clone(),
            "PATCH",
            url,
            &[("Content-Type", "application/json")],
            br#"{"op": "flush"}"#,
        )
        .await?;
        if r.status != 200 {
            bail!("flush: {} {}", r.status, r.text().trim());
        }
        c.disconnect().await;
        Ok(())
    }
    .await;
    let _ = nbd.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}
