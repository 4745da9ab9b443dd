//! JSON-RPC dispatch: binds each request's params to the verb's typed params, runs it,
//! and serialises the typed result (VDSM's shapes, see `halyard_proto::vdsm::verbs`).

use std::sync::Arc;
use std::time::Instant;

use halyard_proto::jsonrpc::{Params, Request, Response, RpcError};
use halyard_proto::vdsm::{errors, is_uuid, verbs, RunningStateChange, Verb};
use serde::Serialize;
use serde_json::Value;
use tracing::{debug, info, warn, Instrument};

use crate::agent::Agent;

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
        "Host.ping2" | "Host.getStats" | "Host.getAllVmStats" | "Host.getVMList" | "Host.getJobs"
    )
}

/// Handles one request. Returns `None` for notifications (requests without an id).
pub async fn handle(agent: &Arc<Agent>, req: Request, flow_id: Option<String>) -> Option<Response> {
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
        let outcome = if !agent.is_ready() {
            Err(errors::RECOVERY.rpc(None))
        } else {
            call(agent, &req.method, &req.params).await
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

async fn call(agent: &Arc<Agent>, method: &str, params: &Params) -> Result<Value, RpcError> {
    match method {
        verbs::HostPing2::METHOD => {
            bind::<verbs::HostPing2>(params)?;
            to_value(true)
        }
        verbs::HostGetCapabilities::METHOD => {
            bind::<verbs::HostGetCapabilities>(params)?;
            to_value(agent.capabilities().await?)
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
        verbs::HostGetJobs::METHOD => {
            bind::<verbs::HostGetJobs>(params)?;
            // No host jobs exist before storage operations do.
            to_value(serde_json::Map::new())
        }
        verbs::VmCreate::METHOD => {
            let p = bind::<verbs::VmCreate>(params)?;
            to_value(agent.vm_create(p).await?)
        }
        verbs::VmDestroy::METHOD => {
            let p = bind::<verbs::VmDestroy>(params)?;
            check_vm_id(&p.vm_id)?;
            to_value(agent.vm_destroy(p).await?)
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
        other => Err(RpcError::new(
            halyard_proto::jsonrpc::METHOD_NOT_FOUND,
            format!("The method does not exist or is not available: {{'method': '{other}'}}"),
        )),
    }
}
