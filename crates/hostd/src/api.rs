//! JSON-RPC dispatch: binds each request's params to the verb's typed params, runs it,
//! and serialises the typed result (VDSM's shapes, see `halyard_proto::vdsm::verbs`).

use std::sync::Arc;
use std::time::Instant;

use halyard_proto::jsonrpc::{Params, Request, Response, RpcError};
use halyard_proto::vdsm::storage as st;
use halyard_proto::vdsm::{errors, is_uuid, verbs, RunningStateChange, Verb};
use serde::Serialize;
use serde_json::Value;
use tracing::{debug, info, warn, Instrument};

use crate::agent::{storage_err, Agent};
use crate::authz::{self, Caller};

fn bind<V: Verb>(p: &Params) -> Result<V::Params, RpcError> {
    p.bind(V::PARAMS)
}

fn check_vm_id(id: &str) -> Result<(), RpcError> {
    if is_uuid(id) {
        Ok(())
    } else {
        Err(RpcError::invalid_params(format!(
            "vmID must be a UUID, got {:?}",
            id.chars().take(64).collect::<String>()
        )))
    }
}

fn to_value<T: Serialize>(v: T) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(RpcError::internal)
}

/// Verbs polled often; logged at debug level only.
fn is_polling(method: &str) -> bool {
    matches!(
        method,
        "Host.ping2"
            | "Host.getStats"
            | "Host.getAllVmStats"
            | "Host.getVMList"
            | "Host.getJobs"
            | "Task.getStatus"
            | "StoragePool.getSpmStatus"
            | "Host.getStorageRepoStats"
    )
}

/// Handles one request. Returns `None` for notifications (requests without an id).
pub async fn handle(
    agent: &Arc<Agent>,
    req: Request,
    flow_id: Option<String>,
    (caller, peer): (&Caller, &str),
) -> Option<Response> {
    let span = tracing::info_span!(
        "rpc",
        method = %req.method,
        flow_id = %flow_id.as_deref().unwrap_or("-"),
    );
    async move {
        let started = Instant::now();
        let polling = is_polling(&req.method);
        if polling {
            debug!(id = ?req.id, "request");
        } else {
            info!(id = ?req.id, "request");
        }
        let enrolling = agent.identity.enrolling();
        // Enrollment touches no VM: an agent still recovering can be enrolled.
        let enrollment = enrolling && authz::ENROLLMENT_VERBS.contains(&req.method.as_str());
        let outcome = if let Err(e) = authz::check(caller, &req.method, enrolling) {
            agent.access_denied(caller, peer, &req.method);
            Err(e)
        } else if !agent.is_ready() && !enrollment {
            Err(errors::RECOVERY.rpc(None))
        } else {
            call(agent, &req.method, &req.params, caller).await
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match &outcome {
            Ok(_) if polling => debug!(ms, "done"),
            Ok(_) => info!(ms, "done"),
            Err(e) => warn!(code = e.code, error = %e.message, ms, "failed"),
        }
        let id = req.id?;
        Some(match outcome {
            Ok(v) => Response::ok(id, v),
            Err(e) => Response::err(id, e),
        })
    }
    .instrument(span)
    .await
}

async fn call(
    agent: &Arc<Agent>,
    method: &str,
    params: &Params,
    caller: &Caller,
) -> Result<Value, RpcError> {
    match method {
        verbs::HostPing2::METHOD => {
            bind::<verbs::HostPing2>(params)?;
            to_value(true)
        }
        verbs::HostGetCapabilities::METHOD => {
            bind::<verbs::HostGetCapabilities>(params)?;
            to_value(agent.capabilities().await?)
        }
        verbs::HostGetAvailableUpdates::METHOD => {
            bind::<verbs::HostGetAvailableUpdates>(params)?;
            to_value(crate::updates::available(&agent.cfg.updates.packages).await?)
        }
        verbs::HostFenceNode::METHOD => {
            let p = bind::<verbs::HostFenceNode>(params)?;
            let f = &agent.cfg.fencing;
            to_value(
                crate::fence::fence_node(
                    &f.agents_dir,
                    std::time::Duration::from_secs(f.timeout_secs.max(1)),
                    p,
                )
                .await?,
            )
        }
        verbs::HostGetStats::METHOD => {
            bind::<verbs::HostGetStats>(params)?;
            to_value(agent.host_stats().await)
        }
        verbs::HostGetAllVmStats::METHOD => {
            bind::<verbs::HostGetAllVmStats>(params)?;
            to_value(agent.all_vm_stats())
        }
        verbs::HostGetVmList::METHOD => {
            let p = bind::<verbs::HostGetVmList>(params)?;
            to_value(agent.vm_list(&p.vm_list, false))
        }
        verbs::HostGetVmFullList::METHOD => {
            let p = bind::<verbs::HostGetVmFullList>(params)?;
            to_value(agent.vm_list(&p.vm_list, true))
        }
        "Host.getCertificateRequest" => {
            #[derive(serde::Deserialize)]
            struct P {
                #[serde(default)]
                token: Option<String>,
            }
            let p: P = params.bind(&["token"])?;
            to_value(agent.identity.certificate_request(p.token.as_deref())?)
        }
        "Host.setCertificate" => {
            #[derive(serde::Deserialize)]
            struct P {
                certificate: String,
                #[serde(default)]
                ca: Option<String>,
                #[serde(default)]
                token: Option<String>,
            }
            let p: P = params.bind(&["certificate", "ca", "token"])?;
            agent
                .identity
                .set_certificate(p.token.as_deref(), &p.certificate, p.ca.as_deref())?;
            crate::migration::sync_libvirt_pki(&agent.cfg).await;
            to_value(true)
        }
        verbs::VmUpdateDevice::METHOD => {
            let p = bind::<verbs::VmUpdateDevice>(params)?;
            check_vm_id(&p.vm_id)?;
            agent.vm_update_graphics(&p.vm_id, &p.params).await?;
            to_value(true)
        }
        verbs::VmChangeCd::METHOD => {
            let p = bind::<verbs::VmChangeCd>(params)?;
            check_vm_id(&p.vm_id)?;
            agent.vm_change_cd(&p.vm_id, &p.cdromspec).await?;
            to_value(true)
        }
        verbs::HostAddImageTicket::METHOD => {
            let p = bind::<verbs::HostAddImageTicket>(params)?;
            let spec: halyard_imageio::TicketSpec = serde_json::from_value(p.ticket)
                .map_err(|e| RpcError::invalid_params(format!("ticket: {e}")))?;
            agent.images.add_ticket(spec).await?;
            to_value(true)
        }
        verbs::HostRemoveImageTicket::METHOD => {
            let p = bind::<verbs::HostRemoveImageTicket>(params)?;
            agent.images.remove_ticket(&p.uuid);
            to_value(true)
        }
        verbs::HostExtendImageTicket::METHOD => {
            let p = bind::<verbs::HostExtendImageTicket>(params)?;
            agent.images.extend_ticket(&p.uuid, p.timeout)?;
            to_value(true)
        }
        verbs::HostGetImageTicket::METHOD => {
            let p = bind::<verbs::HostGetImageTicket>(params)?;
            to_value(agent.images.ticket_info(&p.uuid)?)
        }
        verbs::NbdStartServer::METHOD => {
            let p = bind::<verbs::NbdStartServer>(params)?;
            let cfg: crate::images::NbdConfig = serde_json::from_value(p.config)
                .map_err(|e| RpcError::invalid_params(format!("config: {e}")))?;
            let s = &agent.storage;
            let path = s
                .image_prepare(&cfg.sd_id, &cfg.img_id, &cfg.vol_id, false)
                .await
                .map_err(storage_err)?;
            let qcow2 = s
                .volume_format(&cfg.sd_id, &cfg.img_id, &cfg.vol_id)
                .map_err(storage_err)?
                == halyard_storage::volmeta::Format::Cow;
            to_value(
                agent
                    .images
                    .start_nbd(&p.server_id, &path, qcow2, &cfg)
                    .await?,
            )
        }
        verbs::NbdStopServer::METHOD => {
            let p = bind::<verbs::NbdStopServer>(params)?;
            agent.images.stop_nbd(&p.server_id).await?;
            to_value(true)
        }
        verbs::VolumeVerifyUntrusted::METHOD => {
            let p = bind::<verbs::VolumeVerifyUntrusted>(params)?;
            let s = &agent.storage;
            let info = s
                .volume_info(&p.sd, &p.img, &p.vol)
                .await
                .map_err(storage_err)?;
            let path = s
                .image_prepare(&p.sd, &p.img, &p.vol, true)
                .await
                .map_err(storage_err)?;
            let qcow2 = info["format"].as_str() == Some("COW");
            let capacity: u64 = info["capacity"]
                .as_str()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let parent = info["parent"]
                .as_str()
                .filter(|p| *p != halyard_storage::error::BLANK_UUID);
            let iso = p.content.as_deref() == Some("iso");
            crate::images::verify_untrusted(&path, qcow2, capacity, parent, iso)
                .await
                .map_err(|e| errors::INVALID_PARAMETER.rpc(Some(&e)))?;
            to_value(true)
        }
        verbs::HostGetJobs::METHOD => {
            let p = bind::<verbs::HostGetJobs>(params)?;
            to_value(agent.storage.jobs(p.job_type.as_deref(), &p.job_ids))
        }
        verbs::VmCreate::METHOD => {
            let p = bind::<verbs::VmCreate>(params)?;
            to_value(agent.vm_create(p).await?)
        }
        verbs::VmDestroy::METHOD => {
            let p = bind::<verbs::VmDestroy>(params)?;
            check_vm_id(&p.vm_id)?;
            // Another host may destroy only the VM it is migrating here.
            if let Caller::Certificate {
                role: Some(halyard_pki::Role::Host),
                subject,
            } = caller
            {
                if agent.incoming_from(&p.vm_id).as_deref() != Some(subject.as_str()) {
                    agent.access_denied(caller, subject, method);
                    return Err(authz::NOT_AUTHORIZED.rpc(Some(&format!(
                        "{} may not call {method}: another host may destroy only the VM it is migrating here",
                        caller.describe()
                    ))));
                }
            }
            to_value(agent.vm_destroy(p).await?)
        }
        verbs::VmMigrate::METHOD => {
            let p = bind::<verbs::VmMigrate>(params)?;
            check_vm_id(&p.vm_id)?;
            to_value(agent.vm_migrate(&p.vm_id, &p.params).await?)
        }
        verbs::VmMigrationCreate::METHOD => {
            let p = bind::<verbs::VmMigrationCreate>(params)?;
            check_vm_id(&p.vm_id)?;
            let from = match caller {
                Caller::Certificate { subject, .. } => subject.clone(),
                Caller::Anonymous => String::new(),
            };
            to_value(agent.vm_migration_create(&from, &p).await?)
        }
        verbs::VmGetMigrationStatus::METHOD => {
            let p = bind::<verbs::VmGetMigrationStatus>(params)?;
            check_vm_id(&p.vm_id)?;
            to_value(agent.vm_migration_status(&p.vm_id)?)
        }
        verbs::VmMigrateCancel::METHOD => {
            let p = bind::<verbs::VmMigrateCancel>(params)?;
            check_vm_id(&p.vm_id)?;
            to_value(agent.vm_migrate_cancel(&p.vm_id).await?)
        }
        verbs::VmMigrateChangeParams::METHOD => {
            let p = bind::<verbs::VmMigrateChangeParams>(params)?;
            check_vm_id(&p.vm_id)?;
            to_value(
                agent
                    .vm_migrate_change_params(&p.vm_id, p.params.max_bandwidth)
                    .await?,
            )
        }
        verbs::VmShutdown::METHOD => {
            let p = bind::<verbs::VmShutdown>(params)?;
            check_vm_id(&p.vm_id)?;
            to_value(agent.vm_shutdown(p).await?)
        }
        verbs::VmReset::METHOD => {
            let p = bind::<verbs::VmReset>(params)?;
            check_vm_id(&p.vm_id)?;
            to_value(agent.vm_reset(&p.vm_id).await?)
        }
        verbs::VmPause::METHOD => {
            let p = bind::<verbs::VmPause>(params)?;
            check_vm_id(&p.vm_id)?;
            agent.vm_pause(&p.vm_id).await?;
            to_value(RunningStateChange::default())
        }
        verbs::VmCont::METHOD => {
            let p = bind::<verbs::VmCont>(params)?;
            check_vm_id(&p.vm_id)?;
            agent.vm_cont(&p.vm_id).await?;
            to_value(RunningStateChange::default())
        }
        verbs::VmGetStats::METHOD => {
            let p = bind::<verbs::VmGetStats>(params)?;
            check_vm_id(&p.vm_id)?;
            to_value(vec![agent.vm_stats(&p.vm_id)?])
        }
        m if m.starts_with("StoragePool.")
            || m.starts_with("StorageDomain.")
            || m.starts_with("Volume.")
            || m.starts_with("Image.")
            || m.starts_with("Task.")
            || m.starts_with("SDM.")
            || m.starts_with("Lease.")
            || matches!(
                m,
                "Host.getAllTasksStatuses"
                    | "Host.getConnectedStoragePools"
                    | "Host.getStorageRepoStats"
                    | "VM.snapshot"
            ) =>
        {
            storage_call(agent, m, params).await
        }
        other => Err(RpcError::new(
            halyard_proto::jsonrpc::METHOD_NOT_FOUND,
            format!("The method does not exist or is not available: {{'method': '{other}'}}"),
        )),
    }
}

fn code_of(v: &st::IntOrName, names: &[(&str, i64)], what: &str) -> Result<i64, RpcError> {
    v.code(names)
        .ok_or_else(|| RpcError::invalid_params(format!("{what} {v:?}")))
}

async fn storage_call(
    agent: &Arc<Agent>,
    method: &str,
    params: &Params,
) -> Result<Value, RpcError> {
    let s = &agent.storage;
    let e = storage_err;
    match method {
        st::ConnectStorageServer::METHOD | st::DisconnectStorageServer::METHOD => {
            let p = bind::<st::ConnectStorageServer>(params)?;
            let dt = code_of(&p.domain_type, st::DOMAIN_TYPES, "domainType")?;
            let conns: Vec<halyard_storage::connection::ConnParams> = p
                .connection_params
                .into_iter()
                .map(serde_json::from_value)
                .collect::<Result<_, _>>()
                .map_err(RpcError::invalid_params)?;
            let r = if method == st::ConnectStorageServer::METHOD {
                s.connect_storage_server(dt, conns).await
            } else {
                s.disconnect_storage_server(dt, conns).await
            };
            to_value(r.map_err(e)?)
        }
        st::DomainCreate::METHOD => {
            let p = bind::<st::DomainCreate>(params)?;
            let dt = code_of(&p.domain_type, st::DOMAIN_TYPES, "domainType")?;
            let class = code_of(&p.domain_class, st::DOMAIN_CLASSES, "domainClass")?;
            let version = p.version.map(|v| match v {
                st::IntOrName::Int(i) => i.to_string(),
                st::IntOrName::Name(n) => n,
            });
            s.create_domain(p.sd, dt, p.type_args, p.name, class, version, p.block_size)
                .await
                .map_err(e)?;
            to_value(true)
        }
        st::DomainGetInfo::METHOD => {
            let p = bind::<st::DomainGetInfo>(params)?;
            to_value(s.domain_info(&p.sd).await.map_err(e)?)
        }
        st::DomainFormat::METHOD => {
            let p = bind::<st::DomainFormat>(params)?;
            s.format_domain(&p.sd, p.auto_detach).await.map_err(e)?;
            to_value(true)
        }
        st::DomainGetStats::METHOD => {
            let p = bind::<st::DomainGetStats>(params)?;
            to_value(s.domain_stats(&p.sd).await.map_err(e)?)
        }
        st::DomainGetImages::METHOD => {
            let p = bind::<st::DomainGetImages>(params)?;
            to_value(s.images(&p.sd).await.map_err(e)?)
        }
        st::DomainGetVolumes::METHOD => {
            let p = bind::<st::DomainGetVolumes>(params)?;
            to_value(s.volumes(&p.sd, &p.img).await.map_err(e)?)
        }
        st::DomainAttach::METHOD => {
            let p = bind::<st::DomainAttach>(params)?;
            s.attach_domain(&p.sd, &p.sp).await.map_err(e)?;
            to_value(true)
        }
        st::DomainDetach::METHOD => {
            let p = bind::<st::DomainDetach>(params)?;
            s.detach_domain(&p.sd, &p.sp).await.map_err(e)?;
            to_value(true)
        }
        st::DomainActivate::METHOD | st::DomainDeactivate::METHOD => {
            let p = bind::<st::DomainActivate>(params)?;
            s.set_domain_active(&p.sd, &p.sp, method == st::DomainActivate::METHOD)
                .await
                .map_err(e)?;
            to_value(true)
        }
        st::PoolCreate::METHOD => {
            let p = bind::<st::PoolCreate>(params)?;
            s.create_pool(p.sp, p.name, p.master, p.master_version, p.domain_list)
                .await
                .map_err(e)?;
            to_value(true)
        }
        st::PoolConnect::METHOD => {
            let p = bind::<st::PoolConnect>(params)?;
            s.connect_pool(
                p.sp,
                p.host_id,
                p.master,
                p.master_version,
                p.domain_dict.unwrap_or_default(),
            )
            .await
            .map_err(e)?;
            to_value(true)
        }
        st::PoolDisconnect::METHOD => {
            let p = bind::<st::PoolDisconnect>(params)?;
            s.disconnect_pool(&p.sp).await.map_err(e)?;
            to_value(true)
        }
        st::PoolGetInfo::METHOD => {
            let p = bind::<st::PoolGetInfo>(params)?;
            to_value(s.pool_info(&p.sp).await.map_err(e)?)
        }
        st::SpmStart::METHOD => {
            let p = bind::<st::SpmStart>(params)?;
            to_value(s.spm_start(&p.sp).await.map_err(e)?)
        }
        st::SpmStop::METHOD => {
            let p = bind::<st::SpmStop>(params)?;
            s.spm_stop(&p.sp).await.map_err(e)?;
            to_value(true)
        }
        st::GetSpmStatus::METHOD => {
            let p = bind::<st::GetSpmStatus>(params)?;
            to_value(s.spm_status(&p.sp).await.map_err(e)?)
        }
        st::VolumeCreate::METHOD => {
            let p = bind::<st::VolumeCreate>(params)?;
            let a = halyard_storage::pool::VolumeCreateArgs {
                vol_format: code_of(&p.vol_format, st::VOL_FORMATS, "volFormat")?,
                preallocate: code_of(&p.preallocate, st::PREALLOCATIONS, "preallocate")?,
                sp: p.sp,
                sd: p.sd,
                img: p.img,
                vol: p.vol,
                size: p.size,
                disk_type: p.disk_type,
                desc: p.desc,
                src_img: p.src_img,
                src_vol: p.src_vol,
            };
            to_value(s.volume_create(a).await.map_err(e)?)
        }
        st::VolumeDelete::METHOD => {
            let p = bind::<st::VolumeDelete>(params)?;
            to_value(
                s.volume_delete(&p.sp, &p.sd, &p.img, &p.vol, p.force)
                    .await
                    .map_err(e)?,
            )
        }
        st::VolumeGetInfo::METHOD => {
            let p = bind::<st::VolumeGetInfo>(params)?;
            to_value(s.volume_info(&p.sd, &p.img, &p.vol).await.map_err(e)?)
        }
        st::VolumeExtendSize::METHOD => {
            let p = bind::<st::VolumeExtendSize>(params)?;
            to_value(
                s.volume_extend(&p.sp, &p.sd, &p.img, &p.vol, &p.new_size)
                    .await
                    .map_err(e)?,
            )
        }
        st::VolumeSetLegality::METHOD => {
            let p = bind::<st::VolumeSetLegality>(params)?;
            s.volume_set_legality(&p.sp, &p.sd, &p.img, &p.vol, &p.legality)
                .await
                .map_err(e)?;
            to_value(true)
        }
        st::VolumeCopy::METHOD => {
            let p = bind::<st::VolumeCopy>(params)?;
            if p.dst_sd != p.sd {
                return Err(storage_err(
                    halyard_storage::StorageError::InvalidParameter(
                        "copies across domains go through SDM.copy_data".into(),
                    ),
                ));
            }
            let vt = code_of(&p.vol_type, st::VOL_TYPES, "volType")?;
            let vf = code_of(&p.vol_format, st::VOL_FORMATS, "volFormat")?;
            let pa = code_of(&p.preallocate, st::PREALLOCATIONS, "preallocate")?;
            to_value(
                s.volume_copy(
                    &p.sp, &p.sd, &p.img, &p.vol, &p.dst_img, &p.dst_vol, &p.desc, vt, vf, pa,
                )
                .await
                .map_err(e)?,
            )
        }
        st::ImageDelete::METHOD => {
            let p = bind::<st::ImageDelete>(params)?;
            to_value(s.image_delete(&p.sp, &p.sd, &p.img).await.map_err(e)?)
        }
        st::ImagePrepare::METHOD => {
            let p = bind::<st::ImagePrepare>(params)?;
            let vol = p
                .vol
                .ok_or_else(|| errors::MISS_PARAM.rpc(Some("{'name': 'volumeID'}")))?;
            let path = s
                .image_prepare(&p.sd, &p.img, &vol, p.allow_illegal)
                .await
                .map_err(e)?;
            agent.images.prepared(&path);
            to_value(serde_json::json!({"path": path}))
        }
        st::ImageTeardown::METHOD => {
            let p = bind::<st::ImageTeardown>(params)?;
            halyard_storage::error::check_uuid("imageID", &p.img).map_err(e)?;
            to_value(true)
        }
        st::TaskGetStatus::METHOD => {
            let p = bind::<st::TaskGetStatus>(params)?;
            to_value(s.task_status(&p.task).map_err(e)?)
        }
        st::TaskGetInfo::METHOD => {
            let p = bind::<st::TaskGetInfo>(params)?;
            to_value(s.task_info(&p.task).map_err(e)?)
        }
        st::TaskClear::METHOD => {
            let p = bind::<st::TaskClear>(params)?;
            s.task_clear(&p.task).map_err(e)?;
            to_value(true)
        }
        st::LeaseCreate::METHOD => {
            let p = bind::<st::LeaseCreate>(params)?;
            to_value(
                s.lease_create(&p.lease.sd_id, &p.lease.lease_id)
                    .await
                    .map_err(e)?,
            )
        }
        st::LeaseDelete::METHOD => {
            let p = bind::<st::LeaseDelete>(params)?;
            to_value(
                s.lease_delete(&p.lease.sd_id, &p.lease.lease_id)
                    .await
                    .map_err(e)?,
            )
        }
        st::LeaseInfoVerb::METHOD => {
            let p = bind::<st::LeaseInfoVerb>(params)?;
            to_value(
                s.lease_info(&p.lease.sd_id, &p.lease.lease_id)
                    .await
                    .map_err(e)?,
            )
        }
        st::LeaseStatusVerb::METHOD => {
            let p = bind::<st::LeaseStatusVerb>(params)?;
            to_value(
                s.lease_status(&p.lease.sd_id, &p.lease.lease_id)
                    .await
                    .map_err(e)?,
            )
        }
        st::GetAllTasksStatuses::METHOD => {
            bind::<st::GetAllTasksStatuses>(params)?;
            to_value(s.all_tasks_statuses().map_err(e)?)
        }
        st::GetConnectedStoragePools::METHOD => {
            bind::<st::GetConnectedStoragePools>(params)?;
            to_value(s.connected_pools())
        }
        st::GetStorageRepoStats::METHOD => {
            bind::<st::GetStorageRepoStats>(params)?;
            to_value(s.repo_stats())
        }
        st::CopyData::METHOD => {
            let p = bind::<st::CopyData>(params)?;
            s.copy_data(&p.job_id, &p.source, &p.destination)
                .await
                .map_err(e)?;
            to_value(true)
        }
        st::VmSnapshot::METHOD => {
            let p = bind::<st::VmSnapshot>(params)?;
            check_vm_id(&p.vm_id)?;
            to_value(agent.vm_snapshot(p).await?)
        }
        other => Err(RpcError::new(
            halyard_proto::jsonrpc::METHOD_NOT_FOUND,
            format!("The method does not exist or is not available: {{'method': '{other}'}}"),
        )),
    }
}
