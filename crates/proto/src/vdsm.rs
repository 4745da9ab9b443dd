//! VDSM's protocol on top of STOMP + JSON-RPC: destinations, error codes, VM statuses,
//! events, and one typed request/response pair per verb (see [`verbs`]).
//!
//! Facts follow oVirt/vdsm (`lib/vdsm/api/vdsm-api.yml`, `lib/vdsm/rpc/Bridge.py`,
//! `lib/vdsm/common/exception.py`, `lib/yajsonrpc/stompserver.py`): a verb without a
//! return value answers `true`; numbers in stats are strings where VDSM sends strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::jsonrpc::RpcError;

/// STOMP destinations.
pub mod dest {
    pub const REQUESTS: &str = "jms.topic.vdsm_requests";
    pub const IRS_REQUESTS: &str = "jms.topic.vdsm_irs_requests";
    pub const RESPONSES: &str = "jms.topic.vdsm_responses";
    pub const EVENTS: &str = "jms.queue.events";

    /// True if a SEND to `d` is a JSON-RPC request (`<queue>` or `<queue>.<anything>`).
    pub fn is_request_queue(d: &str) -> bool {
        [REQUESTS, IRS_REQUESTS]
            .iter()
            .any(|q| d == *q || d.strip_prefix(q).is_some_and(|rest| rest.starts_with('.')))
    }
}

/// The STOMP header carrying the engine's flow id.
pub const CORRELATION_HEADER: &str = "ovirtCorrelationId";

/// VDSM's own error codes (`lib/vdsm/common/exception.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub code: i64,
    pub message: &'static str,
}

impl ErrorCode {
    /// The JSON-RPC error, with VDSM's "message: {context}" form when context is given.
    pub fn rpc(self, context: Option<&str>) -> RpcError {
        let message = match context {
            Some(c) => format!("{}: {c}", self.message),
            None => self.message.to_string(),
        };
        RpcError::new(self.code, message)
    }
}

pub mod errors {
    use super::ErrorCode;
    macro_rules! codes {
        ($($name:ident = $code:expr, $msg:expr;)*) => {
            $(pub const $name: ErrorCode = ErrorCode { code: $code, message: $msg };)*
        };
    }
    codes! {
        NO_VM = 1, "Virtual machine does not exist";
        EXIST = 4, "Virtual machine already exists";
        DOWN = 6, "Virtual machine is down";
        CREATE_ERR = 9, "Error creating the requested VM";
        MISS_PARAM = 11, "Missing required parameter";
        UNEXPECTED = 16, "Unexpected exception";
        NONRESP = 19, "Guest agent non-responsive";
        DESTROY_ERR = 42, "Virtual machine destroy error";
        NOT_IMPLEMENTED = 44, "Not implemented";
        MIGRATE_ERR = 12, "Fatal error during migration";
        MIG_CANCEL_ERR = 47, "Migration not in progress";
        MIGRATION_IN_PROGRESS = 51, "Command not supported during migration";
        MIG_NOT_IN_PROGRESS = 81, "VM not migrating";
        MIGRATE_LIMIT = 82, "Incoming migration limit exceeded";
        MIG_OPERATION_ERR = 102, "Error occurred during migration";
        RESET_FAILED = 90, "Failed to reset VM.";
        INVALID_PARAMETER = 91, "Invalid parameter";
        IMAGE_TICKETS = 481, "Image tickets error";
        RECOVERY = 99, "Recovering from crash or Initializing";
        GENERAL = 100, "General Exception";
    }

    /// noVM with VDSM's context form.
    pub fn no_vm(vm_id: &str) -> crate::jsonrpc::RpcError {
        NO_VM.rpc(Some(&format!("{{'vmId': '{vm_id}'}}")))
    }
}

/// VM statuses as VDSM spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VmStatus {
    WaitForLaunch,
    #[serde(rename = "Powering up")]
    PoweringUp,
    Up,
    Paused,
    #[serde(rename = "Powering down")]
    PoweringDown,
    RebootInProgress,
    #[serde(rename = "Migration Source")]
    MigrationSource,
    #[serde(rename = "Migration Destination")]
    MigrationDestination,
    #[serde(rename = "Saving State")]
    SavingState,
    #[serde(rename = "Restoring state")]
    RestoringState,
    Down,
}

impl VmStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VmStatus::WaitForLaunch => "WaitForLaunch",
            VmStatus::PoweringUp => "Powering up",
            VmStatus::Up => "Up",
            VmStatus::Paused => "Paused",
            VmStatus::PoweringDown => "Powering down",
            VmStatus::RebootInProgress => "RebootInProgress",
            VmStatus::MigrationSource => "Migration Source",
            VmStatus::MigrationDestination => "Migration Destination",
            VmStatus::SavingState => "Saving State",
            VmStatus::RestoringState => "Restoring state",
            VmStatus::Down => "Down",
        }
    }

    /// A VM in this state has a running QEMU process.
    pub fn is_running(self) -> bool {
        !matches!(self, VmStatus::Down | VmStatus::WaitForLaunch)
    }
}

impl std::fmt::Display for VmStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a VM went down (`lib/vdsm/virt/vmexitreason.py`).
pub mod exit_reason {
    pub const SUCCESS: i64 = 0;
    pub const GENERIC_ERROR: i64 = 1;
    pub const LOST_QEMU_CONNECTION: i64 = 2;
    pub const LIBVIRT_START_FAILED: i64 = 3;
    pub const MIGRATION_SUCCEEDED: i64 = 4;
    pub const SAVE_STATE_SUCCEEDED: i64 = 5;
    pub const ADMIN_SHUTDOWN: i64 = 6;
    pub const USER_SHUTDOWN: i64 = 7;
    pub const MIGRATION_FAILED: i64 = 8;
    pub const DESTROYED_ON_STARTUP: i64 = 10;
    pub const HOST_SHUTDOWN: i64 = 11;

    pub fn message(r: i64) -> &'static str {
        match r {
            SUCCESS => "VM exited normally",
            GENERIC_ERROR => "VM failed",
            LOST_QEMU_CONNECTION => "Lost connection with qemu process",
            LIBVIRT_START_FAILED => "Failed to start VM",
            MIGRATION_SUCCEEDED => "Migration succeeded",
            SAVE_STATE_SUCCEEDED => "SaveState succeeded",
            MIGRATION_FAILED => "VM failed to migrate",
            ADMIN_SHUTDOWN => "Admin shut down from the engine",
            USER_SHUTDOWN => "User shut down from within the guest",
            DESTROYED_ON_STARTUP => "VM destroyed during the startup",
            HOST_SHUTDOWN => "VM has been terminated on the host",
            _ => "VM exited",
        }
    }
}

/// Event method names.
pub mod events {
    pub fn vm_status(vm_id: &str) -> String {
        format!("|virt|VM_status|{vm_id}")
    }
    /// A migration's progress, sent by the source: `{<vmid>: {progress, postcopy,
    /// [downtime]}}`.
    pub fn vm_migration_status(vm_id: &str) -> String {
        format!("|virt|VM_migration_status|{vm_id}")
    }
    pub fn job_status(job_id: &str) -> String {
        format!("|jobs|status|{job_id}")
    }
    pub const HOST_CONN: &str = "|net|host_conn|no_id";
}

/// Accepts an integer given as a JSON number or as a numeric string (the engine sends
/// some integers as strings).
pub fn int_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v: Option<Value> = Option::deserialize(d)?;
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("expected an integer")),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("expected an integer, got {s:?}"))),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected an integer, got {other}"
        ))),
    }
}

/// A boolean the engine may send as `true` or as the string `"true"`.
pub fn bool_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let v: Option<Value> = Option::deserialize(d)?;
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ => Err(serde::de::Error::custom(format!(
                "expected true or false, got {s:?}"
            ))),
        },
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected true or false, got {other}"
        ))),
    }
}

/// One step of a convergence schedule: `setDowntime` (`params`: the downtime in ms),
/// `abort` or `postcopy` (no params).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConvergenceAction {
    pub name: String,
    #[serde(default)]
    pub params: Vec<Value>,
}

/// An action taken once the migration has gone through more than `limit` memory
/// iterations since it started (`-1`: at the next iteration after the ones before).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConvergenceItem {
    pub limit: i64,
    pub action: ConvergenceAction,
}

/// `convergenceSchedule` of VM.migrate: `init` runs when the migration starts, the
/// `stalling` items one per new memory iteration, in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ConvergenceSchedule {
    #[serde(default)]
    pub init: Vec<ConvergenceAction>,
    #[serde(default)]
    pub stalling: Vec<ConvergenceItem>,
}

/// VM.migrate's `params` (VDSM's MigrateParams, the keys the engine sends).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MigrateParams {
    /// The destination agent, `host[:port]` (port 54321 when absent).
    pub dst: String,
    /// The destination's address for the migration stream (default: `dst`'s host).
    #[serde(default, rename = "dstqemu", skip_serializing_if = "Option::is_none")]
    pub dst_qemu: Option<String>,
    /// Only `online`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Only `remote` (`file` is hibernation, not a migration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(
        default,
        deserialize_with = "bool_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub tunneled: Option<bool>,
    #[serde(
        default,
        deserialize_with = "bool_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub abort_on_error: Option<bool>,
    #[serde(
        default,
        deserialize_with = "bool_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub auto_converge: Option<bool>,
    #[serde(
        default,
        deserialize_with = "bool_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub compressed: Option<bool>,
    #[serde(
        default,
        deserialize_with = "bool_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub encrypted: Option<bool>,
    /// MiB/s.
    #[serde(
        default,
        deserialize_with = "int_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_bandwidth: Option<i64>,
    /// Where the console clients reconnect after the switch (`host[:port][?tlsPort]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convergence_schedule: Option<ConvergenceSchedule>,
    #[serde(
        default,
        deserialize_with = "bool_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_guest_events: Option<bool>,
    #[serde(
        default,
        deserialize_with = "int_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub outgoing_limit: Option<i64>,
    #[serde(
        default,
        deserialize_with = "int_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub incoming_limit: Option<i64>,
    /// The legacy maximum downtime (ms), used only without a convergence schedule.
    #[serde(
        default,
        deserialize_with = "int_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub downtime: Option<i64>,
    /// Parallel migration connections (0 or absent: off).
    #[serde(
        default,
        deserialize_with = "int_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub parallel: Option<i64>,
    #[serde(
        default,
        deserialize_with = "bool_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub zerocopy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpusets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_nodesets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dstparams: Option<String>,
    /// The source host's name (the engine sends it; informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
}

/// `VM.migrate`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MigrateVerbParams {
    #[serde(rename = "vmID")]
    pub vm_id: String,
    pub params: MigrateParams,
}

/// `VM.migrationCreate`: what the source agent sends the destination's. `params` holds
/// the VM's definition: `_srcDomXML` (the running domain, migratable form), `vmId`,
/// `elapsedTimeOffset` (seconds the VM has run), `migrationDest` (`libvirt`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MigrationCreateParams {
    #[serde(rename = "vmID")]
    pub vm_id: String,
    pub params: Map<String, Value>,
    #[serde(
        rename = "incomingLimit",
        default,
        deserialize_with = "int_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub incoming_limit: Option<i64>,
}

/// VM.migrationCreate's answer: `params` is the destination's VM entry, whose `xml` is
/// the domain the destination prepared (its volume paths, its agent's metadata): the
/// source hands it to libvirt as the destination XML.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MigrationCreateResult {
    #[serde(rename = "migrationPort")]
    pub migration_port: u16,
    pub params: VmListEntry,
}

/// `code` and `message` of a migration's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusCode {
    pub code: i64,
    pub message: String,
}

/// `VM.getMigrationStatus`: the last migration of the VM on this host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MigrationStats {
    pub status: StatusCode,
    /// 0..100, never going down.
    pub progress: u8,
    /// The VM's measured downtime in ms, once the migration completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime: Option<u64>,
}

/// `VM.migrateChangeParams`: `params` holds `maxBandwidth` (MiB/s).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MigrateChangeParams {
    #[serde(rename = "vmID")]
    pub vm_id: String,
    pub params: MigrationLimits,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MigrationLimits {
    #[serde(rename = "maxBandwidth", deserialize_with = "int_or_string")]
    pub max_bandwidth: Option<i64>,
}

/// A VDSM verb: its method name, the order of its positional params, and the typed
/// params and result.
pub trait Verb {
    const METHOD: &'static str;
    const PARAMS: &'static [&'static str];
    type Params: Serialize + for<'de> Deserialize<'de>;
    type Result: Serialize + for<'de> Deserialize<'de>;
}

/// Params of verbs that take only a VM id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmIdParams {
    #[serde(rename = "vmID")]
    pub vm_id: String,
}

/// `Host.add_image_ticket`: the ticket as imageio takes it (checked by the host's
/// image server, `halyard_imageio::TicketSpec`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AddImageTicketParams {
    pub ticket: Value,
}

/// `Host.remove_image_ticket`, `Host.get_image_ticket`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageTicketParams {
    pub uuid: String,
}

/// `Host.extend_image_ticket`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExtendImageTicketParams {
    pub uuid: String,
    pub timeout: u64,
}

/// `NBD.start_server`: an id and VDSM's config (sd_id, img_id, vol_id, readonly,
/// discard, detect_zeroes, backing_chain, bitmap).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NbdStartParams {
    pub server_id: String,
    pub config: Value,
}

/// `NBD.stop_server`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NbdStopParams {
    pub server_id: String,
}

/// `Volume.verify_untrusted`: the volume a client uploaded; `content` (Halyard's) is
/// `iso` when the disk must hold an ISO 9660 image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifyUntrustedParams {
    #[serde(rename = "storagepoolID")]
    pub sp: String,
    #[serde(rename = "storagedomainID")]
    pub sd: String,
    #[serde(rename = "imageID")]
    pub img: String,
    #[serde(rename = "volumeID")]
    pub vol: String,
    #[serde(default)]
    pub content: Option<String>,
}

/// `VM.changeCD`: the CD-ROM (`name`: its target device, `iface`: its bus) and the
/// media (`path`: pool, domain, image and volume ids of an ISO volume, or `""` to
/// eject).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChangeCdParams {
    #[serde(rename = "vmID")]
    pub vm_id: String,
    pub cdromspec: Value,
}

/// `VM.updateDevice`: `params` with `deviceType` (Halyard: `graphics`), and for
/// graphics `graphicsType` (vnc, spice), `password`, `ttl` (seconds) and
/// `existingConnAction` (keep, disconnect, fail).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpdateDeviceParams {
    #[serde(rename = "vmID")]
    pub vm_id: String,
    pub params: Value,
}

/// Params of verbs without params.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NoParams {}

/// The short VM entry of getVMList / VM.create.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmListEntry {
    #[serde(rename = "vmId")]
    pub vm_id: String,
    pub status: VmStatus,
    #[serde(rename = "statusTime")]
    pub status_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xml: Option<String>,
}

/// `vmParams` of VM.create: the engine's libvirt domain XML plus free-form keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct VmParams {
    #[serde(default, rename = "vmId", skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xml: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CreateParams {
    #[serde(rename = "vmID", default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
    #[serde(rename = "vmParams")]
    pub vm_params: VmParams,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DestroyParams {
    #[serde(rename = "vmID")]
    pub vm_id: String,
    #[serde(
        rename = "gracefulAttempts",
        default,
        deserialize_with = "int_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub graceful_attempts: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ShutdownParams {
    #[serde(rename = "vmID")]
    pub vm_id: String,
    /// Seconds the guest is given before the next method is tried.
    #[serde(
        default,
        deserialize_with = "int_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub delay: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub reboot: bool,
    /// Seconds to wait for the whole shutdown.
    #[serde(
        default,
        deserialize_with = "int_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<i64>,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct GetVmListParams {
    #[serde(rename = "fullStatus", default)]
    pub full_status: bool,
    #[serde(rename = "vmList", default)]
    pub vm_list: Vec<String>,
    #[serde(rename = "onlyUUID", default)]
    pub only_uuid: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct GetVmFullListParams {
    #[serde(rename = "vmList", default)]
    pub vm_list: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct GetJobsParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_type: Option<String>,
    #[serde(default)]
    pub job_ids: Vec<String>,
}

/// One host job (Host.getJobs, `|jobs|status|` events).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub id: String,
    pub status: String,
    pub description: String,
    pub job_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

/// Result of VM.pause and VM.cont.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RunningStateChange {
    #[serde(rename = "vmList", default)]
    pub vm_list: Map<String, Value>,
}

/// One VM's stats as VDSM reports them. Numbers VDSM sends as strings are strings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VmStats {
    pub vm_id: String,
    pub status: Option<VmStatus>,
    pub status_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm_enable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acpi_enable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_response: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_offset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_sys: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_usage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_stats: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon_info: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<BTreeMap<String, Map<String, Value>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<BTreeMap<String, Map<String, Value>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_info: Option<Vec<Map<String, Value>>>,
    #[serde(rename = "guestFQDN", default, skip_serializing_if = "Option::is_none")]
    pub guest_fqdn: Option<String>,
    #[serde(rename = "guestIPs", default, skip_serializing_if = "Option::is_none")]
    pub guest_ips: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_ifaces: Option<Vec<Map<String, Value>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks_usage: Option<Vec<Map<String, Value>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_os_info: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_timezone: Option<Map<String, Value>>,
    #[serde(
        rename = "guestCPUCount",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub guest_cpu_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<i64>,
    /// While the VM migrates away: percent of its data sent (VDSM's
    /// `migrationProgress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_progress: Option<u64>,
    /// Keys this struct does not name are kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Host.getStats' `info`. Numbers VDSM sends as strings are strings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HostStats {
    pub cpu_user: String,
    pub cpu_sys: String,
    pub cpu_idle: String,
    pub cpu_load: String,
    pub cpu_user_vdsmd: String,
    pub cpu_sys_vdsmd: String,
    /// Percent of memory used.
    pub mem_used: String,
    /// MiB.
    pub mem_free: u64,
    /// MiB.
    pub mem_shared: u64,
    /// MiB.
    pub swap_total: u64,
    /// MiB.
    pub swap_free: u64,
    pub vm_count: u64,
    pub vm_active: u64,
    pub vm_migrating: u64,
    pub incoming_vm_migrations: u64,
    pub outgoing_vm_migrations: u64,
    pub network: BTreeMap<String, HostNicStats>,
    pub disk_stats: BTreeMap<String, DiskFree>,
    pub storage_domains: BTreeMap<String, Value>,
    pub elapsed_time: String,
    pub boot_time: String,
    pub date_time: String,
    pub rx_dropped: String,
    pub tx_dropped: String,
    pub net_config_dirty: String,
    #[serde(default)]
    pub cpu_statistics: BTreeMap<String, Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Per-NIC traffic of Host.getStats.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HostNicStats {
    pub name: String,
    pub rx: String,
    pub tx: String,
    pub rx_dropped: String,
    pub tx_dropped: String,
    pub rx_errors: String,
    pub tx_errors: String,
    pub speed: String,
    pub state: String,
    pub duplex: String,
    pub sample_time: f64,
}

/// Free space of one path (Host.getStats `diskStats`), MiB as a string.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DiskFree {
    pub free: String,
}

/// Host.getCapabilities' `info`: the keys the engine reads, plus any others.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Capabilities {
    #[serde(rename = "kvmEnabled")]
    pub kvm_enabled: String,
    #[serde(rename = "cpuCores")]
    pub cpu_cores: String,
    #[serde(rename = "cpuThreads")]
    pub cpu_threads: String,
    #[serde(rename = "cpuSockets")]
    pub cpu_sockets: String,
    #[serde(rename = "onlineCpus")]
    pub online_cpus: String,
    #[serde(rename = "cpuSpeed")]
    pub cpu_speed: String,
    #[serde(rename = "cpuModel")]
    pub cpu_model: String,
    #[serde(rename = "cpuFlags")]
    pub cpu_flags: String,
    #[serde(rename = "memSize")]
    pub mem_size: String,
    #[serde(rename = "reservedMem")]
    pub reserved_mem: String,
    #[serde(rename = "guestOverhead")]
    pub guest_overhead: String,
    pub uuid: String,
    pub software_version: String,
    pub software_revision: String,
    pub version_name: String,
    #[serde(rename = "supportedENGINEs")]
    pub supported_engines: Vec<String>,
    #[serde(rename = "clusterLevels")]
    pub cluster_levels: Vec<String>,
    #[serde(rename = "emulatedMachines")]
    pub emulated_machines: Vec<String>,
    #[serde(rename = "vmTypes")]
    pub vm_types: Vec<String>,
    #[serde(rename = "HBAInventory")]
    pub hba_inventory: BTreeMap<String, Vec<Value>>,
    #[serde(rename = "ISCSIInitiatorName")]
    pub iscsi_initiator_name: String,
    #[serde(rename = "rngSources")]
    pub rng_sources: Vec<String>,
    #[serde(rename = "numaNodes")]
    pub numa_nodes: BTreeMap<String, Value>,
    #[serde(rename = "operatingSystem")]
    pub operating_system: BTreeMap<String, String>,
    pub packages2: BTreeMap<String, PackageVersion>,
    pub nics: BTreeMap<String, Value>,
    pub bridges: BTreeMap<String, Value>,
    pub networks: BTreeMap<String, Value>,
    pub vlans: BTreeMap<String, Value>,
    pub bondings: BTreeMap<String, Value>,
    pub hooks: BTreeMap<String, Value>,
    pub domain_versions: Vec<u32>,
    #[serde(rename = "netConfigDirty")]
    pub net_config_dirty: String,
    /// The domain type this host runs guests as (`kvm` or, on hosts without usable KVM,
    /// `qemu`); a Halyard addition.
    #[serde(rename = "halyardDomainType", default)]
    pub domain_type: String,
    /// The port of the host's image data server (imageio's 54322 by default; 0: none);
    /// a Halyard addition, the Manager puts it in transfer URLs.
    #[serde(rename = "halyardImageioPort", default)]
    pub imageio_port: u16,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `Host.getAvailableUpdates` (Halyard's; oVirt's engine asks the host's package
/// manager over SSH): the host's platform packages with an update its package index
/// knows (`name old -> new`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct AvailableUpdates {
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PackageVersion {
    pub version: String,
    pub release: String,
}

/// `Host.fenceNode`: a power management action on another host, through its fence
/// agent (`/usr/sbin/fence_<agent>`), run on this host (the engine's fence proxy).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct FenceNodeParams {
    /// The fence device's address (a BMC, a PDU).
    pub addr: String,
    /// Its port: VDSM's schema says int; the engine sends "" when there is none.
    #[serde(default)]
    pub port: Value,
    /// The agent's name without `fence_` (`ipmilan`, `ilo`, `drac5`, ...).
    pub agent: String,
    pub username: String,
    pub password: String,
    /// `status`, `on`, `off` or `reboot`.
    pub action: String,
    #[serde(default)]
    pub secure: Value,
    /// More agent options as `key=value` pairs, separated by spaces, commas or lines.
    #[serde(default)]
    pub options: String,
    #[serde(default)]
    pub policy: Option<FencingPolicy>,
}

impl std::fmt::Debug for FenceNodeParams {
    /// Without the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FenceNodeParams")
            .field("addr", &self.addr)
            .field("port", &self.port)
            .field("agent", &self.agent)
            .field("username", &self.username)
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

/// VDSM's `FencingPolicy`: skip `on`/`off`/`reboot` while the fenced host still renews
/// its host id on one of these domains (domain uuid → its host id).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct FencingPolicy {
    #[serde(rename = "storageDomainHostIdMap", default)]
    pub storage_domain_host_id_map: Option<BTreeMap<String, u32>>,
}

/// `Host.fenceNode`'s result (VDSM's `FenceNodeResult`, with the status VDSM puts
/// beside it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FenceNodeResult {
    /// `on`, `off` or `unknown` (the `status` action).
    pub power: String,
    /// `initiated` or `skipped` (`on`, `off`, `reboot`).
    #[serde(rename = "operationStatus", skip_serializing_if = "Option::is_none")]
    pub operation_status: Option<String>,
    /// The agent's exit code (0 well; for `status`, 2 means off) and its message.
    pub code: i64,
    pub message: String,
}

/// One typed verb per VDSM method.
pub mod verbs {
    use super::*;

    macro_rules! verb {
        ($name:ident, $method:expr, [$($p:expr),*], $params:ty, $result:ty) => {
            #[doc = concat!("`", $method, "`")]
            pub struct $name;
            impl Verb for $name {
                const METHOD: &'static str = $method;
                const PARAMS: &'static [&'static str] = &[$($p),*];
                type Params = $params;
                type Result = $result;
            }
        };
    }

    verb!(HostPing2, "Host.ping2", [], NoParams, bool);
    verb!(
        HostAddImageTicket,
        "Host.add_image_ticket",
        ["ticket"],
        AddImageTicketParams,
        bool
    );
    verb!(
        HostRemoveImageTicket,
        "Host.remove_image_ticket",
        ["uuid"],
        ImageTicketParams,
        bool
    );
    verb!(
        HostExtendImageTicket,
        "Host.extend_image_ticket",
        ["uuid", "timeout"],
        ExtendImageTicketParams,
        bool
    );
    verb!(
        HostGetImageTicket,
        "Host.get_image_ticket",
        ["uuid"],
        ImageTicketParams,
        Value
    );
    verb!(
        VmUpdateDevice,
        "VM.updateDevice",
        ["vmID", "params"],
        UpdateDeviceParams,
        bool
    );
    verb!(
        VmMigrate,
        "VM.migrate",
        ["vmID", "params"],
        MigrateVerbParams,
        bool
    );
    verb!(
        VmMigrationCreate,
        "VM.migrationCreate",
        ["vmID", "params", "incomingLimit"],
        MigrationCreateParams,
        MigrationCreateResult
    );
    verb!(
        VmGetMigrationStatus,
        "VM.getMigrationStatus",
        ["vmID"],
        VmIdParams,
        MigrationStats
    );
    verb!(
        VmMigrateCancel,
        "VM.migrateCancel",
        ["vmID"],
        VmIdParams,
        bool
    );
    verb!(
        VmMigrateChangeParams,
        "VM.migrateChangeParams",
        ["vmID", "params"],
        MigrateChangeParams,
        bool
    );
    verb!(
        VmChangeCd,
        "VM.changeCD",
        ["vmID", "cdromspec"],
        ChangeCdParams,
        bool
    );
    verb!(
        NbdStartServer,
        "NBD.start_server",
        ["server_id", "config"],
        NbdStartParams,
        String
    );
    verb!(
        NbdStopServer,
        "NBD.stop_server",
        ["server_id"],
        NbdStopParams,
        bool
    );
    verb!(
        VolumeVerifyUntrusted,
        "Volume.verify_untrusted",
        [
            "storagepoolID",
            "storagedomainID",
            "imageID",
            "volumeID",
            "content"
        ],
        VerifyUntrustedParams,
        bool
    );
    verb!(
        HostGetCapabilities,
        "Host.getCapabilities",
        [],
        NoParams,
        Capabilities
    );
    verb!(HostGetStats, "Host.getStats", [], NoParams, HostStats);
    verb!(
        HostFenceNode,
        "Host.fenceNode",
        [
            "addr", "port", "agent", "username", "password", "action", "secure", "options",
            "policy"
        ],
        FenceNodeParams,
        FenceNodeResult
    );
    verb!(
        HostGetAvailableUpdates,
        "Host.getAvailableUpdates",
        [],
        NoParams,
        AvailableUpdates
    );
    verb!(
        HostGetAllVmStats,
        "Host.getAllVmStats",
        [],
        NoParams,
        Vec<VmStats>
    );
    verb!(
        HostGetVmList,
        "Host.getVMList",
        ["fullStatus", "vmList", "onlyUUID"],
        GetVmListParams,
        Vec<VmListEntry>
    );
    verb!(
        HostGetVmFullList,
        "Host.getVMFullList",
        ["vmList"],
        GetVmFullListParams,
        Vec<VmListEntry>
    );
    verb!(
        HostGetJobs,
        "Host.getJobs",
        ["job_type", "job_ids"],
        GetJobsParams,
        BTreeMap<String, Job>
    );
    verb!(
        VmCreate,
        "VM.create",
        ["vmID", "vmParams"],
        CreateParams,
        VmListEntry
    );
    verb!(
        VmDestroy,
        "VM.destroy",
        ["vmID", "gracefulAttempts"],
        DestroyParams,
        bool
    );
    verb!(
        VmShutdown,
        "VM.shutdown",
        ["vmID", "delay", "message", "reboot", "timeout", "force"],
        ShutdownParams,
        bool
    );
    verb!(VmReset, "VM.reset", ["vmID"], VmIdParams, bool);
    verb!(
        VmPause,
        "VM.pause",
        ["vmID"],
        VmIdParams,
        RunningStateChange
    );
    verb!(VmCont, "VM.cont", ["vmID"], VmIdParams, RunningStateChange);
    verb!(
        VmGetStats,
        "VM.getStats",
        ["vmID"],
        VmIdParams,
        Vec<VmStats>
    );
}

/// Checks that `s` is a UUID in canonical 8-4-4-4-12 hex form.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 36 {
        return false;
    }
    b.iter().enumerate().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => *c == b'-',
        _ => c.is_ascii_hexdigit(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::Params;
    use serde_json::json;

    #[test]
    fn request_queues() {
        assert!(dest::is_request_queue("jms.topic.vdsm_requests"));
        assert!(dest::is_request_queue("jms.topic.vdsm_requests.x"));
        assert!(!dest::is_request_queue("jms.topic.vdsm_requestsx"));
        assert!(!dest::is_request_queue("jms.queue.events"));
    }

    #[test]
    fn statuses_serialise_as_vdsm() {
        assert_eq!(json!(VmStatus::PoweringUp), json!("Powering up"));
        let s: VmStatus = serde_json::from_value(json!("Migration Source")).expect("parses");
        assert_eq!(s, VmStatus::MigrationSource);
    }

    #[test]
    fn shutdown_accepts_string_ints() {
        let p = Params::Named(
            json!({"vmID": "x", "delay": "30", "message": "bye", "reboot": true})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let s: ShutdownParams = p.bind(verbs::VmShutdown::PARAMS).expect("binds");
        assert_eq!(s.delay, Some(30));
        assert!(s.reboot);
        let bad = Params::Named(
            json!({"vmID": "x", "delay": "soon"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        assert!(bad
            .bind::<ShutdownParams>(verbs::VmShutdown::PARAMS)
            .is_err());
    }

    #[test]
    fn uuid_check() {
        assert!(is_uuid("8d2e5c8a-3f0e-4b8c-9a1b-0123456789ab"));
        assert!(!is_uuid("../../etc/passwd"));
        assert!(!is_uuid("8d2e5c8a-3f0e-4b8c-9a1b-0123456789a"));
    }

    #[test]
    fn no_vm_message() {
        let e = errors::no_vm("abc");
        assert_eq!(e.code, 1);
        assert_eq!(e.message, "Virtual machine does not exist: {'vmId': 'abc'}");
    }
}

/// Storage verbs: typed params (VDSM's names and positional order); results are the
/// dictionaries VDSM returns.
pub mod storage {
    use super::*;

    fn default_blank() -> String {
        "00000000-0000-0000-0000-000000000000".into()
    }

    /// An enum VDSM accepts as a number or a name (volFormat 4/"COW", ...).
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    #[serde(untagged)]
    pub enum IntOrName {
        Int(i64),
        Name(String),
    }

    impl IntOrName {
        /// The numeric value, mapping names through `names`.
        pub fn code(&self, names: &[(&str, i64)]) -> Option<i64> {
            match self {
                IntOrName::Int(i) => Some(*i),
                IntOrName::Name(n) => n.parse().ok().or_else(|| {
                    names
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(n))
                        .map(|(_, v)| *v)
                }),
            }
        }
    }

    pub const DOMAIN_TYPES: &[(&str, i64)] = &[
        ("NFS", 1),
        ("FCP", 2),
        ("ISCSI", 3),
        ("LOCALFS", 4),
        ("CIFS", 5),
        ("SHAREDFS", 6),
        ("POSIXFS", 6),
        ("GLUSTERFS", 7),
    ];
    pub const DOMAIN_CLASSES: &[(&str, i64)] = &[("Data", 1), ("Iso", 2), ("Backup", 3)];
    pub const VOL_FORMATS: &[(&str, i64)] = &[("COW", 4), ("RAW", 5)];
    pub const PREALLOCATIONS: &[(&str, i64)] = &[("PREALLOCATED", 1), ("SPARSE", 2)];
    pub const VOL_TYPES: &[(&str, i64)] = &[("SHARED", 6), ("INTERNAL", 7), ("LEAF", 8)];

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct ConnectStorageServerParams {
        #[serde(rename = "storagepoolID", default = "default_blank")]
        pub sp: String,
        #[serde(rename = "domainType")]
        pub domain_type: IntOrName,
        #[serde(rename = "connectionParams")]
        pub connection_params: Vec<Value>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct DomainCreateParams {
        #[serde(rename = "storagedomainID")]
        pub sd: String,
        #[serde(rename = "domainType")]
        pub domain_type: IntOrName,
        #[serde(rename = "typeArgs")]
        pub type_args: String,
        pub name: String,
        #[serde(rename = "domainClass")]
        pub domain_class: IntOrName,
        #[serde(default)]
        pub version: Option<IntOrName>,
        #[serde(rename = "blockSize", default)]
        pub block_size: Option<u64>,
        #[serde(rename = "maxHosts", default)]
        pub max_hosts: Option<u64>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct DomainParams {
        #[serde(rename = "storagedomainID")]
        pub sd: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct DomainFormatParams {
        #[serde(rename = "storagedomainID")]
        pub sd: String,
        #[serde(rename = "autoDetach", default)]
        pub auto_detach: bool,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct DomainPoolParams {
        #[serde(rename = "storagedomainID")]
        pub sd: String,
        #[serde(rename = "storagepoolID")]
        pub sp: String,
        #[serde(rename = "masterSdUUID", default)]
        pub master: Option<String>,
        #[serde(rename = "masterVersion", default)]
        pub master_version: Option<i64>,
        #[serde(default)]
        pub force: bool,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct GetVolumesParams {
        #[serde(rename = "storagedomainID")]
        pub sd: String,
        #[serde(rename = "storagepoolID", default = "default_blank")]
        pub sp: String,
        #[serde(rename = "imageID", default = "default_blank")]
        pub img: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct PoolCreateParams {
        #[serde(rename = "storagepoolID")]
        pub sp: String,
        pub name: String,
        #[serde(rename = "masterSdUUID")]
        pub master: String,
        #[serde(rename = "masterVersion")]
        pub master_version: i64,
        #[serde(rename = "domainList")]
        pub domain_list: Vec<String>,
        #[serde(rename = "lockRenewalIntervalSec", default)]
        pub lock_renewal_interval_sec: Option<i64>,
        #[serde(rename = "leaseTimeSec", default)]
        pub lease_time_sec: Option<i64>,
        #[serde(rename = "ioOpTimeoutSec", default)]
        pub io_op_timeout_sec: Option<i64>,
        #[serde(rename = "leaseRetries", default)]
        pub lease_retries: Option<i64>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct PoolConnectParams {
        #[serde(rename = "storagepoolID")]
        pub sp: String,
        #[serde(rename = "hostID")]
        pub host_id: u64,
        #[serde(rename = "scsiKey", default)]
        pub scsi_key: Option<String>,
        #[serde(rename = "masterSdUUID")]
        pub master: String,
        #[serde(rename = "masterVersion")]
        pub master_version: i64,
        #[serde(rename = "domainDict", default)]
        pub domain_dict: Option<BTreeMap<String, String>>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct PoolParams {
        #[serde(rename = "storagepoolID")]
        pub sp: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct PoolDisconnectParams {
        #[serde(rename = "storagepoolID")]
        pub sp: String,
        #[serde(rename = "hostID", default)]
        pub host_id: Option<u64>,
        #[serde(rename = "scsiKey", default)]
        pub scsi_key: Option<String>,
        #[serde(default)]
        pub remove: bool,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct SpmStartParams {
        #[serde(rename = "storagepoolID")]
        pub sp: String,
        #[serde(rename = "prevID", default)]
        pub prev_id: Option<Value>,
        #[serde(rename = "prevLver", default)]
        pub prev_lver: Option<Value>,
        #[serde(rename = "enableScsiFencing", default)]
        pub enable_scsi_fencing: Option<Value>,
        #[serde(rename = "maxHostID", default)]
        pub max_host_id: Option<Value>,
        #[serde(rename = "domVersion", default)]
        pub dom_version: Option<Value>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct VolumeCreateParams {
        #[serde(rename = "volumeID")]
        pub vol: String,
        #[serde(rename = "storagepoolID")]
        pub sp: String,
        #[serde(rename = "storagedomainID")]
        pub sd: String,
        #[serde(rename = "imageID")]
        pub img: String,
        pub size: Value,
        #[serde(rename = "volFormat")]
        pub vol_format: IntOrName,
        pub preallocate: IntOrName,
        #[serde(rename = "diskType", default)]
        pub disk_type: Value,
        #[serde(default)]
        pub desc: String,
        #[serde(rename = "srcImgUUID", default = "default_blank")]
        pub src_img: String,
        #[serde(rename = "srcVolUUID", default = "default_blank")]
        pub src_vol: String,
        #[serde(rename = "initialSize", default)]
        pub initial_size: Option<Value>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct VolumeParams {
        #[serde(rename = "volumeID")]
        pub vol: String,
        #[serde(rename = "storagepoolID")]
        pub sp: String,
        #[serde(rename = "storagedomainID")]
        pub sd: String,
        #[serde(rename = "imageID")]
        pub img: String,
        #[serde(rename = "postZero", default)]
        pub post_zero: bool,
        #[serde(default)]
        pub force: bool,
        #[serde(default)]
        pub discard: bool,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct VolumeExtendParams {
        #[serde(rename = "storagepoolID")]
        pub sp: String,
        #[serde(rename = "storagedomainID")]
        pub sd: String,
        #[serde(rename = "imageID")]
        pub img: String,
        #[serde(rename = "volumeID")]
        pub vol: String,
        #[serde(rename = "newSize")]
        pub new_size: Value,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct VolumeLegalityParams {
        #[serde(rename = "volumeID")]
        pub vol: String,
        #[serde(rename = "storagepoolID")]
        pub sp: String,
        #[serde(rename = "storagedomainID")]
        pub sd: String,
        #[serde(rename = "imageID")]
        pub img: String,
        pub legality: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct VolumeCopyParams {
        #[serde(rename = "volumeID")]
        pub vol: String,
        #[serde(rename = "storagepoolID")]
        pub sp: String,
        #[serde(rename = "storagedomainID")]
        pub sd: String,
        #[serde(rename = "imageID")]
        pub img: String,
        #[serde(rename = "dstSdUUID")]
        pub dst_sd: String,
        #[serde(rename = "dstImgUUID")]
        pub dst_img: String,
        #[serde(rename = "dstVolUUID")]
        pub dst_vol: String,
        #[serde(default)]
        pub desc: String,
        #[serde(rename = "volType")]
        pub vol_type: IntOrName,
        #[serde(rename = "volFormat")]
        pub vol_format: IntOrName,
        pub preallocate: IntOrName,
        #[serde(rename = "postZero", default)]
        pub post_zero: bool,
        #[serde(default)]
        pub force: bool,
        #[serde(default)]
        pub discard: bool,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct ImageDeleteParams {
        #[serde(rename = "imageID")]
        pub img: String,
        #[serde(rename = "storagepoolID")]
        pub sp: String,
        #[serde(rename = "storagedomainID")]
        pub sd: String,
        #[serde(rename = "postZero", default)]
        pub post_zero: bool,
        #[serde(default)]
        pub force: bool,
        #[serde(default)]
        pub discard: bool,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct ImagePrepareParams {
        #[serde(rename = "storagepoolID")]
        pub sp: String,
        #[serde(rename = "storagedomainID")]
        pub sd: String,
        #[serde(rename = "imageID")]
        pub img: String,
        #[serde(rename = "volumeID", default)]
        pub vol: Option<String>,
        #[serde(rename = "allowIllegal", default)]
        pub allow_illegal: bool,
    }

    /// VDSM's `Lease`: an external lease on a storage domain.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct Lease {
        pub sd_id: String,
        pub lease_id: String,
    }

    /// Params of the `Lease.*` verbs.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct LeaseParams {
        pub lease: Lease,
    }

    /// `Lease.info`'s result (VDSM's `LeaseInfo`).
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct LeaseInfo {
        pub sd_id: String,
        pub lease_id: String,
        pub path: String,
        pub offset: u64,
    }

    /// `Lease.status`' result (VDSM's `ExternalLeaseStatus`).
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct LeaseStatus {
        pub owners: Vec<u64>,
        pub version: u64,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct TaskParams {
        #[serde(rename = "taskID")]
        pub task: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct CopyDataParams {
        pub job_id: String,
        pub source: Value,
        pub destination: Value,
        #[serde(default)]
        pub copy_bitmaps: bool,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct RepoStatsParams {
        #[serde(default)]
        pub domains: Vec<String>,
    }

    /// One drive of VM.snapshot (SnapshotVolumeDriveInfo).
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct SnapshotDrive {
        #[serde(rename = "domainID")]
        pub sd: String,
        #[serde(rename = "imageID")]
        pub img: String,
        #[serde(rename = "volumeID")]
        pub vol: String,
        #[serde(rename = "baseVolumeID")]
        pub base_vol: String,
        #[serde(rename = "poolID", default)]
        pub sp: Option<String>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct SnapshotParams {
        #[serde(rename = "vmID")]
        pub vm_id: String,
        #[serde(rename = "snapDrives")]
        pub snap_drives: Vec<SnapshotDrive>,
        #[serde(rename = "snapMemory", default)]
        pub snap_memory: Option<String>,
        #[serde(default)]
        pub frozen: bool,
        #[serde(rename = "jobUUID", default)]
        pub job_uuid: Option<String>,
    }

    /// Task.getStatus' result.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct TaskStatus {
        #[serde(rename = "taskID")]
        pub task_id: String,
        #[serde(rename = "taskState")]
        pub task_state: String,
        #[serde(rename = "taskResult")]
        pub task_result: String,
        pub code: i64,
        pub message: String,
    }

    /// StoragePool.getSpmStatus' result.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct SpmStatus {
        #[serde(rename = "spmStatus")]
        pub spm_status: String,
        #[serde(rename = "spmLver")]
        pub spm_lver: i64,
        #[serde(rename = "spmId")]
        pub spm_id: i64,
    }

    macro_rules! verb {
        ($name:ident, $method:expr, [$($p:expr),*], $params:ty, $result:ty) => {
            #[doc = concat!("`", $method, "`")]
            pub struct $name;
            impl Verb for $name {
                const METHOD: &'static str = $method;
                const PARAMS: &'static [&'static str] = &[$($p),*];
                type Params = $params;
                type Result = $result;
            }
        };
    }

    verb!(
        ConnectStorageServer,
        "StoragePool.connectStorageServer",
        ["storagepoolID", "domainType", "connectionParams"],
        ConnectStorageServerParams,
        Vec<Value>
    );
    verb!(
        DisconnectStorageServer,
        "StoragePool.disconnectStorageServer",
        ["storagepoolID", "domainType", "connectionParams"],
        ConnectStorageServerParams,
        Vec<Value>
    );
    verb!(
        DomainCreate,
        "StorageDomain.create",
        [
            "storagedomainID",
            "domainType",
            "typeArgs",
            "name",
            "domainClass",
            "version",
            "blockSize",
            "maxHosts"
        ],
        DomainCreateParams,
        bool
    );
    verb!(
        DomainGetInfo,
        "StorageDomain.getInfo",
        ["storagedomainID"],
        DomainParams,
        Value
    );
    verb!(
        DomainFormat,
        "StorageDomain.format",
        ["storagedomainID", "autoDetach"],
        DomainFormatParams,
        bool
    );
    verb!(
        DomainGetStats,
        "StorageDomain.getStats",
        ["storagedomainID"],
        DomainParams,
        Value
    );
    verb!(
        DomainGetImages,
        "StorageDomain.getImages",
        ["storagedomainID"],
        DomainParams,
        Vec<String>
    );
    verb!(
        DomainGetVolumes,
        "StorageDomain.getVolumes",
        ["storagedomainID", "storagepoolID", "imageID"],
        GetVolumesParams,
        Vec<String>
    );
    verb!(
        DomainAttach,
        "StorageDomain.attach",
        ["storagedomainID", "storagepoolID"],
        DomainPoolParams,
        bool
    );
    verb!(
        DomainDetach,
        "StorageDomain.detach",
        [
            "storagedomainID",
            "storagepoolID",
            "masterSdUUID",
            "masterVersion",
            "force"
        ],
        DomainPoolParams,
        bool
    );
    verb!(
        DomainActivate,
        "StorageDomain.activate",
        ["storagedomainID", "storagepoolID"],
        DomainPoolParams,
        bool
    );
    verb!(
        DomainDeactivate,
        "StorageDomain.deactivate",
        [
            "storagedomainID",
            "storagepoolID",
            "masterSdUUID",
            "masterVersion"
        ],
        DomainPoolParams,
        bool
    );
    verb!(
        PoolCreate,
        "StoragePool.create",
        [
            "storagepoolID",
            "name",
            "masterSdUUID",
            "masterVersion",
            "domainList",
            "lockRenewalIntervalSec",
            "leaseTimeSec",
            "ioOpTimeoutSec",
            "leaseRetries"
        ],
        PoolCreateParams,
        bool
    );
    verb!(
        PoolConnect,
        "StoragePool.connect",
        [
            "storagepoolID",
            "hostID",
            "scsiKey",
            "masterSdUUID",
            "masterVersion",
            "domainDict"
        ],
        PoolConnectParams,
        bool
    );
    verb!(
        PoolDisconnect,
        "StoragePool.disconnect",
        ["storagepoolID", "hostID", "scsiKey", "remove"],
        PoolDisconnectParams,
        bool
    );
    verb!(
        PoolGetInfo,
        "StoragePool.getInfo",
        ["storagepoolID"],
        PoolParams,
        Value
    );
    verb!(
        SpmStart,
        "StoragePool.spmStart",
        [
            "storagepoolID",
            "prevID",
            "prevLver",
            "enableScsiFencing",
            "maxHostID",
            "domVersion"
        ],
        SpmStartParams,
        String
    );
    verb!(
        SpmStop,
        "StoragePool.spmStop",
        ["storagepoolID"],
        PoolParams,
        bool
    );
    verb!(
        GetSpmStatus,
        "StoragePool.getSpmStatus",
        ["storagepoolID"],
        PoolParams,
        SpmStatus
    );
    verb!(
        VolumeCreate,
        "Volume.create",
        [
            "volumeID",
            "storagepoolID",
            "storagedomainID",
            "imageID",
            "size",
            "volFormat",
            "preallocate",
            "diskType",
            "desc",
            "srcImgUUID",
            "srcVolUUID",
            "initialSize"
        ],
        VolumeCreateParams,
        String
    );
    verb!(
        VolumeDelete,
        "Volume.delete",
        [
            "volumeID",
            "storagepoolID",
            "storagedomainID",
            "imageID",
            "postZero",
            "force",
            "discard"
        ],
        VolumeParams,
        String
    );
    verb!(
        VolumeGetInfo,
        "Volume.getInfo",
        ["volumeID", "storagepoolID", "storagedomainID", "imageID"],
        VolumeParams,
        Value
    );
    verb!(
        VolumeExtendSize,
        "Volume.extendSize",
        [
            "storagepoolID",
            "storagedomainID",
            "imageID",
            "volumeID",
            "newSize"
        ],
        VolumeExtendParams,
        String
    );
    verb!(
        VolumeSetLegality,
        "Volume.setLegality",
        [
            "volumeID",
            "storagepoolID",
            "storagedomainID",
            "imageID",
            "legality"
        ],
        VolumeLegalityParams,
        bool
    );
    verb!(
        VolumeCopy,
        "Volume.copy",
        [
            "volumeID",
            "storagepoolID",
            "storagedomainID",
            "imageID",
            "dstSdUUID",
            "dstImgUUID",
            "dstVolUUID",
            "desc",
            "volType",
            "volFormat",
            "preallocate",
            "postZero",
            "force",
            "discard"
        ],
        VolumeCopyParams,
        String
    );
    verb!(
        ImageDelete,
        "Image.delete",
        [
            "imageID",
            "storagepoolID",
            "storagedomainID",
            "postZero",
            "force",
            "discard"
        ],
        ImageDeleteParams,
        String
    );
    verb!(
        ImagePrepare,
        "Image.prepare",
        [
            "storagepoolID",
            "storagedomainID",
            "imageID",
            "volumeID",
            "allowIllegal"
        ],
        ImagePrepareParams,
        Value
    );
    verb!(
        ImageTeardown,
        "Image.teardown",
        ["storagepoolID", "storagedomainID", "imageID", "volumeID"],
        ImagePrepareParams,
        bool
    );
    verb!(
        TaskGetStatus,
        "Task.getStatus",
        ["taskID"],
        TaskParams,
        TaskStatus
    );
    verb!(TaskGetInfo, "Task.getInfo", ["taskID"], TaskParams, Value);
    verb!(TaskClear, "Task.clear", ["taskID"], TaskParams, bool);
    verb!(LeaseCreate, "Lease.create", ["lease"], LeaseParams, String);
    verb!(LeaseDelete, "Lease.delete", ["lease"], LeaseParams, String);
    verb!(
        LeaseInfoVerb,
        "Lease.info",
        ["lease"],
        LeaseParams,
        LeaseInfo
    );
    verb!(
        LeaseStatusVerb,
        "Lease.status",
        ["lease"],
        LeaseParams,
        LeaseStatus
    );
    verb!(GetAllTasksStatuses, "Host.getAllTasksStatuses", [], NoParams, BTreeMap<String, TaskStatus>);
    verb!(
        GetConnectedStoragePools,
        "Host.getConnectedStoragePools",
        [],
        NoParams,
        Vec<String>
    );
    verb!(
        GetStorageRepoStats,
        "Host.getStorageRepoStats",
        ["domains"],
        RepoStatsParams,
        Value
    );
    verb!(
        CopyData,
        "SDM.copy_data",
        ["job_id", "source", "destination", "copy_bitmaps"],
        CopyDataParams,
        bool
    );
    verb!(
        VmSnapshot,
        "VM.snapshot",
        ["vmID", "snapDrives", "snapMemory", "frozen", "jobUUID"],
        SnapshotParams,
        bool
    );
}
