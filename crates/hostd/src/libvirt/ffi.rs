//! libvirt calls the `virt` crate does not wrap: the default event loop, domain event
//! callbacks, the connection close callback, virConnectGetAllDomainStats, job stats and
//! the migration controls (abort, post-copy).

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::Once;

use tokio::sync::mpsc;
use virt::connect::Connect;
use virt::domain::Domain;
use virt_sys as sys;

use super::{DomainEvent, DomainStats, Result, VirtError};

/// A typed parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    I(i64),
    U(u64),
    F(f64),
    B(bool),
    S(String),
}

impl ParamValue {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            ParamValue::I(v) => u64::try_from(*v).ok(),
            ParamValue::U(v) => Some(*v),
            ParamValue::F(v) if *v >= 0.0 => Some(*v as u64),
            _ => None,
        }
    }
}

static EVENT_LOOP: Once = Once::new();

/// Registers libvirt's default event loop implementation and runs it on a thread.
pub fn init_event_loop() -> Result<()> {
    let mut result = Ok(());
    EVENT_LOOP.call_once(|| {
        if let Err(e) = virt::event::event_register_default_impl() {
            result = Err(VirtError::from(e));
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                if let Err(e) = virt::event::event_run_default_impl() {
                    tracing::error!(error = %e, "libvirt event loop iteration failed");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            });
        if let Err(e) = spawned {
            result = Err(VirtError::new(format!(
                "cannot start the event thread: {e}"
            )));
        }
    });
    result
}

/// What the callbacks get as `opaque`.
struct Sink {
    tx: mpsc::UnboundedSender<DomainEvent>,
}

fn dom_uuid(dom: sys::virDomainPtr) -> String {
    let mut buf = [0 as c_char; 64];
    // SAFETY: libvirt passes a valid domain pointer for the duration of the callback;
    // the buffer is larger than VIR_UUID_STRING_BUFLEN (37) as the API requires.
    let rc = unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) };
    if rc < 0 {
        return String::new();
    }
    // SAFETY: on success libvirt wrote a NUL-terminated string into `buf`.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

unsafe extern "C" fn lifecycle_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the `Sink` we leaked in register_events; libvirt keeps it
    // alive until it calls `free_sink`, which happens after the last callback.
    let sink = unsafe { &*(opaque as *const Sink) };
    let _ = sink.tx.send(DomainEvent::Lifecycle {
        uuid: dom_uuid(dom),
        event,
        detail,
    });
    0
}

unsafe extern "C" fn reboot_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    opaque: *mut c_void,
) {
    // SAFETY: as in lifecycle_cb.
    let sink = unsafe { &*(opaque as *const Sink) };
    let _ = sink.tx.send(DomainEvent::Reboot {
        uuid: dom_uuid(dom),
    });
}

unsafe extern "C" fn agent_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    state: c_int,
    _reason: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: as in lifecycle_cb.
    let sink = unsafe { &*(opaque as *const Sink) };
    let _ = sink.tx.send(DomainEvent::Agent {
        uuid: dom_uuid(dom),
        connected: state == sys::VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED as c_int,
    });
}

unsafe extern "C" fn job_completed_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    params: sys::virTypedParameterPtr,
    nparams: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: as in lifecycle_cb.
    let sink = unsafe { &*(opaque as *const Sink) };
    // SAFETY: libvirt passes `nparams` valid parameters for the callback's duration.
    let stats = unsafe { read_params(params, nparams) };
    let _ = sink.tx.send(DomainEvent::JobCompleted {
        uuid: dom_uuid(dom),
        stats,
    });
}

unsafe extern "C" fn close_cb(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    // SAFETY: as in lifecycle_cb.
    let sink = unsafe { &*(opaque as *const Sink) };
    let _ = sink.tx.send(DomainEvent::ConnectionClosed { reason });
}

unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    // SAFETY: `opaque` came from Box::into_raw in register_events and libvirt calls
    // the free function exactly once.
    drop(unsafe { Box::from_raw(opaque as *mut Sink) });
}

fn leak_sink(tx: &mpsc::UnboundedSender<DomainEvent>) -> *mut c_void {
    Box::into_raw(Box::new(Sink { tx: tx.clone() })) as *mut c_void
}

/// Registers lifecycle, reboot and agent-lifecycle callbacks for all domains, and the
/// connection close callback.
pub fn register_events(conn: &Connect, tx: mpsc::UnboundedSender<DomainEvent>) -> Result<()> {
    type Generic = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
    type Lifecycle = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        c_int,
        c_int,
        *mut c_void,
    ) -> c_int;
    type Agent =
        unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void);
    type JobCompleted = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        sys::virTypedParameterPtr,
        c_int,
        *mut c_void,
    );
    // SAFETY: libvirt's API takes every domain event callback as the generic type and
    // calls it with the signature that belongs to the event id (the C macro
    // VIR_DOMAIN_EVENT_CALLBACK is this same cast). Each callback below is registered
    // with the id whose signature it has.
    let callbacks: [(c_int, Generic); 4] = unsafe {
        [
            (
                sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
                std::mem::transmute::<Lifecycle, Generic>(lifecycle_cb),
            ),
            (
                sys::VIR_DOMAIN_EVENT_ID_REBOOT as c_int,
                reboot_cb as Generic,
            ),
            (
                sys::VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE as c_int,
                std::mem::transmute::<Agent, Generic>(agent_cb),
            ),
            (
                sys::VIR_DOMAIN_EVENT_ID_JOB_COMPLETED as c_int,
                std::mem::transmute::<JobCompleted, Generic>(job_completed_cb),
            ),
        ]
    };
    for (id, cb) in callbacks {
        let opaque = leak_sink(&tx);
        // SAFETY: the connection pointer is valid while `conn` lives; a null domain
        // means all domains; `opaque` is a leaked Box freed by `free_sink`.
        let rc = unsafe {
            sys::virConnectDomainEventRegisterAny(
                conn.as_ptr(),
                std::ptr::null_mut(),
                id,
                Some(cb),
                opaque,
                Some(free_sink),
            )
        };
        if rc < 0 {
            // SAFETY: registration failed, so libvirt did not take ownership.
            unsafe { free_sink(opaque) };
            return Err(VirtError::from(virt::error::Error::last_error()));
        }
    }
    let opaque = leak_sink(&tx);
    // SAFETY: as above; the close callback keeps `opaque` until unregistered or the
    // connection is freed, then calls `free_sink`.
    let rc = unsafe {
        sys::virConnectRegisterCloseCallback(conn.as_ptr(), Some(close_cb), opaque, Some(free_sink))
    };
    if rc < 0 {
        // SAFETY: registration failed, so libvirt did not take ownership.
        unsafe { free_sink(opaque) };
        return Err(VirtError::from(virt::error::Error::last_error()));
    }
    Ok(())
}

/// Typed parameters by name.
///
/// # Safety
/// `params` must point at `n` initialised typed parameters (or `n` be 0).
unsafe fn read_params(params: sys::virTypedParameterPtr, n: c_int) -> BTreeMap<String, ParamValue> {
    let mut out = BTreeMap::new();
    if params.is_null() {
        return out;
    }
    for j in 0..n.max(0) as usize {
        // SAFETY: the caller promises `n` initialised parameters.
        let p = unsafe { &*params.add(j) };
        // SAFETY: `field` is a NUL-terminated name of at most 80 bytes.
        let name = unsafe { CStr::from_ptr(p.field.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: the union member read is the one `type_` names.
        let v = unsafe {
            match p.type_ as u32 {
                sys::VIR_TYPED_PARAM_INT => ParamValue::I(p.value.i as i64),
                sys::VIR_TYPED_PARAM_UINT => ParamValue::U(p.value.ui as u64),
                sys::VIR_TYPED_PARAM_LLONG => ParamValue::I(p.value.l),
                sys::VIR_TYPED_PARAM_ULLONG => ParamValue::U(p.value.ul),
                sys::VIR_TYPED_PARAM_DOUBLE => ParamValue::F(p.value.d),
                sys::VIR_TYPED_PARAM_BOOLEAN => ParamValue::B(p.value.b != 0),
                sys::VIR_TYPED_PARAM_STRING if !p.value.s.is_null() => {
                    ParamValue::S(CStr::from_ptr(p.value.s).to_string_lossy().into_owned())
                }
                _ => continue,
            }
        };
        out.insert(name, v);
    }
    out
}

/// virDomainAbortJob: stops the domain's running job (a migration).
pub fn abort_job(d: &Domain) -> Result<()> {
    // SAFETY: the domain pointer is valid while `d` lives.
    let rc = unsafe { sys::virDomainAbortJob(d.as_ptr()) };
    if rc < 0 {
        return Err(VirtError::from(virt::error::Error::last_error()));
    }
    Ok(())
}

/// virDomainMigrateStartPostCopy: switches a running migration to post-copy.
pub fn start_post_copy(d: &Domain) -> Result<()> {
    // SAFETY: the domain pointer is valid while `d` lives.
    let rc = unsafe { sys::virDomainMigrateStartPostCopy(d.as_ptr(), 0) };
    if rc < 0 {
        return Err(VirtError::from(virt::error::Error::last_error()));
    }
    Ok(())
}

/// virDomainGetJobStats of the running job (`completed`: of the last completed one)
/// as typed parameters, with the job's type under `"type"`.
pub fn job_stats(d: &Domain, completed: bool) -> Result<BTreeMap<String, ParamValue>> {
    let mut kind: c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut n: c_int = 0;
    let flags = if completed {
        sys::VIR_DOMAIN_JOB_STATS_COMPLETED
    } else {
        0
    };
    // SAFETY: valid domain; libvirt allocates the parameter array into `params`, freed
    // below with virTypedParamsFree.
    let rc = unsafe {
        sys::virDomainGetJobStats(d.as_ptr(), &mut kind, &mut params, &mut n, flags as c_uint)
    };
    if rc < 0 {
        return Err(VirtError::from(virt::error::Error::last_error()));
    }
    // SAFETY: libvirt returned `n` parameters at `params`.
    let mut out = unsafe { read_params(params, n) };
    // SAFETY: `params` and `n` are what virDomainGetJobStats returned; freed once.
    unsafe { sys::virTypedParamsFree(params, n) };
    out.insert("type".into(), ParamValue::I(kind as i64));
    Ok(out)
}

/// virDomainGetState; `None` on error.
pub fn domain_state(d: &Domain) -> Option<i32> {
    let mut state: c_int = -1;
    let mut reason: c_int = -1;
    // SAFETY: the domain pointer is valid while `d` lives; out-params are local ints.
    let rc = unsafe { sys::virDomainGetState(d.as_ptr(), &mut state, &mut reason, 0) };
    (rc >= 0).then_some(state)
}

/// virConnectGetAllDomainStats for active domains: state, CPU, balloon, vCPU,
/// interface and block stats.
pub fn all_domain_stats(conn: &Connect) -> Result<Vec<DomainStats>> {
    let stats = sys::VIR_DOMAIN_STATS_STATE
        | sys::VIR_DOMAIN_STATS_CPU_TOTAL
        | sys::VIR_DOMAIN_STATS_BALLOON
        | sys::VIR_DOMAIN_STATS_VCPU
        | sys::VIR_DOMAIN_STATS_INTERFACE
        | sys::VIR_DOMAIN_STATS_BLOCK;
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: valid connection; libvirt allocates the NULL-terminated record array and
    // stores it in `records`, which we free below with virDomainStatsRecordListFree.
    let n = unsafe {
        sys::virConnectGetAllDomainStats(
            conn.as_ptr(),
            stats as c_uint,
            &mut records,
            sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE as c_uint,
        )
    };
    if n < 0 {
        return Err(VirtError::from(virt::error::Error::last_error()));
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // SAFETY: libvirt returned `n` valid record pointers.
        let rec = unsafe { &**records.add(i) };
        // SAFETY: the record holds `nparams` initialised typed parameters.
        let params = unsafe { read_params(rec.params, rec.nparams) };
        out.push(DomainStats {
            uuid: dom_uuid(rec.dom),
            params,
        });
    }
    // SAFETY: `records` came from virConnectGetAllDomainStats and is freed once.
    unsafe { sys::virDomainStatsRecordListFree(records) };
    Ok(out)
}
