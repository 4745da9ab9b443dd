//! A VM's OVF, in the format oVirt's engine writes (`OvfVmWriter`): the document
//! `all_content=true` answers in `initialization/configuration/data`, export domains
//! and OVF stores hold, and `download_vm_ovf` saves. Envelope, `References` (a file per
//! disk volume: `<image group>/<volume>`), the network and disk sections, and the
//! virtual system: general data, the OS, and the hardware items (CPU 3, memory 4, NIC
//! 10, disk 17, as oVirt's `OvfHardware`).

use std::fmt::Write as _;

use crate::model::{iso8601, Inventory, Vm, BLANK_TEMPLATE};

const OVF_URI: &str = "http://schemas.dmtf.org/ovf/envelope/1/";
const RASD_URI: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
const VSSD_URI: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData";
const XSI_URI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// The OVF version written (the engine writes its own version).
pub const VERSION: &str = "4.7.0.0";

fn esc(s: &str) -> String {
    crate::api::node::xml_escaped(s)
}

const GIB: u64 = 1 << 30;

/// oVirt's NIC types in the OVF (`VmInterfaceType`): rtl8139 0, e1000 2, virtio (pv) 3.
fn nic_subtype(interface: &str) -> u8 {
    match interface {
        "rtl8139" => 0,
        "e1000" => 2,
        _ => 3,
    }
}

/// The OVF of VM `vm` as the inventory holds it.
pub fn vm_ovf(inv: &Inventory, vm: &Vm) -> String {
    let disks = inv.disks_of(&vm.id);
    let nics = inv.nics_of(&vm.id);
    let pool = inv
        .clusters
        .get(&vm.cluster)
        .map(|c| c.data_center.clone())
        .unwrap_or_default();
    let mut s = String::with_capacity(4096);
    let _ = write!(
        s,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ovf:Envelope xmlns:ovf=\"{OVF_URI}\" xmlns:rasd=\"{RASD_URI}\" xmlns:vssd=\"{VSSD_URI}\" xmlns:xsi=\"{XSI_URI}\" ovf:version=\"{VERSION}\">"
    );
    s.push_str("<References>");
    for d in &disks {
        for v in &d.volumes {
            let _ = write!(
                s,
                "<File ovf:href=\"{}/{}\" ovf:id=\"{}\" ovf:size=\"{}\" ovf:description=\"{}\" ovf:disk_storage_type=\"IMAGE\" ovf:cinder_volume_type=\"\"></File>",
                esc(&d.id),
                esc(v),
                esc(v),
                d.provisioned_size,
                esc(&d.description)
            );
        }
    }
    for n in &nics {
        let _ = write!(s, "<Nic ovf:id=\"{}\"/>", esc(&n.id));
    }
    s.push_str("</References>");
    s.push_str("<Section xsi:type=\"ovf:NetworkSection_Type\"><Info>List of networks</Info>");
    for n in &nics {
        let _ = write!(s, "<Network ovf:name=\"{}\"/>", esc(&inv.nic_network(n)));
    }
    s.push_str("</Section>");
    s.push_str("<Section xsi:type=\"ovf:DiskSection_Type\"><Info>List of Virtual Disks</Info>");
    for d in &disks {
        let leaf = d.leaf();
        let parent = d
            .volumes
            .len()
            .checked_sub(2)
            .and_then(|i| d.volumes.get(i))
            .map(|p| format!("{}/{}", d.id, p))
            .unwrap_or_default();
        let (format, volume_format) = if d.format == "cow" {
            ("http://www.gnome.org/~markmc/qcow-image-format.html", "COW")
        } else {
            (
                "http://www.vmware.com/specifications/vmdk.html#sparse",
                "RAW",
            )
        };
        let _ = write!(
            s,
            "<Disk ovf:diskId=\"{leaf}\" ovf:size=\"{}\" ovf:actual_size=\"{}\" ovf:vm_snapshot_id=\"\" ovf:parentRef=\"{}\" ovf:fileRef=\"{}/{leaf}\" ovf:format=\"{format}\" ovf:volume-format=\"{volume_format}\" ovf:volume-type=\"{}\" ovf:disk-interface=\"{}\" ovf:read-only=\"false\" ovf:shareable=\"false\" ovf:boot=\"{}\" ovf:pass-discard=\"false\" ovf:disk-alias=\"{}\" ovf:disk-description=\"{}\" ovf:wipe-after-delete=\"false\"></Disk>",
            d.provisioned_size.div_ceil(GIB),
            d.actual_size.div_ceil(GIB),
            esc(&parent),
            esc(&d.id),
            if d.sparse { "Sparse" } else { "Preallocated" },
            match d.interface.as_str() {
                "virtio_scsi" => "VirtIO_SCSI",
                "ide" => "IDE",
                "sata" => "SATA",
                _ => "VirtIO",
            },
            d.bootable,
            esc(&d.name),
            esc(&d.description)
        );
    }
    s.push_str("</Section>");
    // The virtual system.
    let template_name = inv
        .templates
        .get(&vm.template)
        .map(|t| t.name.clone())
        .unwrap_or_else(|| "Blank".into());
    let template = if vm.template.is_empty() {
        BLANK_TEMPLATE
    } else {
        vm.template.as_str()
    };
    let _ = write!(
        s,
        "<Content ovf:id=\"out\" xsi:type=\"ovf:VirtualSystem_Type\"><Name>{}</Name><Description>{}</Description><Comment></Comment><CreationDate>{}</CreationDate><ExportDate>{}</ExportDate><TemplateId>{}</TemplateId><TemplateName>{}</TemplateName><IsStateless>false</IsStateless><Origin>3</Origin><VmType>1</VmType><ClusterCompatibilityVersion>4.7</ClusterCompatibilityVersion><ClusterName>{}</ClusterName><MinAllocatedMem>{}</MinAllocatedMem><MaxMemorySizeMb>{}</MaxMemorySizeMb><KernelUrl>{}</KernelUrl><InitrdUrl>{}</InitrdUrl><KernelParams>{}</KernelParams>",
        esc(&vm.name),
        esc(&vm.description),
        ovf_date(vm.creation_time),
        ovf_date(crate::model::now_ms()),
        esc(template),
        esc(&template_name),
        esc(&inv.clusters.get(&vm.cluster).map(|c| c.name.clone()).unwrap_or_default()),
        vm.memory >> 20,
        vm.memory >> 20,
        esc(&vm.kernel),
        esc(&vm.initrd),
        esc(&vm.cmdline),
    );
    let _ = write!(
        s,
        "<Section ovf:id=\"{}\" ovf:required=\"false\" xsi:type=\"ovf:OperatingSystemSection_Type\"><Info>Guest Operating System</Info><Description>{}</Description></Section>",
        esc(&vm.id),
        esc(&vm.os_type)
    );
    let vcpus =
        u64::from(vm.sockets.max(1)) * u64::from(vm.cores.max(1)) * u64::from(vm.threads.max(1));
    let mem_mib = vm.memory >> 20;
    let _ = write!(
        s,
        "<Section xsi:type=\"ovf:VirtualHardwareSection_Type\"><Info>{vcpus} CPU, {mem_mib} Memory</Info><System><vssd:VirtualSystemType>ENGINE {VERSION}</vssd:VirtualSystemType></System>\
<Item><rasd:Caption>{vcpus} virtual cpu</rasd:Caption><rasd:Description>Number of virtual CPU</rasd:Description><rasd:InstanceId>1</rasd:InstanceId><rasd:ResourceType>3</rasd:ResourceType><rasd:num_of_sockets>{}</rasd:num_of_sockets><rasd:cpu_per_socket>{}</rasd:cpu_per_socket><rasd:threads_per_cpu>{}</rasd:threads_per_cpu><rasd:max_num_of_vcpus>{vcpus}</rasd:max_num_of_vcpus><rasd:VirtualQuantity>{vcpus}</rasd:VirtualQuantity></Item>\
<Item><rasd:Caption>{mem_mib} MB of memory</rasd:Caption><rasd:Description>Memory Size</rasd:Description><rasd:InstanceId>2</rasd:InstanceId><rasd:ResourceType>4</rasd:ResourceType><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:VirtualQuantity>{mem_mib}</rasd:VirtualQuantity></Item>",
        vm.sockets.max(1),
        vm.cores.max(1),
        vm.threads.max(1),
    );
    for d in &disks {
        let leaf = d.leaf();
        let _ = write!(
            s,
            "<Item><rasd:Caption>{}</rasd:Caption><rasd:InstanceId>{leaf}</rasd:InstanceId><rasd:ResourceType>17</rasd:ResourceType><rasd:HostResource>{}/{leaf}</rasd:HostResource><rasd:Parent>00000000-0000-0000-0000-000000000000</rasd:Parent><rasd:Template>00000000-0000-0000-0000-000000000000</rasd:Template><rasd:ApplicationList></rasd:ApplicationList><rasd:StorageId>{}</rasd:StorageId><rasd:StoragePoolId>{}</rasd:StoragePoolId><rasd:CreationDate>{}</rasd:CreationDate><rasd:LastModified>{}</rasd:LastModified><Type>disk</Type><Device>disk</Device><IsPlugged>{}</IsPlugged><IsReadOnly>false</IsReadOnly><Alias>ua-{}</Alias></Item>",
            esc(&d.name),
            esc(&d.id),
            esc(&d.storage_domain),
            esc(&pool),
            ovf_date(d.creation_time),
            ovf_date(d.creation_time),
            !d.inactive,
            esc(&d.id),
        );
    }
    for n in &nics {
        let _ = write!(
            s,
            "<Item><rasd:Caption>Ethernet adapter on {net}</rasd:Caption><rasd:InstanceId>{id}</rasd:InstanceId><rasd:ResourceType>10</rasd:ResourceType><rasd:OtherResourceType>{net}</rasd:OtherResourceType><rasd:ResourceSubType>{}</rasd:ResourceSubType><rasd:Connection>{net}</rasd:Connection><rasd:Linked>{}</rasd:Linked><rasd:Name>{}</rasd:Name><rasd:MACAddress>{}</rasd:MACAddress><rasd:speed>1000</rasd:speed><Type>interface</Type><Device>bridge</Device><IsPlugged>{}</IsPlugged><IsReadOnly>false</IsReadOnly><Alias>ua-{id}</Alias></Item>",
            nic_subtype(&n.interface),
            n.linked,
            esc(&n.name),
            esc(&n.mac),
            n.plugged,
            net = esc(&inv.nic_network(n)),
            id = esc(&n.id),
        );
    }
    s.push_str("</Section></Content></ovf:Envelope>");
    s
}

/// The engine's OVF dates: `yyyy/MM/dd HH:mm:ss`, UTC.
fn ovf_date(ms: i64) -> String {
    // iso8601 gives 2026-12-01T19:31:19.000Z.
    let i = iso8601(ms);
    let date = i.get(0..10).unwrap_or("1970-01-01").replace('-', "/");
    let time = i.get(11..19).unwrap_or("00:00:00");
    format!("{date} {time}")
}
