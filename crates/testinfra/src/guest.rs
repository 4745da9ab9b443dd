//! Test guests: engine-style domain XML for the tiny guest, booted through the agent.

use std::path::PathBuf;
use std::time::Duration;

use halyard_client::Client;
use serde_json::json;

use crate::env::{self, BRIDGE, GATEWAY};
use crate::TestHost;

/// What to boot.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// Short name; the domain is named `<host prefix><name>`.
    pub name: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// Static address on the test bridge (default: derived from the name).
    pub ip: Option<String>,
    /// How long to wait for the ready line.
    pub boot_timeout: Duration,
}

impl GuestSpec {
    pub fn new(name: &str) -> Self {
        GuestSpec {
            name: name.to_string(),
            memory_mib: 256,
            vcpus: 1,
            ip: None,
            boot_timeout: Duration::from_secs(120),
        }
    }

    pub fn memory(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }
}

/// A guest booted by [`boot`].
#[derive(Debug, Clone)]
pub struct RunningGuest {
    pub id: String,
    pub domain_name: String,
    pub console_log: PathBuf,
    pub ip: String,
    /// The console text up to the ready line.
    pub console: String,
}

fn ip_for(name: &str) -> String {
    let h = name
        .bytes()
        .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619));
    format!("10.213.7.{}", 2 + h % 250)
}

/// The domain XML the engine would send for the test guest (direct kernel boot, serial
/// console logged to a file, guest agent channel, NIC on the test bridge), with the
/// `ovirt-vm` metadata.
pub fn domain_xml(
    id: &str,
    domain_name: &str,
    spec: &GuestSpec,
    image: &halyard_testguest::GuestImage,
    console_log: &std::path::Path,
    ip: &str,
) -> String {
    let mac = format!("52:54:00:{}:{}:{}", &id[0..2], &id[2..4], &id[4..6]);
    let cmdline = halyard_testguest::kernel_cmdline(Some(&format!("{ip}/24")), Some(GATEWAY));
    format!(
        r#"<?xml version='1.0' encoding='utf-8'?>
<domain xmlns:ovirt-tune="http://ovirt.org/vm/tune/1.0" xmlns:ovirt-vm="http://ovirt.org/vm/1.0" type="kvm">
  <name>{domain_name}</name>
  <uuid>{id}</uuid>
  <memory unit="MiB">{mem}</memory>
  <currentMemory unit="MiB">{mem}</currentMemory>
  <vcpu current="{vcpus}">{vcpus}</vcpu>
  <metadata>
    <ovirt-tune:qos/>
    <ovirt-vm:vm>
      <ovirt-vm:clusterVersion>4.7</ovirt-vm:clusterVersion>
      <ovirt-vm:custom/>
      <ovirt-vm:device mac_address="{mac}"><ovirt-vm:custom/></ovirt-vm:device>
      <ovirt-vm:launchPaused>false</ovirt-vm:launchPaused>
      <ovirt-vm:resumeBehavior>auto_resume</ovirt-vm:resumeBehavior>
    </ovirt-vm:vm>
  </metadata>
  <cpu match="exact" mode="host-passthrough"><topology cores="1" sockets="{vcpus}" threads="1"/></cpu>
  <os>
    <type arch="x86_64" machine="pc">hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <clock offset="variable" adjustment="0"><timer name="rtc" tickpolicy="catchup"/><timer name="pit" tickpolicy="delay"/></clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type="pty"><log file="{log}" append="off"/><target port="0"/></serial>
    <console type="pty"><target type="serial" port="0"/></console>
    <channel type="unix"><target type="virtio" name="org.qemu.guest_agent.0"/></channel>
    <interface type="bridge"><mac address="{mac}"/><model type="virtio"/><source bridge="{bridge}"/></interface>
    <memballoon model="none"/>
  </devices>
</domain>
"#,
        mem = spec.memory_mib,
        vcpus = spec.vcpus,
        kernel = image.kernel.display(),
        initrd = image.initrd.display(),
        log = console_log.display(),
        bridge = BRIDGE,
    )
}

/// The guest's XML with a storage-domain volume as `vda`, named the engine's way
/// (`<ovirt-vm:device>` with pool, domain, image and volume; the host fills in the
/// path).
pub fn with_drive(xml: &str, sp: &str, sd: &str, img: &str, vol: &str) -> String {
    xml.replace(
        "<ovirt-vm:launchPaused>",
        &format!(
            "<ovirt-vm:device devtype=\"disk\" name=\"vda\"><ovirt-vm:poolID>{sp}</ovirt-vm:poolID><ovirt-vm:domainID>{sd}</ovirt-vm:domainID><ovirt-vm:imageID>{img}</ovirt-vm:imageID><ovirt-vm:volumeID>{vol}</ovirt-vm:volumeID></ovirt-vm:device><ovirt-vm:launchPaused>"
        ),
    )
    .replace(
        "<memballoon model=\"none\"/>",
        "<disk type=\"file\" device=\"disk\"><driver name=\"qemu\" type=\"qcow2\" cache=\"none\"/><source file=\"/rhev/data-center/placeholder\"/><target dev=\"vda\" bus=\"virtio\"/></disk><memballoon model=\"none\"/>",
    )
}

/// Boots the guest through VM.create and waits for its ready line.
pub async fn boot(host: &TestHost, client: &Client, spec: GuestSpec) -> RunningGuest {
    let env = env::Env::get();
    let image = env.guest_image().clone();
    let id = uuid::Uuid::new_v4().to_string();
    let domain_name = host.domain_name(&spec.name);
    let dir = host.guest_dir(&spec.name);
    let console_log = dir.join("console.log");
    let _ = std::fs::remove_file(&console_log);
    let ip = spec.ip.clone().unwrap_or_else(|| ip_for(&domain_name));
    let xml = domain_xml(&id, &domain_name, &spec, &image, &console_log, &ip);
    let r = client
        .call_value_with(
            "VM.create",
            json!({"vmID": id, "vmParams": {"vmId": id, "xml": xml}}),
            Some(&format!("boot-{}", spec.name)),
        )
        .await
        .unwrap_or_else(|e| panic!("VM.create failed: {e}"));
    assert_eq!(r["status"], "WaitForLaunch", "VM.create answer: {r}");
    let console = crate::wait_for_file_text(
        &console_log,
        halyard_testguest::READY_MARKER,
        spec.boot_timeout,
    )
    .await
    .unwrap_or_else(|| {
        panic!(
            "guest {domain_name} printed no ready line within {:?}; console:\n{}",
            spec.boot_timeout,
            std::fs::read_to_string(&console_log).unwrap_or_default()
        )
    });
    RunningGuest {
        id,
        domain_name,
        console_log,
        ip,
        console,
    }
}
