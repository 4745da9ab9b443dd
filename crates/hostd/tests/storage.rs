//! Storage on one host (the root namespace's sanlock daemon): a POSIX domain on oVirt's
//! layout, a pool, the SPM role, volumes, a template, a VM booting from a thin COW disk
//! on the template, a live snapshot, and bad input.

use std::time::Duration;

use halyard_testinfra::storage::{
    call, call_err, connect_pool, connect_shared, create_domain_and_pool, shared_dir, spm_start,
    spm_status, task_ok, volume_create, PoolIds, BLANK,
};
use halyard_testinfra::{event_status, guest, wait_event, GuestSpec, HostOptions, TestHost};
use serde_json::json;

fn opts() -> HostOptions {
    let mut o = HostOptions::new(env!("CARGO_BIN_EXE_halyard-hostd"));
    o.sanlock = true;
    o
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn qemu_img_check(path: &std::path::Path) {
    let out = std::process::Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(path)
        .current_dir(path.parent().expect("dir"))
        .output()
        .expect("qemu-img");
    let err = String::from_utf8_lossy(&out.stderr);
    // Raw volumes have nothing to check.
    assert!(
        out.status.success() || err.contains("does not support checks"),
        "qemu-img check {}: {err}",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_pool_spm_volumes_template_vm_and_snapshot() {
    let host = TestHost::start(opts()).await;
    let c = host.client().await.expect("connect");
    let dir = shared_dir("single");
    let ids = PoolIds::new();
    connect_shared(&c, &dir).await;
    create_domain_and_pool(&c, &dir, &ids).await;

    // The on-disk layout is oVirt's.
    let root = dir.join(&ids.sd);
    for f in ["metadata", "ids", "leases", "inbox", "outbox", "xleases"] {
        assert!(root.join("dom_md").join(f).exists(), "dom_md/{f}");
    }
    let md = std::fs::read_to_string(root.join("dom_md/metadata")).expect("metadata");
    assert!(
        md.contains("ROLE=Master") && md.contains(&format!("POOL_UUID={}", ids.sp)),
        "{md}"
    );
    assert!(md.lines().last().expect("line").starts_with("_SHA_CKSUM="));
    assert_eq!(
        std::fs::metadata(root.join("dom_md/leases"))
            .expect("leases")
            .len(),
        2 << 20
    );
    let info = call(
        &c,
        "StorageDomain.getInfo",
        json!({"storagedomainID": ids.sd}),
    )
    .await;
    assert_eq!(info["role"], "Master");
    assert_eq!(info["version"], "5");

    // SPM-only verbs fail cleanly before the role is held.
    connect_pool(&c, &ids, 1).await;
    let img = uuid();
    let base = uuid();
    let code = call_err(
        &c,
        "Volume.create",
        json!({"volumeID": base, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": img,
               "size": "1048576", "volFormat": 5, "preallocate": 2, "diskType": "DATA", "desc": "",
               "srcImgUUID": BLANK, "srcVolUUID": BLANK}),
    )
    .await;
    assert_eq!(code, 654, "Not SPM");
    let st = spm_status(&c, &ids).await;
    assert_eq!(st["spmStatus"], "Free");

    let task = spm_start(&c, &ids).await;
    task_ok(&c, &task).await;
    let st = spm_status(&c, &ids).await;
    assert_eq!(st["spmStatus"], "SPM", "{st}");
    assert_eq!(st["spmId"], 1);
    assert!(st["spmLver"].as_i64().expect("lver") >= 1);
    assert_eq!(
        call_err(&c, "StoragePool.spmStart", json!({"storagepoolID": ids.sp, "prevID": -1, "prevLver": "-1", "enableScsiFencing": "false"})).await,
        656,
        "already SPM"
    );

    // A raw base volume holding the guest image is not needed for a direct-kernel
    // guest: the template is a small raw disk; the VM gets a thin COW layer on it.
    let t = volume_create(&c, &ids, &img, &base, 64 << 20, false, BLANK, BLANK).await;
    task_ok(&c, &t).await;
    let vi = call(&c, "Volume.getInfo", json!({"volumeID": base, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": img})).await;
    assert_eq!(vi["legality"], "LEGAL");
    assert_eq!(vi["format"], "RAW");
    assert_eq!(vi["capacity"], (64u64 << 20).to_string());
    assert_eq!(vi["pool"], ids.sp);

    // Template: copy to a SHARED volume in a new image.
    let timg = uuid();
    let tvol = uuid();
    let t = call(
        &c,
        "Volume.copy",
        json!({"volumeID": base, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": img,
               "dstSdUUID": ids.sd, "dstImgUUID": timg, "dstVolUUID": tvol, "desc": "template",
               "volType": 6, "volFormat": 5, "preallocate": 2, "postZero": false, "force": false}),
    )
    .await;
    task_ok(&c, t.as_str().expect("task")).await;
    let ti = call(&c, "Volume.getInfo", json!({"volumeID": tvol, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": timg})).await;
    assert_eq!(ti["voltype"], "SHARED");

    // A VM disk: thin COW on the template, in its own image.
    let vimg = uuid();
    let vvol = uuid();
    let t = volume_create(&c, &ids, &vimg, &vvol, 64 << 20, true, &timg, &tvol).await;
    task_ok(&c, &t).await;
    let linked = root.join("images").join(&vimg).join(&tvol);
    assert!(
        linked.exists(),
        "template volume hard-linked into the VM image"
    );
    let prep = call(&c, "Image.prepare", json!({"storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": vimg, "volumeID": vvol})).await;
    let leaf = std::path::PathBuf::from(prep["path"].as_str().expect("path"));
    assert!(leaf.ends_with(format!("images/{vimg}/{vvol}")));

    // Boot the guest with that disk, named the engine's way (ovirt-vm metadata).
    let mut ev = c.events();
    let spec = GuestSpec::new("cow").memory(128);
    let env = halyard_testinfra::env::Env::get();
    let image = env.guest_image().clone();
    let id = uuid();
    let name = host.domain_name("cow");
    let console = host.guest_dir("cow").join("console.log");
    let xml = guest::with_drive(
        &guest::domain_xml(&id, &name, &spec, &image, &console, "10.213.7.77"),
        &ids.sp,
        &ids.sd,
        &vimg,
        &vvol,
    );
    call(
        &c,
        "VM.create",
        json!({"vmID": id, "vmParams": {"vmId": id, "xml": xml}}),
    )
    .await;
    halyard_testinfra::wait_for_file_text(
        &console,
        halyard_testguest::READY_MARKER,
        Duration::from_secs(120),
    )
    .await
    .expect("the guest boots with its COW disk");
    wait_event(&mut ev, Duration::from_secs(60), |n| {
        event_status(n, &id).as_deref() == Some("Up")
    })
    .await
    .expect("Up");
    let live = String::from_utf8_lossy(&host.virsh(&["dumpxml", &name]).stdout).to_string();
    assert!(
        live.contains(&leaf.to_string_lossy().to_string()),
        "disk source is the prepared leaf: {live}"
    );

    // Live snapshot: the SPM makes a new leaf on top, the VM's host switches to it.
    let snap = uuid();
    let t = volume_create(&c, &ids, &vimg, &snap, 64 << 20, true, &vimg, &vvol).await;
    task_ok(&c, &t).await;
    call(
        &c,
        "VM.snapshot",
        json!({"vmID": id, "snapDrives": [{"domainID": ids.sd, "imageID": vimg, "volumeID": snap, "baseVolumeID": vvol}]}),
    )
    .await;
    let live = String::from_utf8_lossy(&host.virsh(&["dumpxml", &name]).stdout).to_string();
    assert!(
        live.contains(&format!("images/{vimg}/{snap}")),
        "the VM writes the new leaf: {live}"
    );
    let vi = call(&c, "Volume.getInfo", json!({"volumeID": vvol, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": vimg})).await;
    assert_eq!(vi["voltype"], "INTERNAL");
    call(&c, "VM.destroy", json!({"vmID": id})).await;

    // Every volume made is clean.
    for (i, v) in [
        (&img, &base),
        (&timg, &tvol),
        (&vimg, &vvol),
        (&vimg, &snap),
    ] {
        qemu_img_check(&root.join("images").join(i).join(v));
    }
    let vols = call(
        &c,
        "StorageDomain.getVolumes",
        json!({"storagedomainID": ids.sd, "storagepoolID": ids.sp, "imageID": vimg}),
    )
    .await;
    assert_eq!(vols.as_array().map(|a| a.len()), Some(3), "{vols}");

    // Host job: copy the template's data into a new volume (SDM.copy_data), with
    // |jobs|status| events and Host.getJobs.
    let cimg = uuid();
    let cvol = uuid();
    task_ok(
        &c,
        &volume_create(&c, &ids, &cimg, &cvol, 64 << 20, false, BLANK, BLANK).await,
    )
    .await;
    let job = uuid();
    call(
        &c,
        "SDM.copy_data",
        json!({"job_id": job, "source": {"endpoint_type": "div", "sd_id": ids.sd, "img_id": timg, "vol_id": tvol},
               "destination": {"endpoint_type": "div", "sd_id": ids.sd, "img_id": cimg, "vol_id": cvol, "generation": 0}}),
    )
    .await;
    let done = wait_event(&mut ev, Duration::from_secs(60), |n| {
        n.method == format!("|jobs|status|{job}") && n.params[&job]["status"] == "done"
    })
    .await
    .expect("job done event");
    assert_eq!(done.params[&job]["progress"], 100);
    let jobs = call(
        &c,
        "Host.getJobs",
        json!({"job_type": "storage", "job_ids": [job]}),
    )
    .await;
    assert_eq!(jobs[&job]["status"], "done", "{jobs}");
    let ci = call(&c, "Volume.getInfo", json!({"volumeID": cvol, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": cimg})).await;
    assert_eq!(ci["generation"], 1);
    assert_eq!(ci["legality"], "LEGAL");
    // A stale generation is refused.
    let code = call_err(
        &c,
        "SDM.copy_data",
        json!({"job_id": uuid(), "source": {"endpoint_type": "div", "sd_id": ids.sd, "img_id": timg, "vol_id": tvol},
               "destination": {"endpoint_type": "div", "sd_id": ids.sd, "img_id": cimg, "vol_id": cvol, "generation": 0}}),
    )
    .await;
    assert_eq!(code, 911);

    // extendSize and setLegality; Task.clear.
    let t = call(&c, "Volume.extendSize", json!({"storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": cimg, "volumeID": cvol, "newSize": (128u64 << 20).to_string()})).await;
    let t = t.as_str().expect("task").to_string();
    task_ok(&c, &t).await;
    call(&c, "Task.clear", json!({"taskID": t})).await;
    assert_eq!(
        call_err(&c, "Task.getStatus", json!({"taskID": t})).await,
        401
    );
    let ci = call(&c, "Volume.getInfo", json!({"volumeID": cvol, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": cimg})).await;
    assert_eq!(ci["capacity"], (128u64 << 20).to_string());
    call(&c, "Volume.setLegality", json!({"volumeID": cvol, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": cimg, "legality": "ILLEGAL"})).await;
    assert_eq!(
        call_err(&c, "Image.prepare", json!({"storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": cimg, "volumeID": cvol})).await,
        227
    );
    call(&c, "Volume.setLegality", json!({"volumeID": cvol, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": cimg, "legality": "LEGAL"})).await;
    let t = call(&c, "Image.delete", json!({"imageID": cimg, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "postZero": false, "force": false})).await;
    task_ok(&c, t.as_str().expect("task")).await;

    // A second domain: attach, activate, deactivate, detach; pool info.
    let dir2 = shared_dir("second");
    connect_shared(&c, &dir2).await;
    let sd2 = uuid();
    call(
        &c,
        "StorageDomain.create",
        json!({"storagedomainID": sd2, "domainType": 6, "typeArgs": dir2.to_string_lossy(), "name": "second", "domainClass": 1, "version": "5"}),
    )
    .await;
    call(
        &c,
        "StorageDomain.attach",
        json!({"storagedomainID": sd2, "storagepoolID": ids.sp}),
    )
    .await;
    call(
        &c,
        "StorageDomain.activate",
        json!({"storagedomainID": sd2, "storagepoolID": ids.sp}),
    )
    .await;
    let pi = call(&c, "StoragePool.getInfo", json!({"storagepoolID": ids.sp})).await;
    assert_eq!(pi["info"]["master_uuid"], ids.sd, "{pi}");
    assert_eq!(pi["info"]["spm_id"], 1, "{pi}");
    assert_eq!(pi["dominfo"][&sd2]["status"], "Active", "{pi}");
    let md = std::fs::read_to_string(root.join("dom_md/metadata")).expect("md");
    assert!(md.contains(&format!("{sd2}:Active")), "{md}");
    let i2 = call(&c, "StorageDomain.getInfo", json!({"storagedomainID": sd2})).await;
    assert_eq!(i2["pool"], json!([ids.sp]));
    call(&c, "StorageDomain.deactivate", json!({"storagedomainID": sd2, "storagepoolID": ids.sp, "masterSdUUID": ids.sd, "masterVersion": 1})).await;
    call(
        &c,
        "StorageDomain.detach",
        json!({"storagedomainID": sd2, "storagepoolID": ids.sp}),
    )
    .await;
    let i2 = call(&c, "StorageDomain.getInfo", json!({"storagedomainID": sd2})).await;
    assert_eq!(i2["pool"], json!([]));

    // Deletes: a leaf, then images.
    let t = call(&c, "Volume.delete", json!({"volumeID": snap, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": vimg, "postZero": false, "force": false})).await;
    task_ok(&c, t.as_str().expect("task")).await;
    let vi = call(&c, "Volume.getInfo", json!({"volumeID": vvol, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": vimg})).await;
    assert_eq!(vi["voltype"], "LEAF");
    for i in [&vimg, &timg, &img] {
        let t = call(&c, "Image.delete", json!({"imageID": i, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "postZero": false, "force": false})).await;
        task_ok(&c, t.as_str().expect("task")).await;
    }
    assert_eq!(
        call(
            &c,
            "StorageDomain.getImages",
            json!({"storagedomainID": ids.sd})
        )
        .await,
        json!([])
    );

    // Stats and monitoring.
    let s = call(
        &c,
        "StorageDomain.getStats",
        json!({"storagedomainID": ids.sd}),
    )
    .await;
    assert!(
        s["disktotal"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .expect("total")
            > 0
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hs = call(&c, "Host.getStats", json!({})).await;
    let d = &hs["storageDomains"][&ids.sd];
    assert_eq!(d["valid"], true, "{hs}");
    assert_eq!(d["acquired"], true, "{hs}");

    call(&c, "StoragePool.spmStop", json!({"storagepoolID": ids.sp})).await;
    assert_eq!(spm_status(&c, &ids).await["spmStatus"], "Free");
    call(
        &c,
        "StoragePool.disconnect",
        json!({"storagepoolID": ids.sp, "hostID": 1, "scsiKey": ids.sp}),
    )
    .await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_storage_input_is_refused_and_nothing_written() {
    let host = TestHost::start(opts()).await;
    let c = host.client().await.expect("connect");
    let dir = shared_dir("bad");
    let ids = PoolIds::new();
    connect_shared(&c, &dir).await;
    create_domain_and_pool(&c, &dir, &ids).await;
    connect_pool(&c, &ids, 1).await;
    task_ok(&c, &spm_start(&c, &ids).await).await;
    let before = listing(&dir);

    let vc = |img: &str, vol: &str, size: serde_json::Value| {
        json!({"volumeID": vol, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": img,
               "size": size, "volFormat": 4, "preallocate": 2, "diskType": "DATA", "desc": "",
               "srcImgUUID": BLANK, "srcVolUUID": BLANK})
    };
    let good = uuid();
    for (what, params, want) in [
        (
            "image id not a UUID",
            vc("not-a-uuid", &good, json!("1048576")),
            1000,
        ),
        (
            "'..' in the image id",
            vc("../../../etc", &good, json!("1048576")),
            1000,
        ),
        (
            "'..' in the volume id",
            vc(&good, "..", json!("1048576")),
            1000,
        ),
        ("negative size", vc(&good, &uuid(), json!("-5")), 1000),
        (
            "absurd size",
            vc(&good, &uuid(), json!("999999999999999999999")),
            1000,
        ),
        ("zero size", vc(&good, &uuid(), json!("0")), 1000),
    ] {
        let code = call_err(&c, "Volume.create", params).await;
        assert_eq!(code, want, "{what}");
    }
    // A connection with '..' and a mount option with shell characters.
    let r = call(
        &c,
        "StoragePool.connectStorageServer",
        json!({"storagepoolID": BLANK, "domainType": 6, "connectionParams": [
            {"id": uuid(), "connection": format!("{}/../x", dir.display()), "vfs_type": "none", "mnt_options": "bind"},
            {"id": uuid(), "connection": dir.to_string_lossy(), "vfs_type": "none", "mnt_options": "bind;touch /tmp/pwned"}]}),
    )
    .await;
    assert_eq!(r[0]["status"], 1000, "{r}");
    assert_eq!(r[1]["status"], 1000, "{r}");
    // A domain id with '..'.
    assert_eq!(
        call_err(
            &c,
            "StorageDomain.getInfo",
            json!({"storagedomainID": "../dom_md"})
        )
        .await,
        1000
    );
    // A chain that loops: make a volume its own grandparent on disk.
    let img = uuid();
    let (v1, v2) = (uuid(), uuid());
    task_ok(
        &c,
        &volume_create(&c, &ids, &img, &v1, 1 << 20, true, BLANK, BLANK).await,
    )
    .await;
    task_ok(
        &c,
        &volume_create(&c, &ids, &img, &v2, 1 << 20, true, &img, &v1).await,
    )
    .await;
    let meta = dir
        .join(&ids.sd)
        .join("images")
        .join(&img)
        .join(format!("{v1}.meta"));
    let text = std::fs::read_to_string(&meta)
        .expect("meta")
        .replace(&format!("PUUID={BLANK}"), &format!("PUUID={v2}"));
    std::fs::write(&meta, text).expect("write");
    let v3 = uuid();
    let code = call_err(&c, "Volume.create", json!({"volumeID": v3, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": img,
        "size": "1048576", "volFormat": 4, "preallocate": 2, "diskType": "DATA", "desc": "", "srcImgUUID": img, "srcVolUUID": v2})).await;
    assert_eq!(code, 259, "loop refused");
    assert!(!dir
        .join(&ids.sd)
        .join("images")
        .join(&img)
        .join(&v3)
        .exists());
    let code = call_err(
        &c,
        "Image.prepare",
        json!({"storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": img, "volumeID": v2}),
    )
    .await;
    assert_eq!(code, 259);
    // A metadata file with a wrong checksum.
    let mdp = dir.join(&ids.sd).join("dom_md/metadata");
    let good_md = std::fs::read_to_string(&mdp).expect("md");
    std::fs::write(
        &mdp,
        good_md.replace("DESCRIPTION=shared", "DESCRIPTION=tampered"),
    )
    .expect("write");
    assert_eq!(
        call_err(
            &c,
            "StorageDomain.getInfo",
            json!({"storagedomainID": ids.sd})
        )
        .await,
        752
    );
    std::fs::write(&mdp, &good_md).expect("restore");
    // Attaching the master of this pool to another pool: refused.
    let other = uuid();
    let code = call_err(&c, "StoragePool.create", json!({"storagepoolID": other, "name": "dc2", "masterSdUUID": ids.sd,
        "masterVersion": 1, "domainList": [ids.sd], "lockRenewalIntervalSec": 5, "leaseTimeSec": 60, "ioOpTimeoutSec": 10, "leaseRetries": 3})).await;
    assert_eq!(code, 380);

    // Nothing but the two volumes made on purpose was written.
    let mut after = listing(&dir);
    after.retain(|p| !p.contains(&img));
    let mut before2 = before.clone();
    before2.retain(|p| !p.contains(&img));
    assert_eq!(before2, after, "no stray files");
    assert!(!std::path::Path::new("/tmp/pwned").exists());
    c.close().await;
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p.clone());
                }
                out.push(
                    p.strip_prefix(dir)
                        .map(|x| x.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
            }
        }
    }
    out.sort();
    out
}
