//! Disks, snapshots and templates: each change of storage is an SPM task (see
//! [`crate::storage`]); the API answers at once with the object locked, and it turns
//! ok (or goes away / illegal, with an event) when the task ends.

use std::sync::Arc;

use serde_json::json;

use crate::model::*;
use crate::state::Manager;
use crate::storage::{
    StorageOpError, LEAF_VOLUME, MAX_DISK_BYTES, PREALLOCATED, SHARED_VOLUME, SPARSE, VOL_COW,
    VOL_RAW,
};

type Result<T> = std::result::Result<T, StorageOpError>;

/// Versions of one template, at most.
pub const MAX_TEMPLATE_VERSIONS: u32 = 1000;

/// What a volume copy makes: a template's shared volume or a VM's leaf.
struct CopyTo {
    /// Who finishes when the copy ended (a template).
    owner: Option<(String, String)>,
    vol_type: i64,
    /// The job step's text.
    step: String,
    desc: String,
}

/// A new disk as the API describes it.
#[derive(Debug, Clone)]
pub struct NewDisk {
    pub name: String,
    pub description: String,
    pub provisioned_size: u64,
    /// cow, raw
    pub format: String,
    pub sparse: bool,
    pub storage_domain: String,
    /// data or iso
    pub content_type: String,
    /// The id the client asked for (oVirt honours `<disk id>`; upload_disk.py's
    /// `--disk-id`), else a new one.
    pub id: Option<String>,
}

fn failed(e: impl std::fmt::Display) -> StorageOpError {
    StorageOpError::Failed(e.to_string())
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The id of a VM's "Active VM" snapshot (stable, derived from the VM's id).
pub fn active_snapshot_id(vm: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{vm}/active").as_bytes(),
    )
    .to_string()
}

impl Manager {
    fn usable_domain(&self, sd: &str) -> Result<StorageDomain> {
        let s = self
            .read()
            .storage_domains
            .values()
            .find(|s| s.id == sd || s.name == sd)
            .cloned()
            .ok_or_else(|| StorageOpError::Bad(format!("storage domain {sd:?} does not exist")))?;
        if s.data_center.is_none() || s.status != "active" {
            return Err(StorageOpError::Conflict(format!(
                "Cannot add Disk. Storage Domain {} is not active in a data center.",
                s.name
            )));
        }
        Ok(s)
    }

    fn disk(&self, id: &str) -> Result<Disk> {
        self.read()
            .disks
            .get(id)
            .cloned()
            .ok_or_else(|| StorageOpError::NotFound(format!("Disk {id} not found")))
    }

    /// Adds a disk (optionally attached to a VM): Volume.create on the SPM.
    pub async fn add_disk(
        self: &Arc<Self>,
        n: NewDisk,
        attach: Option<(String, bool, String)>,
    ) -> Result<Disk> {
        // An ISO may be as small as ISO 9660 allows (its system area and a volume
        // descriptor); data disks start at 1 MiB.
        let min = if n.content_type == "iso" {
            34 << 10
        } else {
            1 << 20
        };
        if n.provisioned_size < min || n.provisioned_size > MAX_DISK_BYTES {
            return Err(StorageOpError::Bad(format!(
                "provisioned_size must be between {} and {} TiB, got {}",
                if n.content_type == "iso" {
                    "34 KiB (an ISO)"
                } else {
                    "1 MiB"
                },
                MAX_DISK_BYTES >> 40,
                n.provisioned_size
            )));
        }
        if !n.provisioned_size.is_multiple_of(512) {
            return Err(StorageOpError::Bad(format!(
                "provisioned_size must be a multiple of 512 bytes, got {}",
                n.provisioned_size
            )));
        }
        if !matches!(n.format.as_str(), "cow" | "raw") {
            return Err(StorageOpError::Bad(format!(
                "disk format {:?}: cow or raw",
                n.format
            )));
        }
        let sd = self.usable_domain(&n.storage_domain)?;
        let dc = sd.data_center.clone().unwrap_or_default();
        if let Some((vm, _, _)) = &attach {
            let v = self
                .read()
                .vms
                .get(vm)
                .cloned()
                .ok_or_else(|| StorageOpError::NotFound(format!("VM {vm} not found")))?;
            if self.read().dc_of_cluster(&v.cluster) != Some(dc.as_str()) {
                return Err(StorageOpError::Conflict(
                    "Cannot add Disk. The storage domain is not in the VM's data center.".into(),
                ));
            }
        }
        // No record, no job while there is no SPM to do it.
        self.spm_client(&dc).await?;
        let sparse = n.sparse || n.format == "cow";
        let disk = Disk {
            id: n.id.unwrap_or_else(new_id),
            name: n.name,
            description: n.description,
            provisioned_size: n.provisioned_size,
            actual_size: 0,
            format: n.format,
            sparse,
            storage_domain: sd.id.clone(),
            status: "locked".into(),
            volumes: vec![new_id()],
            template_base: None,
            vm: attach.as_ref().map(|a| a.0.clone()),
            bootable: attach.as_ref().is_some_and(|a| a.1),
            interface: attach
                .as_ref()
                .map(|a| a.2.clone())
                .unwrap_or_else(|| "virtio".into()),
            template: None,
            quota: None,
            inactive: false,
            content_type: n.content_type,
            creation_time: now_ms(),
        };
        {
            // A given id: checked and taken under the lock (two adds cannot both get it).
            let _g = self.write_lock.lock().await;
            if self.read().disks.contains_key(&disk.id) {
                return Err(StorageOpError::Conflict(format!(
                    "Cannot add Disk. A disk with id {} already exists.",
                    disk.id
                )));
            }
            self.insert(&disk).await.map_err(failed)?;
        }
        let job = self.start_job(format!("Adding Disk {}", disk.name)).await;
        let r = self
            .create_volume_task(&disk, &dc, &job, None, None, "create_volume")
            .await;
        if let Err(e) = r {
            let _ = self.remove::<Disk>(&disk.id).await;
            self.finish_job(&job, false).await;
            return Err(e);
        }
        self.event(
            2020,
            "normal",
            format!(
                "Add-Disk operation of {} was initiated by admin@internal.",
                disk.name
            ),
            None,
            disk.vm.as_deref(),
        )
        .await;
        Ok(disk)
    }

    /// Volume.create of a disk's leaf: a new image, on a template volume, or a
    /// snapshot layer on the disk's current leaf (`parent`).
    async fn create_volume_task(
        &self,
        disk: &Disk,
        dc: &str,
        job: &str,
        parent: Option<(String, String)>,
        owner: Option<(String, String)>,
        kind: &str,
    ) -> Result<()> {
        let vol = disk.leaf().to_string();
        let (src_img, src_vol) = parent
            .clone()
            .or_else(|| disk.template_base.clone())
            .unwrap_or_else(|| (BLANK_TEMPLATE.to_string(), BLANK_TEMPLATE.to_string()));
        let layered = src_vol != BLANK_TEMPLATE;
        let (fmt, prealloc) = if disk.format == "cow" || layered {
            (VOL_COW, SPARSE)
        } else if disk.sparse {
            (VOL_RAW, SPARSE)
        } else {
            (VOL_RAW, PREALLOCATED)
        };
        let t = StorageTask::for_disk(disk, dc, kind, job, owner);
        self.add_step(
            job,
            &t.id,
            format!("Creating volume {vol} of disk {}", disk.name),
        )
        .await;
        self.submit_task(
            t,
            "Volume.create",
            json!({"volumeID": vol, "storagepoolID": dc, "storagedomainID": disk.storage_domain,
                   "imageID": disk.id, "size": disk.provisioned_size.to_string(), "volFormat": fmt,
                   "preallocate": prealloc, "diskType": "DATA", "desc": disk.name,
                   "srcImgUUID": src_img, "srcVolUUID": src_vol}),
        )
        .await
    }

    /// Attaches an existing disk to a VM.
    pub async fn attach_disk(
        self: &Arc<Self>,
        vm: &str,
        disk_id: &str,
        bootable: bool,
        interface: &str,
    ) -> Result<Disk> {
        let _g = self.write_lock.lock().await;
        let d = self.disk(disk_id)?;
        let v = self
            .read()
            .vms
            .get(vm)
            .cloned()
            .ok_or_else(|| StorageOpError::NotFound(format!("VM {vm} not found")))?;
        if d.template.is_some() {
            return Err(StorageOpError::Conflict(
                "Cannot attach a template's disk to a VM.".into(),
            ));
        }
        if let Some(other) = &d.vm {
            if other != vm {
                return Err(StorageOpError::Conflict(format!(
                    "Cannot attach Disk {}: it is attached to another VM.",
                    d.name
                )));
            }
        }
        if v.status != "down" {
            return Err(StorageOpError::Conflict(
                "Cannot attach a disk to a running VM (hot plug is not supported yet).".into(),
            ));
        }
        let dc = self.dc_of_domain(&d.storage_domain);
        if self.read().dc_of_cluster(&v.cluster) != Some(dc.as_str()) {
            return Err(StorageOpError::Conflict(
                "Cannot attach the disk: its storage domain is not in the VM's data center.".into(),
            ));
        }
        let d = self
            .update(disk_id, |d: &mut Disk| {
                d.vm = Some(vm.to_string());
                d.bootable = bootable;
                d.interface = interface.to_string();
                d.clone()
            })
            .await
            .map_err(failed)?
            .ok_or_else(|| StorageOpError::NotFound(format!("Disk {disk_id} not found")))?;
        Ok(d)
    }

    /// Detaches a disk from a (down) VM; with `remove`, the disk goes too.
    pub async fn detach_disk(
        self: &Arc<Self>,
        vm: &str,
        disk_id: &str,
        remove: bool,
    ) -> Result<()> {
        {
            let _g = self.write_lock.lock().await;
            let d = self.disk(disk_id)?;
            if d.vm.as_deref() != Some(vm) {
                return Err(StorageOpError::NotFound(format!(
                    "Disk attachment {disk_id} not found"
                )));
            }
            let running = self.read().vms.get(vm).is_some_and(|v| v.status != "down");
            if running {
                return Err(StorageOpError::Conflict(
                    "Cannot detach a disk from a running VM.".into(),
                ));
            }
            self.update(disk_id, |d: &mut Disk| d.vm = None)
                .await
                .map_err(failed)?;
        }
        if remove {
            self.remove_disk(disk_id).await?;
        }
        Ok(())
    }

    /// Removes a disk: Image.delete on the SPM; the record goes when it ended.
    pub async fn remove_disk(self: &Arc<Self>, disk_id: &str) -> Result<()> {
        let d = self.disk(disk_id)?;
        if d.status == "locked" {
            return Err(StorageOpError::Conflict(format!(
                "Cannot remove Disk {}: it is locked by another operation.",
                d.name
            )));
        }
        if let Some(vm) = &d.vm {
            if self.read().vms.get(vm).is_some_and(|v| v.status != "down") {
                return Err(StorageOpError::Conflict(format!(
                    "Cannot remove Disk {}: its VM is running.",
                    d.name
                )));
            }
        }
        let dc = self.dc_of_domain(&d.storage_domain);
        let job = self.start_job(format!("Removing Disk {}", d.name)).await;
        let d = self
            .update(disk_id, |d: &mut Disk| {
                d.status = "locked".into();
                d.vm = None;
                d.clone()
            })
            .await
            .map_err(failed)?
            .ok_or_else(|| StorageOpError::NotFound(format!("Disk {disk_id} not found")))?;
        let t = StorageTask::for_disk(&d, &dc, "delete_image", &job, None);
        self.add_step(&job, &t.id, format!("Deleting image {}", d.id))
            .await;
        let r = self
            .submit_task(
                t,
                "Image.delete",
                json!({"imageID": d.id, "storagepoolID": dc, "storagedomainID": d.storage_domain,
                       "postZero": false, "force": false}),
            )
            .await;
        if let Err(e) = r {
            let _ = self
                .update(disk_id, |d: &mut Disk| d.status = "ok".into())
                .await;
            self.finish_job(&job, false).await;
            return Err(e);
        }
        Ok(())
    }

    /// Takes a snapshot: a new leaf on every disk of the VM (SPM tasks); a running VM
    /// switches to them (VM.snapshot) when all exist.
    pub async fn create_snapshot(
        self: &Arc<Self>,
        vm_id: &str,
        description: &str,
    ) -> Result<Snapshot> {
        let _g = self.write_lock.lock().await;
        let v = self
            .read()
            .vms
            .get(vm_id)
            .cloned()
            .ok_or_else(|| StorageOpError::NotFound(format!("VM {vm_id} not found")))?;
        let disks: Vec<Disk> = self.read().disks_of(vm_id).into_iter().cloned().collect();
        if disks.iter().any(|d| d.status != "ok") {
            return Err(StorageOpError::Conflict(format!(
                "Cannot create Snapshot. VM {} has locked or illegal disks.",
                v.name
            )));
        }
        if !matches!(v.status.as_str(), "down" | "up") {
            return Err(StorageOpError::Conflict(format!(
                "Cannot create Snapshot. VM {} is {}.",
                v.name, v.status
            )));
        }
        let snap = Snapshot {
            id: new_id(),
            vm: vm_id.to_string(),
            description: description.to_string(),
            date: now_ms(),
            status: if disks.is_empty() { "ok" } else { "locked" }.into(),
            volumes: disks
                .iter()
                .map(|d| (d.id.clone(), d.leaf().to_string()))
                .collect(),
            live: v.status == "up",
        };
        self.insert(&snap).await.map_err(failed)?;
        let job = self
            .start_job(format!(
                "Creating VM Snapshot {} for VM {}",
                snap.description, v.name
            ))
            .await;
        for d in &disks {
            let mut layer = d.clone();
            let parent = (d.id.clone(), d.leaf().to_string());
            layer.volumes = vec![new_id()];
            layer.template_base = None;
            let dc = self.dc_of_domain(&d.storage_domain);
            let _ = self
                .update(&d.id, |d: &mut Disk| d.status = "locked".into())
                .await;
            if let Err(e) = self
                .create_volume_task(
                    &layer,
                    &dc,
                    &job,
                    Some(parent),
                    Some(("snapshot".into(), snap.id.clone())),
                    "create_snapshot_volume",
                )
                .await
            {
                let _ = self
                    .update(&d.id, |x: &mut Disk| x.status = d.status.clone())
                    .await;
                self.event(
                    10802,
                    "error",
                    format!(
                        "Failed to create snapshot '{description}' for VM {}: {e}",
                        v.name
                    ),
                    None,
                    Some(vm_id),
                )
                .await;
                // Layers already made are rolled back when their tasks end.
                return Err(e);
            }
        }
        if disks.is_empty() {
            self.finish_job(&job, true).await;
        }
        self.event(
            45,
            "normal",
            format!(
                "Snapshot '{}' creation for VM {} was initiated by admin@internal.",
                snap.description, v.name
            ),
            None,
            Some(vm_id),
        )
        .await;
        Ok(snap)
    }

    /// Makes a template from a down VM: each disk's chain is copied (collapsed) into a
    /// shared volume of a new image.
    /// `formats`: the format (`raw` or `cow`) asked for a source disk's copy (by the
    /// source disk's id); raw otherwise. Copies are sparse. `version`: a new version
    /// (base template id, version name) of a base template, which gives it its name
    /// and the next version number (oVirt's template versions).
    pub async fn create_template(
        self: &Arc<Self>,
        name: &str,
        description: &str,
        vm_id: &str,
        formats: &std::collections::HashMap<String, String>,
        version: Option<(&str, &str)>,
    ) -> Result<Template> {
        let _g = self.write_lock.lock().await;
        let v = self
            .read()
            .vms
            .get(vm_id)
            .cloned()
            .ok_or_else(|| StorageOpError::Bad(format!("VM {vm_id} does not exist")))?;
        let (name, base_template, version_number, version_name) = match version {
            None => {
                if self.read().templates.values().any(|t| t.name == name) || name == "Blank" {
                    return Err(StorageOpError::Conflict(format!(
                        "Cannot add Template. The name {name:?} is already in use."
                    )));
                }
                (name.to_string(), None, 1, String::new())
            }
            Some((base, vname)) => {
                let inv = self.read();
                let b = inv.templates.get(base).ok_or_else(|| {
                    StorageOpError::NotFound(format!(
                        "Cannot add Template. Base Template {base} does not exist."
                    ))
                })?;
                if b.base_template.is_some() {
                    return Err(StorageOpError::Bad(format!(
                        "Cannot add Template. Template {} version {} is not a base template.",
                        b.name, b.version_number
                    )));
                }
                let last = inv
                    .templates
                    .values()
                    .filter(|t| t.id == b.id || t.base_template.as_deref() == Some(&b.id))
                    .map(|t| t.version_number)
                    .max()
                    .unwrap_or(1);
                if last >= MAX_TEMPLATE_VERSIONS {
                    return Err(StorageOpError::Conflict(format!(
                        "Cannot add Template. Template {} has {MAX_TEMPLATE_VERSIONS} versions.",
                        b.name
                    )));
                }
                (
                    b.name.clone(),
                    Some(b.id.clone()),
                    last + 1,
                    vname.to_string(),
                )
            }
        };
        let name = name.as_str();
        if v.status != "down" {
            return Err(StorageOpError::Conflict(format!(
                "Cannot add Template. VM {} is not down.",
                v.name
            )));
        }
        let disks: Vec<Disk> = self.read().disks_of(vm_id).into_iter().cloned().collect();
        if disks.iter().any(|d| d.status != "ok") {
            return Err(StorageOpError::Conflict(format!(
                "Cannot add Template. VM {} has locked or illegal disks.",
                v.name
            )));
        }
        if let Some(d) = formats.keys().find(|d| !disks.iter().any(|x| &x.id == *d)) {
            return Err(StorageOpError::Bad(format!(
                "Cannot add Template. Disk {d} is not a disk of VM {}.",
                v.name
            )));
        }
        let mut t = Template {
            id: new_id(),
            name: name.to_string(),
            description: description.to_string(),
            cluster: v.cluster.clone(),
            memory: v.memory,
            sockets: v.sockets,
            cores: v.cores,
            threads: v.threads,
            os_type: v.os_type.clone(),
            kernel: v.kernel.clone(),
            initrd: v.initrd.clone(),
            cmdline: v.cmdline.clone(),
            status: if disks.is_empty() { "ok" } else { "locked" }.into(),
            creation_time: now_ms(),
            disks: Vec::new(),
            source_vm: Some(vm_id.to_string()),
            base_template,
            version_number,
            version_name,
        };
        let job = self
            .start_job(format!("Creating Template {name} from VM {}", v.name))
            .await;
        let mut copies = Vec::new();
        for d in &disks {
            let td = Disk {
                id: new_id(),
                name: d.name.clone(),
                description: d.description.clone(),
                provisioned_size: d.provisioned_size,
                actual_size: 0,
                format: formats.get(&d.id).cloned().unwrap_or_else(|| "raw".into()),
                sparse: true,
                storage_domain: d.storage_domain.clone(),
                status: "locked".into(),
                volumes: vec![new_id()],
                template_base: None,
                vm: None,
                bootable: d.bootable,
                interface: d.interface.clone(),
                template: Some(t.id.clone()),
                quota: None,
                inactive: false,
                content_type: "data".into(),
                creation_time: now_ms(),
            };
            t.disks.push(td.id.clone());
            copies.push((d.clone(), td));
        }
        self.insert(&t).await.map_err(failed)?;
        for (src, td) in copies {
            self.insert(&td).await.map_err(failed)?;
            let dc = self.dc_of_domain(&src.storage_domain);
            self.copy_volume_task(
                &src,
                &td,
                &dc,
                &job,
                CopyTo {
                    owner: Some(("template".into(), t.id.clone())),
                    vol_type: SHARED_VOLUME,
                    step: format!("Copying disk {} into the template", src.name),
                    desc: format!("template {name}"),
                },
            )
            .await?;
        }
        if t.disks.is_empty() {
            self.finish_job(&job, true).await;
        }
        self.event(
            2018,
            "normal",
            format!(
                "Creation of Template {name} from VM {} was initiated by admin@internal.",
                v.name
            ),
            None,
            Some(vm_id),
        )
        .await;
        Ok(t)
    }

    /// A new VM's disks from its template: thin COW layers on the template's volumes,
    /// or, with `clone` (the API's `clone=true`), independent copies in the template
    /// disks' formats (oVirt's "Clone" storage allocation), or in `formats` (by
    /// template disk id).
    pub async fn create_disks_from_template(
        self: &Arc<Self>,
        vm: &Vm,
        template: &str,
        clone: bool,
        formats: &std::collections::HashMap<String, String>,
    ) -> Result<()> {
        let tdisks: Vec<Disk> = self
            .read()
            .disks
            .values()
            .filter(|d| d.template.as_deref() == Some(template))
            .cloned()
            .collect();
        if tdisks.is_empty() {
            return Ok(());
        }
        let job = self
            .start_job(format!("Creating VM {} from its template", vm.name))
            .await;
        for td in tdisks {
            let d = Disk {
                id: new_id(),
                name: format!("{}_{}", vm.name, td.name),
                description: String::new(),
                provisioned_size: td.provisioned_size,
                actual_size: 0,
                format: match (clone, formats.get(&td.id)) {
                    (false, _) => "cow".into(),
                    (true, Some(f)) => f.clone(),
                    (true, None) => td.format.clone(),
                },
                sparse: true,
                storage_domain: td.storage_domain.clone(),
                status: "locked".into(),
                volumes: vec![new_id()],
                template_base: (!clone).then(|| (td.id.clone(), td.leaf().to_string())),
                vm: Some(vm.id.clone()),
                bootable: td.bootable,
                interface: td.interface.clone(),
                template: None,
                quota: None,
                inactive: false,
                content_type: "data".into(),
                creation_time: now_ms(),
            };
            self.insert(&d).await.map_err(failed)?;
            let dc = self.dc_of_domain(&d.storage_domain);
            let made = if clone {
                let to = CopyTo {
                    owner: None,
                    vol_type: LEAF_VOLUME,
                    step: format!("Copying disk {} into disk {}", td.name, d.name),
                    desc: format!("disk {}", d.name),
                };
                self.copy_volume_task(&td, &d, &dc, &job, to).await
            } else {
                self.create_volume_task(&d, &dc, &job, None, None, "create_volume")
                    .await
            };
            if let Err(e) = made {
                let _ = self.remove::<Disk>(&d.id).await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// An SPM task copying `src`'s chain into the new standalone volume of `dst` (same
    /// domain), in `dst`'s format.
    async fn copy_volume_task(
        self: &Arc<Self>,
        src: &Disk,
        dst: &Disk,
        dc: &str,
        job: &str,
        to: CopyTo,
    ) -> Result<()> {
        let task = StorageTask::for_disk(dst, dc, "copy_volume", job, to.owner);
        self.add_step(job, &task.id, to.step).await;
        self.submit_task(
            task,
            "Volume.copy",
            json!({"volumeID": src.leaf(), "storagepoolID": dc, "storagedomainID": src.storage_domain,
                   "imageID": src.id, "dstSdUUID": dst.storage_domain, "dstImgUUID": dst.id,
                   "dstVolUUID": dst.leaf(), "desc": to.desc, "volType": to.vol_type,
                   "volFormat": if dst.format == "cow" { VOL_COW } else { VOL_RAW },
                   "preallocate": SPARSE, "postZero": false, "force": false}),
        )
        .await
    }

    /// Grows a disk's virtual size (oVirt's extend: the leaf volume's, by the SPM's
    /// Volume.extendSize). The disk is locked until the task ends; it keeps its size
    /// if the task fails. Only disks of down VMs (or floating ones) for now: a running
    /// VM would also need VM.diskSizeExtend on its host.
    pub async fn extend_disk(self: &Arc<Self>, id: &str, new_size: u64) -> Result<Disk> {
        let _g = self.write_lock.lock().await;
        let d = {
            let inv = self.read();
            let d = inv
                .disks
                .get(id)
                .cloned()
                .ok_or_else(|| StorageOpError::NotFound(format!("Disk {id} not found")))?;
            if d.template.is_some() {
                return Err(StorageOpError::Conflict(format!(
                    "Cannot edit Virtual Disk {}: it is a template's disk.",
                    d.name
                )));
            }
            if d.status != "ok" {
                return Err(StorageOpError::Conflict(format!(
                    "Cannot edit Virtual Disk {}: it is {}.",
                    d.name, d.status
                )));
            }
            if new_size < d.provisioned_size {
                return Err(StorageOpError::Bad(format!(
                    "Cannot edit Virtual Disk {}. New disk size cannot be smaller than the current ({} bytes).",
                    d.name, d.provisioned_size
                )));
            }
            if new_size > MAX_DISK_BYTES {
                return Err(StorageOpError::Bad(format!(
                    "provisioned_size must be at most {} TiB, got {new_size}",
                    MAX_DISK_BYTES >> 40
                )));
            }
            if let Some(v) = d.vm.as_ref().and_then(|v| inv.vms.get(v)) {
                if v.status != "down" {
                    return Err(StorageOpError::Conflict(format!(
                        "Cannot extend disk {} while VM {} is {}: Halyard extends disks of down VMs only, for now.",
                        d.name, v.name, v.status
                    )));
                }
            }
            d
        };
        if new_size == d.provisioned_size {
            return Ok(d);
        }
        let dc = self.dc_of_domain(&d.storage_domain);
        let job = self
            .start_job(format!("Extending disk {} to {new_size} bytes", d.name))
            .await;
        self.update(id, |x: &mut Disk| x.status = "locked".into())
            .await
            .map_err(failed)?;
        let mut task = StorageTask::for_disk(&d, &dc, "extend_volume", &job, None);
        task.new_size = Some(new_size);
        self.add_step(
            &job,
            &task.id,
            format!("Extending volume {} of disk {}", d.leaf(), d.name),
        )
        .await;
        let sent = self
            .submit_task(
                task,
                "Volume.extendSize",
                json!({"storagepoolID": dc, "storagedomainID": d.storage_domain, "imageID": d.id,
                       "volumeID": d.leaf(), "newSize": new_size.to_string()}),
            )
            .await;
        if let Err(e) = sent {
            let _ = self.update(id, |x: &mut Disk| x.status = "ok".into()).await;
            self.finish_job(&job, false).await;
            return Err(e);
        }
        Ok(self.read().disks.get(id).cloned().unwrap_or(d))
    }

    /// Removes a template that no VM uses; its disks are deleted by SPM tasks.
    pub async fn remove_template(self: &Arc<Self>, id: &str) -> Result<()> {
        let t = {
            let _g = self.write_lock.lock().await;
            let inv = self.read();
            let t = inv
                .templates
                .get(id)
                .cloned()
                .ok_or_else(|| StorageOpError::NotFound(format!("Template {id} not found")))?;
            if let Some(v) = inv.vms.values().find(|v| v.template == id) {
                return Err(StorageOpError::Conflict(format!(
                    "Cannot remove Template. VM {} is based on it.",
                    v.name
                )));
            }
            if inv
                .templates
                .values()
                .any(|x| x.base_template.as_deref() == Some(id))
            {
                return Err(StorageOpError::Conflict(format!(
                    "Cannot delete Base Template {} that has Template Versions, please first remove all Template Versions for this Template.",
                    t.name
                )));
            }
            if t.status == "locked" {
                return Err(StorageOpError::Conflict(
                    "Cannot remove Template: it is being created.".into(),
                ));
            }
            t
        };
        for d in &t.disks {
            // Make it an ordinary disk so that its removal is the disk's.
            self.update(d, |disk: &mut Disk| disk.template = None)
                .await
                .map_err(failed)?
                .ok_or_else(|| StorageOpError::NotFound(format!("Disk {d} not found")))?;
            self.remove_disk(d).await?;
        }
        self.remove::<Template>(id).await.map_err(failed)?;
        self.event(
            2030,
            "normal",
            format!("Template {} was removed by admin@internal.", t.name),
            None,
            None,
        )
        .await;
        Ok(())
    }

    /// Drive XML and ovirt-vm metadata for a VM's disks (the host prepares the images
    /// named by pool, domain, image and volume), its CD-ROM, and the initialization
    /// `payload` of this run if any.
    pub fn drives_xml(
        &self,
        vm: &str,
        payload: Option<&crate::vminit::Payload>,
    ) -> std::result::Result<(String, String), String> {
        let inv = self.read();
        let disks = plugged_disks(&inv, vm);
        if inv.vms.get(vm).is_some_and(Vm::q35) && disks.iter().any(|d| d.interface == "ide") {
            // As oVirt: q35 has no IDE controller.
            return Err(
                "IDE disks need the i440fx machine (bios type i440fx_sea_bios); on q35 use sata, virtio or virtio_scsi".into(),
            );
        }
        let (mut devices, mut meta) = drives_of(&inv, &disks)?;
        if let Some(v) = inv.vms.get(vm) {
            let iso = match v.cdrom.as_str() {
                "" => None,
                id => Some(iso_disk(&inv, id, &v.cluster)?),
            };
            let (d, m) = cdrom_of(&inv, v, &disks, iso)?;
            devices.push_str(&d);
            meta.push_str(&m);
            if let Some(p) = payload {
                let (d, m) = payload_of(v, &disks, p)?;
                devices.push_str(&d);
                meta.push_str(&m);
            }
        }
        Ok((devices, meta))
    }
}

/// The id of a VM's CD-ROM device (one per VM, as in oVirt).
pub fn cdrom_id(vm: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{vm}/cdrom").as_bytes()).to_string()
}

/// An ISO disk a VM of `cluster` may hold in its CD-ROM.
pub fn iso_disk<'a>(
    inv: &'a Inventory,
    id: &str,
    cluster: &str,
) -> std::result::Result<&'a Disk, String> {
    let d = inv
        .disks
        .get(id)
        .ok_or_else(|| format!("the CD-ROM's ISO disk {id} does not exist"))?;
    if d.content_type != "iso" {
        return Err(format!(
            "disk {} is not an ISO disk (content_type {})",
            d.name, d.content_type
        ));
    }
    if d.status != "ok" {
        return Err(format!("ISO disk {} is {}", d.name, d.status));
    }
    let dc = inv
        .storage_domains
        .get(&d.storage_domain)
        .and_then(|s| s.data_center.as_deref());
    if dc.is_none() || dc != inv.dc_of_cluster(cluster) {
        return Err(format!(
            "ISO disk {} is not on a storage domain of the VM's data center",
            d.name
        ));
    }
    Ok(d)
}

/// The CD-ROM's place: the next free device of the machine's CD bus (IDE on i440fx,
/// SATA on q35, as oVirt's builder puts it).
pub fn cdrom_target(
    v: &Vm,
    disks: &[&Disk],
) -> std::result::Result<(String, &'static str), String> {
    if v.q35() {
        let used = disks
            .iter()
            .filter(|d| matches!(d.interface.as_str(), "sata" | "virtio_scsi"))
            .count();
        if used >= MAX_BUS_DISKS {
            return Err("no SATA/SCSI device name is left for the CD-ROM".into());
        }
        Ok((format!("sd{}", (b'a' + used as u8) as char), "sata"))
    } else {
        let used = disks.iter().filter(|d| d.interface == "ide").count();
        if used >= MAX_IDE_DISKS {
            return Err(format!(
                "the VM's CD-ROM needs one of the {MAX_IDE_DISKS} IDE places, and its disks take them all"
            ));
        }
        Ok((format!("hd{}", (b'a' + used as u8) as char), "ide"))
    }
}

/// The VM's CD-ROM device (always there, as in oVirt), with `iso` in it.
fn cdrom_of(
    inv: &Inventory,
    v: &Vm,
    disks: &[&Disk],
    iso: Option<&Disk>,
) -> std::result::Result<(String, String), String> {
    let (dev, bus) = cdrom_target(v, disks)?;
    let mut devices = String::from(
        "<disk type=\"file\" device=\"cdrom\"><driver name=\"qemu\" type=\"raw\" error_policy=\"report\"/>",
    );
    let mut meta = String::new();
    if let Some(d) = iso {
        let dc = inv
            .storage_domains
            .get(&d.storage_domain)
            .and_then(|s| s.data_center.clone())
            .unwrap_or_default();
        devices.push_str(&format!(
            "<source file=\"/rhev/data-center/{dc}/{sd}/images/{img}/{vol}\" startupPolicy=\"optional\"/>",
            sd = d.storage_domain,
            img = d.id,
            vol = d.leaf()
        ));
        meta.push_str(&format!(
            "<ovirt-vm:device devtype=\"disk\" name=\"{dev}\"><ovirt-vm:poolID>{dc}</ovirt-vm:poolID><ovirt-vm:domainID>{sd}</ovirt-vm:domainID><ovirt-vm:imageID>{img}</ovirt-vm:imageID><ovirt-vm:volumeID>{vol}</ovirt-vm:volumeID></ovirt-vm:device>",
            sd = d.storage_domain,
            img = d.id,
            vol = d.leaf()
        ));
    }
    devices.push_str(&format!(
        "<target dev=\"{dev}\" bus=\"{bus}\"/><readonly/><alias name=\"ua-{}\"/></disk>",
        cdrom_id(&v.id)
    ));
    if bus == "sata" && !disks.iter().any(|d| d.interface == "sata") {
        devices.push_str("<controller type=\"sata\" index=\"0\"/>");
    }
    Ok((devices, meta))
}

/// The payload device of a run (oVirt's VmPayload, VDSM builds its image): a CD-ROM on
/// the machine's CD bus, the place after the VM's own CD-ROM, or the first floppy; its
/// source is `PAYLOAD:` and its files go base64 in the ovirt-vm metadata.
fn payload_of(
    v: &Vm,
    disks: &[&Disk],
    p: &crate::vminit::Payload,
) -> std::result::Result<(String, String), String> {
    use base64::Engine as _;
    let (dev, bus, device) = match p.medium {
        crate::vminit::Medium::Floppy => ("fda".to_string(), "fdc", "floppy"),
        crate::vminit::Medium::Cdrom => {
            let (cd, bus) = cdrom_target(v, disks)?;
            let next = cd.as_bytes().last().copied().unwrap_or(b'a') + 1;
            let max = if bus == "ide" {
                b'a' + MAX_IDE_DISKS as u8
            } else {
                b'a' + MAX_BUS_DISKS as u8
            };
            if next >= max {
                return Err(format!(
                    "no {bus} device place is left for the initialization's CD-ROM"
                ));
            }
            (format!("{}{}", &cd[..2], next as char), bus, "cdrom")
        }
    };
    // QEMU's floppy has no rerror/werror: no error policy on it.
    let policy = if device == "floppy" {
        ""
    } else {
        " error_policy=\"report\""
    };
    let devices = format!(
        "<disk type=\"file\" device=\"{device}\" snapshot=\"no\"><driver name=\"qemu\" type=\"raw\"{policy}/><source file=\"PAYLOAD:\" startupPolicy=\"optional\"/><target dev=\"{dev}\" bus=\"{bus}\"/><readonly/></disk>"
    );
    let mut meta = format!("<ovirt-vm:device devtype=\"disk\" name=\"{dev}\"><ovirt-vm:payload>");
    if let Some(id) = &p.vol_id {
        meta.push_str(&format!(
            "<ovirt-vm:volId>{}</ovirt-vm:volId>",
            crate::vms::esc(id)
        ));
    }
    for (path, data) in &p.files {
        meta.push_str(&format!(
            "<ovirt-vm:file path=\"{}\">{}</ovirt-vm:file>",
            crate::vms::esc(path),
            base64::engine::general_purpose::STANDARD.encode(data)
        ));
    }
    meta.push_str("</ovirt-vm:payload></ovirt-vm:device>");
    Ok((devices, meta))
}

/// Most IDE disks of a VM (two buses of two units on the i440fx machine).
pub const MAX_IDE_DISKS: usize = 4;
/// Most disks of one bus kind (device names vda..vdz, sda..sdz).
pub const MAX_BUS_DISKS: usize = 26;

/// The domain XML's disk devices and their ovirt-vm metadata, on the bus each disk's
/// interface asks for (as oVirt's LibvirtVmXmlBuilder writes them): `virtio` is
/// virtio-blk (`vdX`), `virtio_scsi` a disk on the VM's virtio-scsi controller
/// (`sdX`, the controller added once), `sata` on the AHCI controller (`sdX`), `ide`
/// on the machine's IDE controller (`hdX`, at most four).
pub fn drives_of(
    inv: &Inventory,
    disks: &[&Disk],
) -> std::result::Result<(String, String), String> {
    let mut devices = String::new();
    let mut meta = String::new();
    let (mut vd, mut sd, mut hd) = (0usize, 0usize, 0usize);
    let (mut scsi, mut sata) = (false, false);
    for d in disks {
        let (bus, dev) = match d.interface.as_str() {
            "virtio_scsi" | "sata" => {
                if d.interface == "sata" {
                    sata = true;
                } else {
                    scsi = true;
                }
                sd += 1;
                (
                    if d.interface == "sata" {
                        "sata"
                    } else {
                        "scsi"
                    },
                    ("sd", sd),
                )
            }
            "ide" => {
                hd += 1;
                if hd > MAX_IDE_DISKS {
                    return Err(format!(
                        "the VM has more than {MAX_IDE_DISKS} IDE disks (the machine has two IDE buses of two units)"
                    ));
                }
                ("ide", ("hd", hd))
            }
            _ => {
                vd += 1;
                ("virtio", ("vd", vd))
            }
        };
        if dev.1 > MAX_BUS_DISKS {
            return Err(format!(
                "the VM has more than {MAX_BUS_DISKS} disks on the {bus} bus"
            ));
        }
        let dev = format!("{}{}", dev.0, (b'a' + (dev.1 - 1) as u8) as char);
        let dc = inv
            .storage_domains
            .get(&d.storage_domain)
            .and_then(|s| s.data_center.clone())
            .unwrap_or_default();
        let fmt = if d.format == "cow" || d.volumes.len() > 1 || d.template_base.is_some() {
            "qcow2"
        } else {
            "raw"
        };
        devices.push_str(&format!(
            "<disk type=\"file\" device=\"disk\"><driver name=\"qemu\" type=\"{fmt}\" cache=\"none\" error_policy=\"stop\" io=\"threads\"/><source file=\"/rhev/data-center/{dc}/{sd}/images/{img}/{vol}\"/><target dev=\"{dev}\" bus=\"{bus}\"/><serial>{img}</serial><alias name=\"ua-{img}\"/></disk>",
            sd = d.storage_domain,
            img = d.id,
            vol = d.leaf(),
        ));
        meta.push_str(&format!(
            "<ovirt-vm:device devtype=\"disk\" name=\"{dev}\"><ovirt-vm:poolID>{dc}</ovirt-vm:poolID><ovirt-vm:domainID>{sd}</ovirt-vm:domainID><ovirt-vm:imageID>{img}</ovirt-vm:imageID><ovirt-vm:volumeID>{vol}</ovirt-vm:volumeID></ovirt-vm:device>",
            sd = d.storage_domain,
            img = d.id,
            vol = d.leaf(),
        ));
    }
    if scsi {
        devices.push_str("<controller type=\"scsi\" index=\"0\" model=\"virtio-scsi\"/>");
    }
    if sata {
        devices.push_str("<controller type=\"sata\" index=\"0\"/>");
    }
    Ok((devices, meta))
}

/// The disks a VM starts with, in device order (bootable first, then by age): a
/// deactivated attachment stays out of the VM.
pub fn plugged_disks<'a>(inv: &'a Inventory, vm: &str) -> Vec<&'a Disk> {
    let mut disks: Vec<&Disk> = inv
        .disks_of(vm)
        .into_iter()
        .filter(|d| !d.inactive)
        .collect();
    disks.sort_by(|a, b| {
        b.bootable
            .cmp(&a.bootable)
            .then(a.creation_time.cmp(&b.creation_time))
    });
    disks
}
