"""Storage through the unmodified ovirt-engine-sdk-python: a data domain, a VM with a
thin COW disk, a live snapshot, a template, a VM from the template, removal of all.

Environment: HALYARD_URL, HALYARD_CA, HALYARD_PASSWORD, HALYARD_HOST_NAME,
HALYARD_VM_NAME, HALYARD_VM2_NAME, HALYARD_KERNEL, HALYARD_INITRD, HALYARD_SD_PATH,
HALYARD_SD_TYPE (localfs or posixfs). Prints one line per step; exits non-zero on
failure.
"""
import os
import subprocess
import time

import ovirtsdk4 as sdk
import ovirtsdk4.types as types

URL = os.environ["HALYARD_URL"]
CA = os.environ["HALYARD_CA"]
PW = os.environ["HALYARD_PASSWORD"]
HOST = os.environ["HALYARD_HOST_NAME"]
VM = os.environ["HALYARD_VM_NAME"]
VM2 = os.environ["HALYARD_VM2_NAME"]
SD_PATH = os.environ["HALYARD_SD_PATH"]
SD_TYPE = os.environ.get("HALYARD_SD_TYPE", "localfs")
T0 = time.time()


def step(msg):
    print("[%6.1f] %s" % (time.time() - T0, msg), flush=True)


def wait(what, fn, timeout=180, every=0.3):
    t0 = time.time()
    while True:
        v = fn()
        if v:
            return v
        if time.time() - t0 > timeout:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(every)


def live_xml(name):
    return subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", name],
                          capture_output=True, text=True, check=True).stdout


def refused(what, fn, code=None):
    try:
        fn()
    except sdk.Error as e:
        if code is not None:
            assert e.code == code, (what, e.code, str(e))
        step("%s refused: %s" % (what, str(e).splitlines()[0][:160]))
        return
    raise AssertionError("%s was accepted" % what)


conn = sdk.Connection(url=URL, username="admin@internal", password=PW, ca_file=CA)
system = conn.system_service()
dc = system.data_centers_service().list(search="name=Default")[0]
hosts = system.hosts_service()
h = wait("the host to register", lambda: (hosts.list(search="name=%s" % HOST) or [None])[0], timeout=60)
if h.status == types.HostStatus.PENDING_APPROVAL:
    hosts.host_service(h.id).approve(cluster=types.Cluster(name="Default"))
h = wait("the host to be up", lambda: (lambda x: x if x.status == types.HostStatus.UP else None)(hosts.host_service(h.id).get()))
step("host %s up" % h.name)

sds = system.storage_domains_service()
stype = types.StorageType.LOCALFS if SD_TYPE == "localfs" else types.StorageType.POSIXFS


def host_storage(path):
    if SD_TYPE == "localfs":
        return types.HostStorage(type=stype, path=path)
    return types.HostStorage(type=stype, path=path, vfs_type="none", mount_options="bind")


# Bad input first: nothing may be created by any of these.
refused("a path with '..'", lambda: sds.add(types.StorageDomain(
    name="bad1", type=types.StorageDomainType.DATA, host=types.Host(name=HOST),
    storage=host_storage(SD_PATH + "/../etc"))), 400)
refused("a relative path", lambda: sds.add(types.StorageDomain(
    name="bad2", type=types.StorageDomainType.DATA, host=types.Host(name=HOST),
    storage=host_storage("relative/dir"))), 400)
refused("a path that is not empty", lambda: sds.add(types.StorageDomain(
    name="bad3", type=types.StorageDomainType.DATA, host=types.Host(name=HOST),
    storage=host_storage(os.environ["HALYARD_NOT_EMPTY"]))))
refused("a path that is not writable", lambda: sds.add(types.StorageDomain(
    name="bad4", type=types.StorageDomainType.DATA, host=types.Host(name=HOST),
    storage=host_storage(os.environ["HALYARD_READ_ONLY"]))))
assert sds.list() == [], sds.list()
assert sorted(os.listdir(os.environ["HALYARD_NOT_EMPTY"])) == ["somebody-elses-file"]

sd = sds.add(types.StorageDomain(
    name="data1", type=types.StorageDomainType.DATA, host=types.Host(name=HOST),
    storage=host_storage(SD_PATH)))
step("storage domain %s added: %s, %d GiB available" % (sd.name, sd.status, (sd.available or 0) >> 30))
sds.storage_domain_service(sd.id).update(types.StorageDomain(description="the main domain"))
assert sds.storage_domain_service(sd.id).get().description == "the main domain"
assert sd.status == types.StorageDomainStatus.UNATTACHED
attached = system.data_centers_service().data_center_service(dc.id).storage_domains_service()
attached.add(types.StorageDomain(id=sd.id))
asd = attached.storage_domain_service(sd.id)
wait("the domain to be active", lambda: asd.get().status == types.StorageDomainStatus.ACTIVE)
wait("the data center to be up", lambda: system.data_centers_service().data_center_service(dc.id).get().status == types.DataCenterStatus.UP)
assert asd.get().master
h = hosts.host_service(h.id).get()
assert h.spm.status == types.SpmStatus.SPM, h.spm.status
step("attached as master; data center up; %s is SPM (priority %d)" % (h.name, h.spm.priority))
refused("attaching it twice", lambda: attached.add(types.StorageDomain(id=sd.id)), 409)
dc2 = system.data_centers_service().add(types.DataCenter(name="dc2", local=False))
refused("attaching it to a second data center", lambda: system.data_centers_service().data_center_service(dc2.id).storage_domains_service().add(types.StorageDomain(id=sd.id)), 409)
assert system.data_centers_service().data_center_service(dc2.id).storage_domains_service().list() == []

# A second domain: attached next to the master, into maintenance, detached, formatted.
sd2 = sds.add(types.StorageDomain(name="data2", type=types.StorageDomainType.DATA, host=types.Host(name=HOST),
                                  storage=host_storage(os.environ["HALYARD_SD2_PATH"])))
attached.add(types.StorageDomain(id=sd2.id))
asd2 = attached.storage_domain_service(sd2.id)
wait("data2 active", lambda: asd2.get().status == types.StorageDomainStatus.ACTIVE)
assert not asd2.get().master
asd2.deactivate()
wait("data2 in maintenance", lambda: asd2.get().status == types.StorageDomainStatus.MAINTENANCE)
asd2.activate()
wait("data2 active again", lambda: asd2.get().status == types.StorageDomainStatus.ACTIVE)
asd2.deactivate()
asd2.remove()
sds.storage_domain_service(sd2.id).remove(host=HOST, format=True)
assert [x.name for x in sds.list()] == ["data1"]
assert os.listdir(os.environ["HALYARD_SD2_PATH"]) == []
step("a second domain attached, deactivated, activated, detached and formatted")

# Disks: absurd sizes are refused, nothing is made.
refused("a negative disk size", lambda: system.disks_service().add(types.Disk(
    name="neg", format=types.DiskFormat.COW, provisioned_size=-1,
    storage_domains=[types.StorageDomain(name="data1")])), 400)
refused("a 1 EiB disk", lambda: system.disks_service().add(types.Disk(
    name="huge", format=types.DiskFormat.COW, provisioned_size=2**60,
    storage_domains=[types.StorageDomain(name="data1")])), 400)
assert system.disks_service().list() == []

vms = system.vms_service()
vm = vms.add(types.Vm(
    name=VM, cluster=types.Cluster(name="Default"), template=types.Template(name="Blank"),
    memory=256 * 2**20,
    os=types.OperatingSystem(type="other_linux", kernel=os.environ["HALYARD_KERNEL"],
                             initrd=os.environ["HALYARD_INITRD"], cmdline="console=ttyS0 quiet")))
vm_service = vms.vm_service(vm.id)
att = vm_service.disk_attachments_service().add(types.DiskAttachment(
    disk=types.Disk(name=VM + "_disk1", format=types.DiskFormat.COW, provisioned_size=2**30,
                    storage_domains=[types.StorageDomain(name="data1")]),
    interface=types.DiskInterface.VIRTIO, bootable=True, active=True))
disk_service = system.disks_service().disk_service(att.disk.id)
step("disk added: %s" % disk_service.get().status)
d = wait("the disk to be ok", lambda: (lambda x: x if x.status == types.DiskStatus.OK else None)(disk_service.get()))
assert d.provisioned_size == 2**30 and d.format == types.DiskFormat.COW and d.sparse
step("disk ok: 1 GiB thin COW, %d KiB used" % (d.actual_size >> 10))

t0 = time.time()
vm_service.start()
wait("the VM to be up", lambda: vm_service.get().status == types.VmStatus.UP)
step("vm up after %.1f s" % (time.time() - t0))
x = live_xml(VM)
leaf0 = disk_service.get().image_id
assert "images/%s/%s" % (d.id, leaf0) in x, x
step("the running guest has the disk: images/%s/%s" % (d.id, leaf0))

snaps = vm_service.snapshots_service()
s = snaps.add(types.Snapshot(description="snap1", persist_memorystate=False))
wait("the snapshot to be ok", lambda: snaps.snapshot_service(s.id).get().snapshot_status == types.SnapshotStatus.OK)
assert vm_service.get().status == types.VmStatus.UP
kinds = sorted(str(x.snapshot_type) for x in snaps.list())
assert kinds == ["active", "regular"], kinds
leaf1 = disk_service.get().image_id
assert leaf1 != leaf0
x = live_xml(VM)
assert "images/%s/%s" % (d.id, leaf1) in x, x
step("live snapshot ok; the VM kept running and writes the new leaf %s" % leaf1)

vm_service.stop()
wait("the VM to be down", lambda: vm_service.get().status == types.VmStatus.DOWN)
step("vm stopped")

templates = system.templates_service()
t = templates.add(types.Template(name=VM + "-tpl", vm=types.Vm(id=vm.id)))
wait("the template to be ok", lambda: templates.template_service(t.id).get().status == types.TemplateStatus.OK, timeout=300)
step("template %s ok" % t.name)
# A second version of it, with a COW copy of the disk; a base with versions stays.
src_disk = vm_service.disk_attachments_service().list()[0].disk.id
t2 = templates.add(types.Template(name="ignored", vm=types.Vm(id=vm.id, disk_attachments=[
    types.DiskAttachment(disk=types.Disk(id=src_disk, format=types.DiskFormat.COW, sparse=True))]),
    version=types.TemplateVersion(base_template=types.Template(id=t.id), version_name="second")))
wait("version 2 to be ok", lambda: templates.template_service(t2.id).get().status == types.TemplateStatus.OK, timeout=300)
t2 = templates.template_service(t2.id).get()
assert t2.name == t.name and t2.version.version_number == 2 and t2.version.version_name == "second", t2.version
assert t2.version.base_template.id == t.id
t2disk = conn.follow_link(templates.template_service(t2.id).disk_attachments_service().list()[0].disk)
assert t2disk.format == types.DiskFormat.COW, t2disk.format
assert sorted(x.version.version_number for x in templates.list(search="name=%s" % t.name)) == [1, 2]
refused("a version of a version", lambda: templates.add(types.Template(name=t.name, vm=types.Vm(id=vm.id),
        version=types.TemplateVersion(base_template=types.Template(id=t2.id)))), 400)
refused("removing a base template with versions", lambda: templates.template_service(t.id).remove(), 409)
refused("a raw thin disk on a template", lambda: vms.add(types.Vm(name="rawthin", cluster=types.Cluster(name="Default"),
        template=types.Template(id=t2.id), disk_attachments=[types.DiskAttachment(disk=types.Disk(id=t2disk.id, format=types.DiskFormat.RAW))])), 400)
refused("a disk of another template", lambda: vms.add(types.Vm(name="otherdisk", cluster=types.Cluster(name="Default"),
        template=types.Template(id=t.id), disk_attachments=[types.DiskAttachment(disk=types.Disk(id=t2disk.id))])), 400)
templates.template_service(t2.id).remove()
wait("version 2 gone", lambda: [x.id for x in templates.list(search="name=%s" % t.name)] == [t.id])
step("template version 2 (COW copy) made, checked and removed")

vm2 = vms.add(types.Vm(name=VM2, cluster=types.Cluster(name="Default"), template=types.Template(name=t.name)))
vm2_service = vms.vm_service(vm2.id)
wait("the VM from the template to be down (disks made)", lambda: vm2_service.get().status == types.VmStatus.DOWN)
atts = vm2_service.disk_attachments_service().list()
assert len(atts) == 1
d2 = system.disks_service().disk_service(atts[0].disk.id).get()
assert d2.status == types.DiskStatus.OK and d2.format == types.DiskFormat.COW
step("vm %s from the template: disk %s, %d KiB used" % (vm2.name, d2.name, d2.actual_size >> 10))
# An existing disk: made on its own, attached by id, detached, removed.
extra = system.disks_service().add(types.Disk(name=VM2 + "_extra", format=types.DiskFormat.RAW, sparse=True,
                                              provisioned_size=64 * 2**20, storage_domains=[types.StorageDomain(name="data1")]))
wait("the extra disk to be ok", lambda: system.disks_service().disk_service(extra.id).get().status == types.DiskStatus.OK)
system.disks_service().disk_service(extra.id).update(types.Disk(name=VM2 + "_renamed"))
assert system.disks_service().disk_service(extra.id).get().name == VM2 + "_renamed"
system.disks_service().disk_service(extra.id).update(types.Disk(provisioned_size=128 * 2**20))
wait("the extended disk to be ok", lambda: system.disks_service().disk_service(extra.id).get().status == types.DiskStatus.OK)
assert system.disks_service().disk_service(extra.id).get().provisioned_size == 128 * 2**20
refused("shrinking a disk", lambda: system.disks_service().disk_service(extra.id).update(
    types.Disk(provisioned_size=64 * 2**20)), 400)
step("a disk extended from 64 to 128 MiB (Volume.extendSize on the SPM)")
vm2_service.disk_attachments_service().add(types.DiskAttachment(disk=types.Disk(id=extra.id), interface=types.DiskInterface.VIRTIO, bootable=False, active=True))
att = vm2_service.disk_attachments_service().attachment_service(extra.id)
att.update(types.DiskAttachment(interface=types.DiskInterface.VIRTIO_SCSI))
assert att.get().interface == types.DiskInterface.VIRTIO_SCSI
assert len(vm2_service.disk_attachments_service().list()) == 2
refused("attaching it to a second VM", lambda: vm_service.disk_attachments_service().add(types.DiskAttachment(disk=types.Disk(id=extra.id), interface=types.DiskInterface.VIRTIO)), 409)
vm2_service.disk_attachments_service().attachment_service(extra.id).remove()
assert len(vm2_service.disk_attachments_service().list()) == 1
system.disks_service().disk_service(extra.id).remove()
wait("the extra disk to be gone", lambda: all(x.id != extra.id for x in system.disks_service().list()))
step("an existing disk attached by id, detached and removed")
refused("removing a template in use", lambda: templates.template_service(t.id).remove(), 409)
# Its disk on the virtio-scsi bus: libvirt's live domain has the controller and an sd disk.
vm2_service.disk_attachments_service().attachment_service(d2.id).update(
    types.DiskAttachment(interface=types.DiskInterface.VIRTIO_SCSI))
# UEFI on q35 (Debian's OVMF); an IDE disk cannot go on q35.
vm2_service.update(types.Vm(bios=types.Bios(type=types.BiosType.Q35_OVMF)))
assert vm2_service.get().bios.type == types.BiosType.Q35_OVMF
vm2_service.start()
wait("the VM from the template to be up", lambda: vm2_service.get().status == types.VmStatus.UP)
x = live_xml(VM2)
assert "model='virtio-scsi'" in x and "<target dev='sda' bus='scsi'/>" in x, x
assert "machine='pc-q35" in x and "/usr/share/OVMF/OVMF_CODE.fd</loader>" in x, x
assert os.path.exists("/var/lib/libvirt/qemu/nvram/%s.fd" % vm2.id), "no UEFI variable store"
step("vm from the template up on q35 with OVMF, its disk on virtio-scsi")
refused("extending a disk of a running VM", lambda: vm2_service.disk_attachments_service().attachment_service(d2.id).update(
    types.DiskAttachment(disk=types.Disk(provisioned_size=d2.provisioned_size * 2))), 409)
vm2_service.stop()
wait("it to be down", lambda: vm2_service.get().status == types.VmStatus.DOWN)

# Remove all.
vm2_service.remove()
# The UEFI variable store stays with libvirt (Halyard does not keep it yet): the test's own.
os.remove("/var/lib/libvirt/qemu/nvram/%s.fd" % vm2.id)
vm_service.remove()
wait("the VMs' disks to be gone", lambda: all(x.name not in (VM + "_disk1", d2.name) for x in system.disks_service().list()))
templates.template_service(t.id).remove()
wait("every disk to be gone", lambda: not system.disks_service().list() and not templates.list(search="name=%s" % t.name))
step("vms, disks and template removed")
asd.deactivate()
wait("the domain in maintenance", lambda: asd.get().status == types.StorageDomainStatus.MAINTENANCE)
asd.remove()
wait("the domain detached", lambda: sds.storage_domain_service(sd.id).get().status == types.StorageDomainStatus.UNATTACHED)
sds.storage_domain_service(sd.id).remove(host=HOST, format=True)
assert sds.list() == []
left = os.listdir(SD_PATH)
assert left == [], left
step("storage domain detached and formatted; the directory is empty")

evs = [e.description for e in system.events_service().list(max=300)]
for needle in ["Storage Pool Manager runs on", "was attached to Data Center", "creation for VM", "Creation of Template"]:
    assert any(needle in e for e in evs), (needle, evs[:40])
jobs = system.jobs_service().list()
tjob = [j for j in jobs if j.description.startswith("Creating Template")]
assert tjob and tjob[0].status == types.JobStatus.FINISHED, [(j.description, j.status) for j in jobs]
steps = system.jobs_service().job_service(tjob[0].id).steps_service().list()
assert steps and all(x.status == types.StepStatus.FINISHED for x in steps), steps
step("events and jobs with steps recorded")
conn.close()
print("STORAGE FLOW OK", flush=True)
