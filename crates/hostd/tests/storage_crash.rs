//! Crash safety of Volume.create: the SPM's agent is SIGKILLed at a random moment of
//! the operation, many times; after each restart the new SPM rolls back what was half
//! done. Every volume on the domain is then LEGAL and complete (qemu-img check clean,
//! metadata, lease) or gone without a trace: no ILLEGAL volume, no orphan file.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use halyard_testinfra::storage::{
    call, connect_pool, connect_shared, create_domain_and_pool, shared_dir, spm_start, task_ok,
    PoolIds, BLANK,
};
use halyard_testinfra::{HostOptions, TestHost};
use serde_json::json;

const ROUNDS: usize = 60;

fn check_domain(root: &Path) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let mut volumes = 0;
    let images = root.join("images");
    for img in std::fs::read_dir(&images).expect("images").flatten() {
        let name = img.file_name().to_string_lossy().into_owned();
        if name.starts_with("_remove_me_") {
            problems.push(format!("leftover {name}"));
            continue;
        }
        let files: BTreeSet<String> = std::fs::read_dir(img.path())
            .expect("image dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if files.is_empty() {
            problems.push(format!("empty image {name}"));
        }
        for f in &files {
            let Some(vol) = f.strip_suffix(".meta") else {
                let owner = f.strip_suffix(".lease").unwrap_or(f);
                if !files.contains(&format!("{owner}.meta")) {
                    problems.push(format!("orphan file {name}/{f}"));
                }
                continue;
            };
            volumes += 1;
            let meta = std::fs::read_to_string(img.path().join(f)).unwrap_or_default();
            if !meta.contains("LEGALITY=LEGAL\n") || !meta.ends_with("EOF\n") {
                problems.push(format!("volume {name}/{vol} not legal: {meta:?}"));
            }
            for part in [vol.to_string(), format!("{vol}.lease")] {
                if !files.contains(&part) {
                    problems.push(format!("volume {name}/{vol} lacks {part}"));
                }
            }
            if meta.contains("FORMAT=COW") {
                let out = std::process::Command::new("qemu-img")
                    .args(["check", "-q", "-f", "qcow2", vol])
                    .current_dir(img.path())
                    .output()
                    .expect("qemu-img");
                if !out.status.success() {
                    problems.push(format!(
                        "qemu-img check {name}/{vol}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
        }
    }
    (volumes, problems)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spm_killed_during_volume_create_many_times() {
    let mut o = HostOptions::new(env!("CARGO_BIN_EXE_halyard-hostd"));
    o.sanlock = true;
    o.log_filter = "info".into();
    let mut host = TestHost::start(o).await;
    let dir = shared_dir("crash");
    let ids = PoolIds::new();
    let c = host.client().await.expect("connect");
    connect_shared(&c, &dir).await;
    create_domain_and_pool(&c, &dir, &ids).await;
    connect_pool(&c, &ids, 1).await;
    task_ok(&c, &spm_start(&c, &ids).await).await;
    c.close().await;
    let root = dir.join(&ids.sd);

    // A chain to snapshot on top of, so that some rounds also flip a parent.
    let chain_img = uuid::Uuid::new_v4().to_string();
    let mut leaf = BLANK.to_string();

    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // How long one Volume.create takes here, to spread the kills over it.
    let typical = {
        let c = host.client().await.expect("connect");
        let t0 = std::time::Instant::now();
        let img = uuid::Uuid::new_v4().to_string();
        let vol = uuid::Uuid::new_v4().to_string();
        let t = halyard_testinfra::storage::volume_create(
            &c,
            &ids,
            &img,
            &vol,
            1 << 30,
            true,
            BLANK,
            BLANK,
        )
        .await;
        task_ok(&c, &t).await;
        c.close().await;
        t0.elapsed()
    };
    eprintln!("one Volume.create takes {typical:?}");
    // (the measured time includes up to 50 ms of status polling)
    let span_us = (typical.as_micros() as u64 / 2).max(1000);
    let (mut completed, mut rolled_back) = (1, 0);
    for round in 0..ROUNDS {
        let c = host.client().await.expect("connect");
        let snapshot = round % 3 == 0 && leaf != BLANK;
        let (img, src_img, src_vol) = if snapshot || leaf == BLANK {
            (chain_img.clone(), chain_img.clone(), leaf.clone())
        } else {
            (
                uuid::Uuid::new_v4().to_string(),
                BLANK.to_string(),
                BLANK.to_string(),
            )
        };
        let src_img = if src_vol == BLANK {
            BLANK.to_string()
        } else {
            src_img
        };
        let vol = uuid::Uuid::new_v4().to_string();
        let params = json!({"volumeID": vol, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": img,
            "size": (1u64 << 30).to_string(), "volFormat": 4, "preallocate": 2, "diskType": "DATA", "desc": "",
            "srcImgUUID": src_img, "srcVolUUID": src_vol});
        let delay = Duration::from_micros(rand() % span_us);
        let t0 = tokio::time::Instant::now();
        let call_fut = c.call_value("Volume.create", params);
        // The task id comes back at once; the work goes on in the agent. Kill it
        // `delay` after the request, wherever the work is by then.
        let _ = tokio::time::timeout(delay, call_fut).await;
        tokio::time::sleep_until(t0 + delay).await;
        host.kill9();

        // A new agent process becomes SPM again and rolls back half-done work.
        host.restart().await;
        let c = host.client().await.expect("reconnect");
        connect_pool(&c, &ids, 1).await;
        task_ok(&c, &spm_start(&c, &ids).await).await;
        let (_, problems) = check_domain(&root);
        assert!(
            problems.is_empty(),
            "round {round} (kill after {delay:?}): {problems:#?}"
        );
        let exists = root
            .join("images")
            .join(&img)
            .join(format!("{vol}.meta"))
            .exists();
        if exists {
            completed += 1;
            if img == chain_img {
                leaf = vol.clone();
            }
        } else {
            rolled_back += 1;
        }
        // The chain stays usable.
        if leaf != BLANK {
            call(&c, "Image.prepare", json!({"storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": chain_img, "volumeID": leaf})).await;
        }
        c.close().await;
    }
    let (volumes, problems) = check_domain(&root);
    assert!(problems.is_empty(), "{problems:#?}");
    eprintln!("{ROUNDS} kills: {completed} volumes completed, {rolled_back} rolled back; {volumes} volumes on the domain");
    // Kills that interrupted an operation midway left something the new SPM removed.
    let midway = host
        .log()
        .matches("rolled back unfinished operations")
        .count();
    eprintln!("{midway} rounds left half-done work that the next SPM rolled back");
    assert!(
        midway > 0,
        "no kill landed inside an operation; the test proves nothing"
    );
    assert!(completed > 1, "no operation ever completed");
    assert_eq!(volumes, completed);
}
