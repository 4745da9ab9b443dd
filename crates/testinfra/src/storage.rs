//! Storage helpers for tests: a shared directory mounted as a POSIX domain on every
//! test host, and the verb sequences the engine sends (connect, create domain and pool,
//! connect pool, spmStart, wait for tasks).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use halyard_client::{Client, ClientError};
use serde_json::{json, Value};

use crate::env;

/// A directory under the test work dir that test hosts mount as shared storage.
pub fn shared_dir(name: &str) -> PathBuf {
    let d = env::Env::get()
        .work_dir()
        .join(format!("shared-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    env::mkdir_public(&d);
    d
}

/// Calls a verb; panics with the error (tests).
pub async fn call(c: &Client, method: &str, params: Value) -> Value {
    c.call_value(method, params.clone())
        .await
        .unwrap_or_else(|e| panic!("{method}({params}) failed: {e}"))
}

/// Calls a verb expecting a VDSM/JSON-RPC error; returns its code.
pub async fn call_err(c: &Client, method: &str, params: Value) -> i64 {
    match c.call_value(method, params.clone()).await {
        Err(ClientError::Rpc(e)) => e.code,
        Ok(v) => panic!("{method}({params}) succeeded ({v}) but should fail"),
        Err(e) => panic!("{method}({params}): transport error {e}"),
    }
}

/// Polls Task.getStatus until the task finished; returns its status.
pub async fn wait_task(c: &Client, task: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = call(c, "Task.getStatus", json!({"taskID": task})).await;
        if s["taskState"] == "finished" {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "task {task} still {s} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for a task and asserts it succeeded.
pub async fn task_ok(c: &Client, task: &str) {
    let s = wait_task(c, task, Duration::from_secs(120)).await;
    assert_eq!(s["taskResult"], "success", "task {task}: {s}");
}

/// The POSIX connection of a shared directory (a bind mount).
pub fn posix_connection(dir: &Path) -> Value {
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "connection": dir.to_string_lossy(),
        "vfs_type": "none",
        "mnt_options": "bind",
    })
}

pub const POSIXFS: i64 = 6;
pub const BLANK: &str = "00000000-0000-0000-0000-000000000000";

/// connectStorageServer for a shared directory; asserts status 0.
pub async fn connect_shared(c: &Client, dir: &Path) {
    let r = call(
        c,
        "StoragePool.connectStorageServer",
        json!({"storagepoolID": BLANK, "domainType": POSIXFS, "connectionParams": [posix_connection(dir)]}),
    )
    .await;
    assert_eq!(r[0]["status"], 0, "{r}");
}

/// Ids of a pool with one master data domain.
#[derive(Debug, Clone)]
pub struct PoolIds {
    pub sp: String,
    pub sd: String,
}

impl PoolIds {
    pub fn new() -> Self {
        PoolIds {
            sp: uuid::Uuid::new_v4().to_string(),
            sd: uuid::Uuid::new_v4().to_string(),
        }
    }
}

impl Default for PoolIds {
    fn default() -> Self {
        Self::new()
    }
}

/// Creates the domain on `dir` and a pool with it as master (run on one host).
pub async fn create_domain_and_pool(c: &Client, dir: &Path, ids: &PoolIds) {
    call(
        c,
        "StorageDomain.create",
        json!({"storagedomainID": ids.sd, "domainType": POSIXFS, "typeArgs": dir.to_string_lossy(),
               "name": "shared", "domainClass": 1, "version": "5", "blockSize": 512, "maxHosts": 250}),
    )
    .await;
    call(
        c,
        "StoragePool.create",
        json!({"storagepoolID": ids.sp, "name": "dc1", "masterSdUUID": ids.sd, "masterVersion": 1,
               "domainList": [ids.sd], "lockRenewalIntervalSec": 5, "leaseTimeSec": 60,
               "ioOpTimeoutSec": 10, "leaseRetries": 3}),
    )
    .await;
}

/// StoragePool.connect with `host_id`.
pub async fn connect_pool(c: &Client, ids: &PoolIds, host_id: u64) {
    call(
        c,
        "StoragePool.connect",
        json!({"storagepoolID": ids.sp, "hostID": host_id, "scsiKey": ids.sp, "masterSdUUID": ids.sd,
               "masterVersion": 1, "domainDict": {ids.sd.clone(): "active"}}),
    )
    .await;
}

/// spmStart; returns the task id.
pub async fn spm_start(c: &Client, ids: &PoolIds) -> String {
    call(
        c,
        "StoragePool.spmStart",
        json!({"storagepoolID": ids.sp, "prevID": -1, "prevLver": "-1", "enableScsiFencing": "false",
               "maxHostID": 250, "domVersion": "5"}),
    )
    .await
    .as_str()
    .expect("task id")
    .to_string()
}

pub async fn spm_status(c: &Client, ids: &PoolIds) -> Value {
    call(
        c,
        "StoragePool.getSpmStatus",
        json!({"storagepoolID": ids.sp}),
    )
    .await
}

/// Volume.create; returns the task id.
#[allow(clippy::too_many_arguments)]
pub async fn volume_create(
    c: &Client,
    ids: &PoolIds,
    img: &str,
    vol: &str,
    size: u64,
    cow: bool,
    src_img: &str,
    src_vol: &str,
) -> String {
    call(
        c,
        "Volume.create",
        json!({"volumeID": vol, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": img,
               "size": size.to_string(), "volFormat": if cow { 4 } else { 5 }, "preallocate": 2,
               "diskType": "DATA", "desc": "{\"DiskAlias\":\"test\"}", "srcImgUUID": src_img,
               "srcVolUUID": src_vol, "initialSize": null}),
    )
    .await
    .as_str()
    .expect("task id")
    .to_string()
}
