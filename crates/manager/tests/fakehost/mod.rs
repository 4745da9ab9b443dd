//! Simulated hosts for the Manager's scale test and benchmark, and nothing else (every
//! other test runs the real host agent).
//!
//! A fake host registers through the real host-register flow (the host agent's own
//! code: CSR, approval, certificate signed by the Manager's CA) and serves VDSM's wire
//! protocol as the agent does: mutual TLS, STOMP 1.2 (CONNECT, SUBSCRIBE, SEND,
//! heart-beats), JSON-RPC 2.0, VDSM's verb names and result shapes, and
//! `|virt|VM_status|` events. Its VMs live in memory: VM.create makes one that goes
//! WaitForLaunch -> Powering up -> Up, VM.destroy / VM.shutdown take it Down.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use halyard_proto::jsonrpc::{self, Entry, Message, Notification, Params, Response, RpcError};
use halyard_proto::stomp::{self, Command, Frame, Item};
use halyard_proto::vdsm::{dest, errors, VmStatus};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::broadcast;

/// Memory of every fake host (MiB).
pub const HOST_MEMORY_MIB: u64 = 256 * 1024;

struct FakeVm {
    name: String,
    status: VmStatus,
    since: Instant,
    memory_mib: u64,
    nic_macs: Vec<String>,
}

struct State {
    name: String,
    started: Instant,
    vms: Mutex<BTreeMap<String, FakeVm>>,
    events: broadcast::Sender<Arc<Vec<u8>>>,
    requests: AtomicU64,
    /// Host.getAllVmStats calls served so far.
    all_vm_stats: AtomicU64,
    /// While set, connections are dropped and new ones refused (a dead agent).
    down: AtomicBool,
}

impl State {
    fn vms(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, FakeVm>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct FakeHost {
    pub name: String,
    pub port: u16,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        self.state.down.store(true, Ordering::Release);
        self.accept.abort();
    }
}

impl FakeHost {
    /// Registers with the Manager at `manager_url` (which must approve it, e.g. by an
    /// auto-approve pattern) and starts serving. `dir` receives the key and certificate.
    /// `ca_fingerprint` pins the Manager's CA, as `manager.ca_fingerprint` does for the
    /// real agent.
    pub async fn start(
        manager_url: &str,
        ca_fingerprint: &str,
        name: &str,
        dir: &Path,
    ) -> anyhow::Result<FakeHost> {
        std::fs::create_dir_all(dir)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let mut cfg = halyard_hostd::config::Config::default();
        cfg.tls.cert = dir.join("hostd.pem");
        cfg.tls.key = dir.join("hostd.key");
        cfg.tls.ca = dir.join("ca.pem");
        cfg.manager.url = manager_url.to_string();
        cfg.manager.host_name = name.to_string();
        cfg.manager.address = "127.0.0.1".into();
        cfg.manager.poll_secs = 1;
        cfg.manager.ca_fingerprint = Some(ca_fingerprint.to_string());
        if !halyard_hostd::identity::Identity::files_exist(&cfg)? {
            halyard_hostd::identity::register(&cfg, &format!("fake-{name}"), port).await?;
        }
        let identity = halyard_hostd::identity::Identity::load(&cfg)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config());
        let (events, _) = broadcast::channel(4096);
        let state = Arc::new(State {
            name: name.to_string(),
            started: Instant::now(),
            vms: Mutex::new(BTreeMap::new()),
            events,
            requests: AtomicU64::new(0),
            all_vm_stats: AtomicU64::new(0),
            down: AtomicBool::new(false),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if st.down.load(Ordering::Acquire) {
                    continue;
                }
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        let _ = session(st, tls).await;
                    }
                });
            }
        });
        Ok(FakeHost {
            name: name.to_string(),
            port,
            state,
            accept,
        })
    }

    pub fn vm_count(&self) -> usize {
        self.state.vms().len()
    }

    /// JSON-RPC requests served so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Host.getAllVmStats calls served so far.
    pub fn all_vm_stats_calls(&self) -> u64 {
        self.state.all_vm_stats.load(Ordering::Relaxed)
    }

    /// Its VMs' names.
    pub fn vm_names(&self) -> Vec<String> {
        self.state.vms().values().map(|v| v.name.clone()).collect()
    }

    /// Takes VM `name` down without an event: only the host's stats tell.
    pub fn stop_silently(&self, name: &str) {
        let mut vms = self.state.vms();
        if let Some(vm) = vms.values_mut().find(|v| v.name == name) {
            vm.status = VmStatus::Down;
            vm.since = Instant::now();
        }
    }

    /// Sends `count` status events of its VMs (each saying what the VM's status is), in
    /// bursts of `burst` (at most the host's own queue) `pause` apart.
    /// VM `except` gets none.
    pub async fn flood_events(&self, count: usize, burst: usize, pause: Duration, except: &str) {
        let ids: Vec<(String, VmStatus)> = self
            .state
            .vms()
            .iter()
            .filter(|(_, v)| v.name != except)
            .map(|(id, v)| (id.clone(), v.status))
            .collect();
        if ids.is_empty() {
            return;
        }
        for i in 0..count {
            let (id, status) = &ids[i % ids.len()];
            emit(&self.state, id, json!({"status": status.as_str()}));
            if (i + 1) % burst.max(1) == 0 {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Simulates a dead agent (connections dropped, new ones refused) or its return.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::Release);
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    st: Arc<State>,
    stream: S,
) -> std::io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut dec = stomp::Decoder::new(stomp::Limits::default());
    let mut buf = vec![0u8; 64 * 1024];
    let mut subs: HashMap<String, String> = HashMap::new();
    let mut events: Option<broadcast::Receiver<Arc<Vec<u8>>>> = None;
    let mut beat: Option<Duration> = None;
    let mut last_write = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        if st.down.load(Ordering::Acquire) {
            return Ok(());
        }
        tokio::select! {
            n = rd.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                dec.feed(&buf[..n]);
                while let Some(item) = dec.next_item().map_err(std::io::Error::other)? {
                    let Item::Frame(f) = item else { continue };
                    let mut out = Vec::new();
                    match f.command {
                        Command::Connect | Command::Stomp => {
                            let (send, expect) =
                                stomp::negotiate_heart_beat(f.headers.get("heart-beat"), 1000);
                            beat = (send > 0).then(|| Duration::from_millis(send));
                            out = Frame::new(Command::Connected)
                                .header("version", "1.2")
                                .header("heart-beat", format!("{send},{expect}"))
                                .encode();
                        }
                        Command::Subscribe => {
                            let d = f.headers.get("destination").unwrap_or("").to_string();
                            if d == dest::EVENTS && events.is_none() {
                                events = Some(st.events.subscribe());
                            }
                            subs.insert(f.headers.get("id").unwrap_or("").to_string(), d);
                        }
                        Command::Send => {
                            let reply_to = f.headers.get("reply-to").unwrap_or(dest::RESPONSES);
                            if let Some(body) = handle(&st, &f.body) {
                                out = message(&subs, reply_to, body);
                            }
                        }
                        Command::Disconnect => {
                            if let Some(r) = f.headers.get("receipt") {
                                wr.write_all(&Frame::new(Command::Receipt).header("receipt-id", r).encode()).await?;
                            }
                            return wr.flush().await;
                        }
                        _ => {}
                    }
                    if !out.is_empty() {
                        wr.write_all(&out).await?;
                        wr.flush().await?;
                        last_write = Instant::now();
                    }
                }
            }
            ev = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Ok(body) = ev {
                    let out = message(&subs, dest::EVENTS, body.to_vec());
                    wr.write_all(&out).await?;
                    wr.flush().await?;
                    last_write = Instant::now();
                }
            }
            _ = tick.tick() => {
                if beat.is_some_and(|b| last_write.elapsed() >= b) {
                    wr.write_all(b"\n").await?;
                    wr.flush().await?;
                    last_write = Instant::now();
                }
            }
        }
    }
}

/// MESSAGE frames for every subscription of `destination`.
fn message(subs: &HashMap<String, String>, destination: &str, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, d) in subs {
        if d == destination {
            out.extend(
                Frame::new(Command::Message)
                    .header("destination", destination)
                    .header("subscription", id.as_str())
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .encode(),
            );
        }
    }
    out
}

fn handle(st: &Arc<State>, body: &[u8]) -> Option<Vec<u8>> {
    let answer = |e: Entry| -> Option<Value> {
        match e {
            Entry::Invalid(r) => Some(r.to_value()),
            Entry::Request(r) => {
                st.requests.fetch_add(1, Ordering::Relaxed);
                let id = r.id.clone()?;
                Some(match call(st, &r.method, &r.params) {
                    Ok(v) => Response::ok(id, v).to_value(),
                    Err(e) => Response::err(id, e).to_value(),
                })
            }
        }
    };
    let v = match jsonrpc::parse_message(body) {
        Message::Single(e) => answer(e)?,
        Message::Batch(es) => Value::Array(es.into_iter().filter_map(answer).collect()),
    };
    serde_json::to_vec(&v).ok()
}

fn vm_id_param(p: &Params) -> Result<String, RpcError> {
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(rename = "vmID")]
        vm_id: String,
    }
    Ok(p.bind::<P>(&["vmID"])?.vm_id)
}

fn call(st: &Arc<State>, method: &str, params: &Params) -> Result<Value, RpcError> {
    match method {
        "Host.ping2" => Ok(json!(true)),
        "Host.getCapabilities" => Ok(capabilities(st)),
        "Host.getStats" => Ok(host_stats(st)),
        "Host.getAllVmStats" => {
            st.all_vm_stats.fetch_add(1, Ordering::Relaxed);
            let vms = st.vms();
            Ok(Value::Array(
                vms.iter().map(|(id, vm)| vm_stats(st, id, vm)).collect(),
            ))
        }
        "VM.create" => {
            #[derive(serde::Deserialize)]
            struct P {
                #[serde(rename = "vmParams")]
                vm_params: Value,
            }
            let p: P = params.bind(&["vmID", "vmParams"])?;
            let xml = p.vm_params["xml"].as_str().unwrap_or("");
            let id = p.vm_params["vmId"].as_str().unwrap_or("").to_string();
            if !halyard_proto::vdsm::is_uuid(&id) {
                return Err(RpcError::invalid_params("vmId must be a UUID"));
            }
            let between = |a: &str, b: &str| -> String {
                xml.split_once(a)
                    .and_then(|(_, r)| r.split_once(b))
                    .map(|(x, _)| x.to_string())
                    .unwrap_or_default()
            };
            let memory_mib = between("<memory unit=\"KiB\">", "<")
                .parse::<u64>()
                .map(|k| k / 1024)
                .or_else(|_| between("<memory>", "<").parse::<u64>().map(|k| k / 1024))
                .unwrap_or(1024);
            let nic_macs = xml
                .split("<mac address=\"")
                .skip(1)
                .filter_map(|s| s.split('"').next())
                .map(str::to_string)
                .collect();
            let name = between("<name>", "<");
            let mut vms = st.vms();
            if vms.contains_key(&id) {
                return Err(errors::EXIST.rpc(None));
            }
            vms.insert(
                id.clone(),
                FakeVm {
                    name,
                    status: VmStatus::WaitForLaunch,
                    since: Instant::now(),
                    memory_mib,
                    nic_macs,
                },
            );
            drop(vms);
            // Boot: Powering up after 100 ms, Up after 1 s, as events.
            let st2 = st.clone();
            let id2 = id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                set_status(&st2, &id2, VmStatus::PoweringUp);
                tokio::time::sleep(Duration::from_millis(900)).await;
                set_status(&st2, &id2, VmStatus::Up);
            });
            Ok(json!({"vmId": id, "status": "WaitForLaunch", "statusTime": status_time(st)}))
        }
        "VM.destroy" | "VM.shutdown" => {
            let id = vm_id_param(params)?;
            let removed = st.vms().remove(&id);
            let Some(vm) = removed else {
                return Err(errors::no_vm(&id));
            };
            let down = json!({
                "vmId": id, "vmName": vm.name, "status": "Down", "statusTime": status_time(st),
                "exitCode": 0, "exitMessage": "Admin shut down from the engine", "exitReason": 6,
            });
            emit(st, &id, down);
            Ok(json!({"status": {"code": 0, "message": "Machine destroyed"}}))
        }
        "Host.getVMList" => {
            let vms = st.vms();
            Ok(Value::Array(
                vms.iter()
                    .map(|(id, v)| json!({"vmId": id, "status": v.status.as_str(), "statusTime": status_time(st)}))
                    .collect(),
            ))
        }
        _ => Err(RpcError::method_not_found(method)),
    }
}

fn status_time(st: &State) -> String {
    (4_295_000_000u64 + st.started.elapsed().as_millis() as u64).to_string()
}

fn set_status(st: &Arc<State>, id: &str, status: VmStatus) {
    let mut vms = st.vms();
    let Some(vm) = vms.get_mut(id) else { return };
    vm.status = status;
    vm.since = Instant::now();
    drop(vms);
    emit(st, id, json!({"status": status.as_str()}));
}

fn emit(st: &Arc<State>, id: &str, body: Value) {
    let n = Notification {
        method: format!("|virt|VM_status|{id}"),
        params: json!({ id: body, "notify_time": status_time(st).parse::<u64>().unwrap_or(0) }),
    };
    if let Ok(b) = serde_json::to_vec(&n.to_value()) {
        let _ = st.events.send(Arc::new(b));
    }
}

/// A stable hardware UUID per host name.
fn host_uuid(name: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(name.as_bytes());
    uuid::Uuid::from_slice(&h[..16])
        .map(|u| u.to_string())
        .unwrap_or_default()
}

fn capabilities(st: &State) -> Value {
    json!({
        "kvmEnabled": "true", "cpuCores": "32", "cpuThreads": "64", "cpuSockets": "2",
        "onlineCpus": (0..64).map(|i| i.to_string()).collect::<Vec<_>>().join(","),
        "cpuSpeed": "2600.000", "cpuModel": "Intel(R) Xeon(R) Gold 6142 CPU @ 2.60GHz",
        "cpuFlags": "fpu,vme,de,pse,tsc,msr,pae,mce,cx8,apic,sep,mtrr,pge,mca,cmov,pat,pse36,clflush,mmx,fxsr,sse,sse2,ss,ht,syscall,nx,pdpe1gb,rdtscp,lm,constant_tsc,vmx,model_Skylake-Server",
        "memSize": HOST_MEMORY_MIB.to_string(), "reservedMem": "321", "guestOverhead": "65",
        "uuid": host_uuid(&st.name),
        "software_version": "4.50", "software_revision": "0", "version_name": "Snow Man",
        "supportedENGINEs": ["4.2", "4.3", "4.4", "4.5"],
        "clusterLevels": ["4.2", "4.3", "4.4", "4.5", "4.6", "4.7"],
        "emulatedMachines": ["pc-q35-7.2", "pc-i440fx-7.2", "q35", "pc"],
        "vmTypes": ["kvm"], "HBAInventory": {"iSCSI": [], "FC": []},
        "ISCSIInitiatorName": "iqn.1994-05.com.redhat:fake", "rngSources": ["random", "hwrng"],
        "numaNodes": {"0": {"totalMemory": "131072", "cpus": (0..32).collect::<Vec<_>>()},
                      "1": {"totalMemory": "131072", "cpus": (32..64).collect::<Vec<_>>()}},
        "operatingSystem": {"name": "Debian GNU/Linux", "version": "12", "release": "12"},
        "packages2": {
            "kernel": {"version": "6.1.0", "release": "18"},
            "libvirt": {"version": "9.0.0", "release": "4"},
            "qemu-kvm": {"version": "7.2", "release": "22"},
            "vdsm": {"version": "4.50.0", "release": "halyard-fake"},
        },
        "nics": {"eth0": {"hwaddr": "52:54:00:12:34:56", "speed": 10000, "mtu": "1500"}},
        "bridges": {"ovirtmgmt": {"ports": ["eth0"], "mtu": "1500"}},
        "networks": {"ovirtmgmt": {"bridged": true, "iface": "ovirtmgmt", "mtu": "1500"}},
        "vlans": {}, "bondings": {}, "hooks": {}, "domain_versions": [0, 2, 3, 4, 5],
        "netConfigDirty": "False", "halyardDomainType": "kvm",
    })
}

fn host_stats(st: &State) -> Value {
    let vms = st.vms();
    let used: u64 = vms.values().map(|v| v.memory_mib).sum::<u64>() + 2048;
    let active = vms.values().filter(|v| v.status != VmStatus::Down).count();
    let elapsed = st.started.elapsed().as_secs_f64();
    json!({
        "cpuUser": "2.10", "cpuSys": "0.80", "cpuIdle": "97.10", "cpuLoad": "0.45",
        "cpuUserVdsmd": "0.30", "cpuSysVdsmd": "0.10",
        "memUsed": (used * 100 / HOST_MEMORY_MIB).to_string(),
        "memFree": HOST_MEMORY_MIB.saturating_sub(used), "memShared": 0,
        "swapTotal": 8192, "swapFree": 8192,
        "vmCount": vms.len(), "vmActive": active, "vmMigrating": 0,
        "incomingVmMigrations": 0, "outgoingVmMigrations": 0,
        "network": {
            "eth0": {"name": "eth0", "rx": "123456789", "tx": "98765432", "rxDropped": "0",
                     "txDropped": "0", "rxErrors": "0", "txErrors": "0", "speed": "10000",
                     "state": "up", "duplex": "full", "sampleTime": elapsed},
            "ovirtmgmt": {"name": "ovirtmgmt", "rx": "123456789", "tx": "98765432",
                          "rxDropped": "0", "txDropped": "0", "rxErrors": "0", "txErrors": "0",
                          "speed": "10000", "state": "up", "duplex": "unknown", "sampleTime": elapsed},
        },
        "diskStats": {"/var/log": {"free": "51200"}, "/tmp": {"free": "51200"}},
        "storageDomains": {},
        "elapsedTime": format!("{elapsed:.0}"), "bootTime": "1795000000",
        "dateTime": "2026-11-26T00:00:00 GMT", "rxDropped": "0", "txDropped": "0",
        "netConfigDirty": "False",
        "cpuStatistics": (0..4).map(|i| (i.to_string(), json!({"numaNodeIndex": i / 2, "cpuSys": "0.50", "cpuIdle": "98.00", "cpuUser": "1.50"}))).collect::<serde_json::Map<_, _>>(),
    })
}

/// One VM's stats as VDSM reports them (about 2 KB of JSON, like a real VM's).
fn vm_stats(st: &State, id: &str, vm: &FakeVm) -> Value {
    let up = vm.since.elapsed().as_secs();
    let mut network = serde_json::Map::new();
    for (i, mac) in vm.nic_macs.iter().enumerate() {
        network.insert(
            format!("vnet{i}"),
            json!({"name": format!("vnet{i}"), "macAddr": mac, "speed": "1000", "state": "unknown",
                   "rxErrors": "0", "rxDropped": "0", "txErrors": "0", "txDropped": "0",
                   "rx": (up * 1000).to_string(), "tx": (up * 500).to_string(),
                   "sampleTime": st.started.elapsed().as_secs_f64()}),
        );
    }
    json!({
        "vmId": id, "vmName": vm.name, "status": vm.status.as_str(),
        "statusTime": status_time(st), "vmType": "kvm", "kvmEnable": "true",
        "acpiEnable": "true", "elapsedTime": up.to_string(), "pid": "4242",
        "monitorResponse": "0", "timeOffset": "0", "cpuUser": "1.25", "cpuSys": "0.50",
        "cpuUsage": (up * 10_000_000).to_string(), "vcpuCount": "1", "vcpuQuota": "-1",
        "vcpuPeriod": 100000, "memUsage": "12", "guestCPUCount": -1,
        "memoryStats": {"swap_in": 0, "swap_out": 0, "majflt": 0, "minflt": 1200,
                        "mem_total": (vm.memory_mib * 1024).to_string(),
                        "mem_unused": (vm.memory_mib * 900).to_string(),
                        "mem_buffers": "2048", "mem_cached": "40960",
                        "mem_free": (vm.memory_mib * 900).to_string()},
        "balloonInfo": {"balloon_max": (vm.memory_mib * 1024).to_string(),
                        "balloon_min": "0", "balloon_cur": (vm.memory_mib * 1024).to_string(),
                        "balloon_target": (vm.memory_mib * 1024).to_string()},
        "network": network,
        "disks": {"vda": {"readLatency": "0", "writeLatency": "0", "flushLatency": "0",
                          "readRate": "0.0", "writeRate": "0.0", "readOps": "1200",
                          "writeOps": "300", "readBytes": "24117248", "writtenBytes": "2359296",
                          "apparentsize": "10737418240", "truesize": "1073741824",
                          "imageID": "11111111-2222-3333-4444-555555555555"}},
        "displayInfo": [{"type": "vnc", "port": "5900", "tlsPort": "-1", "ipAddress": "127.0.0.1"}],
        "guestFQDN": "", "guestIPs": "", "netIfaces": [], "disksUsage": [], "username": "",
        "vmJobs": {}, "hash": "-4851563426315467021", "clientIp": "",
    })
}

/// A cloneable API client for concurrent requests (XML, admin@internal's token).
#[derive(Clone)]
pub struct Api {
    pub url: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub token: String,
}

impl Api {
    pub async fn new(m: &halyard_testinfra::manager::ManagerProc) -> Api {
        Api {
            url: m.api_url(),
            tls: m.tls(),
            token: m.token().await,
        }
    }

    /// (status, body); `accept` is `application/xml` or `application/json`.
    pub async fn call_as(
        &self,
        accept: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let auth = format!("Bearer {}", self.token);
        // Our own client of our own Manager: lists of 25,000 VMs are larger than the
        // default bound.
        let limits = halyard_client::http::Limits {
            max_response: 1 << 30,
            ..Default::default()
        };
        let r = halyard_client::http::request_limited(
            None,
            self.tls.clone(),
            method,
            &format!("{}{path}", self.url),
            &[
                ("Authorization", &auth),
                ("Version", "4"),
                ("Content-Type", "application/xml"),
                ("Accept", accept),
            ],
            body.as_bytes(),
            limits,
        )
        .await?;
        Ok((r.status, r.body))
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> anyhow::Result<(u16, String)> {
        let (s, b) = self.call_as("application/xml", method, path, body).await?;
        Ok((s, String::from_utf8_lossy(&b).into_owned()))
    }

    /// Status of every object of a collection: (name, status, host id).
    pub async fn statuses(&self, coll: &str) -> anyhow::Result<Vec<(String, String, String)>> {
        let (s, b) = self
            .call_as("application/json", "GET", &format!("/{coll}"), "")
            .await?;
        anyhow::ensure!(s == 200, "GET /{coll}: HTTP {s}");
        let v: Value = serde_json::from_slice(&b)?;
        let item = coll.trim_end_matches('s');
        Ok(v[item]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        let s = |k: &str| x[k].as_str().unwrap_or("").to_string();
                        (
                            s("name"),
                            s("status"),
                            x["host"]["id"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits until `want` objects of `coll` have status `status`.
    pub async fn wait_count(
        &self,
        coll: &str,
        status: &str,
        want: usize,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        loop {
            let all = self.statuses(coll).await?;
            let n = all.iter().filter(|x| x.1 == status).count();
            if n >= want {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() >= timeout {
                // What the others are, and a few of them, to tell where they were lost.
                let mut other: std::collections::BTreeMap<&str, usize> = Default::default();
                for x in all.iter().filter(|x| x.1 != status) {
                    *other.entry(x.1.as_str()).or_default() += 1;
                }
                let some: Vec<&str> = all
                    .iter()
                    .filter(|x| x.1 != status)
                    .take(5)
                    .map(|x| x.0.as_str())
                    .collect();
                anyhow::bail!(
                    "only {n} of {want} {coll} are {status} after {timeout:?}; the others: {other:?} (e.g. {some:?})"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Starts `n` fake hosts named `{prefix}-000`... concurrently (registration included).
pub async fn start_hosts(
    m: &halyard_testinfra::manager::ManagerProc,
    prefix: &str,
    n: usize,
    dir: &Path,
) -> anyhow::Result<Vec<FakeHost>> {
    let manager_url = m.url();
    let fp = halyard_pki::fingerprint(&std::fs::read_to_string(m.ca())?);
    let mut set = tokio::task::JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    for i in 0..n {
        let url = manager_url.clone();
        let fp = fp.clone();
        let name = format!("{prefix}-{i:03}");
        let d = dir.join(&name);
        let gate = gate.clone();
        set.spawn(async move {
            let _p = gate.acquire_owned().await;
            FakeHost::start(&url, &fp, &name, &d).await.map(|h| (i, h))
        });
    }
    let mut hosts = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        hosts.push(r??);
    }
    hosts.sort_by_key(|(i, _)| *i);
    Ok(hosts.into_iter().map(|(_, h)| h).collect())
}

/// Adds VMs `{prefix}-00000`... (1 GiB, one NIC) and starts them, `parallel` requests
/// at a time. Returns (time to add all, time to start all).
pub async fn add_and_start_vms(
    api: &Api,
    prefix: &str,
    n: usize,
    parallel: usize,
) -> anyhow::Result<(Duration, Duration)> {
    async fn run_all<F, Fut>(n: usize, parallel: usize, f: F) -> anyhow::Result<Vec<String>>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<String>> + Send + 'static,
    {
        let mut set = tokio::task::JoinSet::new();
        let mut out = vec![String::new(); n];
        let mut next = 0;
        while next < n || !set.is_empty() {
            while next < n && set.len() < parallel {
                let fut = f(next);
                let i = next;
                set.spawn(async move { fut.await.map(|s| (i, s)) });
                next += 1;
            }
            if let Some(r) = set.join_next().await {
                let (i, s) = r??;
                out[i] = s;
            }
        }
        Ok(out)
    }
    let t0 = Instant::now();
    let ids = run_all(n, parallel, |i| {
        let api = api.clone();
        let name = format!("{prefix}-{i:05}");
        async move {
            let body = format!(
                "<vm><name>{name}</name><cluster><name>Default</name></cluster><template><name>Blank</name></template><memory>1073741824</memory><os><type>other_linux</type><kernel>/boot/vmlinuz</kernel><cmdline>console=ttyS0</cmdline></os></vm>"
            );
            let (s, b) = api.call("POST", "/vms", &body).await?;
            anyhow::ensure!(s == 201, "POST /vms {name}: HTTP {s}: {b}");
            let id = b.split_once("id=\"").and_then(|(_, r)| r.split_once('"')).map(|(x, _)| x.to_string()).unwrap_or_default();
            let (s, b) = api
                .call("POST", &format!("/vms/{id}/nics"), "<nic><name>nic1</name><interface>virtio</interface></nic>")
                .await?;
            anyhow::ensure!(s == 201, "POST nics: HTTP {s}: {b}");
            Ok(id)
        }
    })
    .await?;
    let added = t0.elapsed();
    let t1 = Instant::now();
    run_all(n, parallel, |i| {
        let api = api.clone();
        let id = ids[i].clone();
        async move {
            let (s, b) = api
                .call("POST", &format!("/vms/{id}/start"), "<action/>")
                .await?;
            anyhow::ensure!(s == 200, "start {id}: HTTP {s}: {b}");
            Ok(id)
        }
    })
    .await?;
    Ok((added, t1.elapsed()))
}
