"""Image transfer benchmark: upload and download of one image through the unmodified
SDK and ovirt-imageio client, through the host (transfer_url) and through the Manager's
proxy (proxy_url), next to `qemu-img convert` of the same image into / out of the same
storage domain, measured in the same run. Prints one line per measurement and a table.

Environment: HALYARD_URL, HALYARD_CA, HALYARD_PASSWORD, HALYARD_HOST_NAME,
HALYARD_SD_PATH, HALYARD_WORK, HALYARD_IMAGE (the qcow2 image), HALYARD_RUNS.
"""
import json
import os
import subprocess
import time

import ovirtsdk4 as sdk
import ovirtsdk4.types as types
from ovirt_imageio import client

URL = os.environ["HALYARD_URL"]
CA = os.environ["HALYARD_CA"]
HOST = os.environ["HALYARD_HOST_NAME"]
SD_PATH = os.environ["HALYARD_SD_PATH"]
WORK = os.environ["HALYARD_WORK"]
IMAGE = os.environ["HALYARD_IMAGE"]
RUNS = int(os.environ.get("HALYARD_RUNS", "3"))


def wait(fn, timeout=120):
    t0 = time.time()
    while True:
        v = fn()
        if v:
            return v
        if time.time() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.05)


conn = sdk.Connection(url=URL, username="admin@internal", password=os.environ["HALYARD_PASSWORD"], ca_file=CA)
system = conn.system_service()
dc = system.data_centers_service().list(search="name=Default")[0]
hosts = system.hosts_service()
h = wait(lambda: (hosts.list(search="name=%s" % HOST) or [None])[0])
if h.status == types.HostStatus.PENDING_APPROVAL:
    hosts.host_service(h.id).approve(cluster=types.Cluster(name="Default"))
wait(lambda: hosts.host_service(h.id).get().status == types.HostStatus.UP)
sds = system.storage_domains_service()
sd = sds.add(types.StorageDomain(name="bench", type=types.StorageDomainType.DATA, host=types.Host(name=HOST),
                                 storage=types.HostStorage(type=types.StorageType.LOCALFS, path=SD_PATH)))
att = system.data_centers_service().data_center_service(dc.id).storage_domains_service()
att.add(types.StorageDomain(id=sd.id))
wait(lambda: att.storage_domain_service(sd.id).get().status == types.StorageDomainStatus.ACTIVE)
disks = system.disks_service()
transfers = system.image_transfers_service()
info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", IMAGE]))
vsize = info["virtual-size"]
data = sum(e["length"] for e in json.loads(subprocess.check_output(
    ["qemu-img", "map", "--output=json", IMAGE])) if e["data"])


def sync():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def new_disk(name):
    d = disks.add(types.Disk(name=name, format=types.DiskFormat.COW, provisioned_size=vsize, sparse=True,
                             storage_domains=[types.StorageDomain(name="bench")]))
    wait(lambda: disks.disk_service(d.id).get().status == types.DiskStatus.OK)
    return d


def transfer(d, direction):
    t = transfers.add(types.ImageTransfer(disk=types.Disk(id=d.id), direction=direction,
                                          format=types.DiskFormat.RAW))
    ts = transfers.image_transfer_service(t.id)
    t = wait(lambda: (lambda x: x if x.phase == types.ImageTransferPhase.TRANSFERRING else None)(ts.get()))
    return t, ts


def finalize(ts):
    ts.finalize()
    wait(lambda: ts.get().phase == types.ImageTransferPhase.FINISHED_SUCCESS)


def volume_path(d):
    for root, _, files in os.walk(SD_PATH):
        if root.endswith(d.id):
            vols = [f for f in files if not f.endswith((".meta", ".lease"))]
            return os.path.join(root, vols[0])
    raise AssertionError("no volume for %s" % d.id)


results = {}


def record(name, seconds):
    results.setdefault(name, []).append(seconds)
    print("%-28s %6.2f s  %7.1f MiB/s (virtual size)" % (name, seconds, vsize / seconds / 2**20), flush=True)


for run in range(RUNS):
    # Reference: qemu-img convert of the image into the domain's directory.
    ref = os.path.join(SD_PATH, "ref-%d.qcow2" % run)
    sync()
    t0 = time.monotonic()
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", IMAGE, ref], check=True)
    subprocess.run(["sync"], check=True)
    record("qemu-img convert (in)", time.monotonic() - t0)
    for via in ("transfer_url", "proxy_url"):
        d = new_disk("bench-%s-%d" % (via, run))
        t, ts = transfer(d, types.ImageTransferDirection.UPLOAD)
        sync()
        t0 = time.monotonic()
        client.upload(IMAGE, getattr(t, via), CA)
        t1 = time.monotonic()
        finalize(ts)
        subprocess.run(["sync"], check=True)
        t2 = time.monotonic()
        print("  (client %.2f s, finalize and sync %.2f s)" % (t1 - t0, t2 - t1), flush=True)
        record("upload %s" % via, t2 - t0)
        if via == "transfer_url":
            src_disk = d
    # Download reference: qemu-img convert of the uploaded volume out of the domain.
    out = os.path.join(WORK, "out-ref.qcow2")
    sync()
    t0 = time.monotonic()
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", volume_path(src_disk), out], check=True)
    subprocess.run(["sync"], check=True)
    record("qemu-img convert (out)", time.monotonic() - t0)
    for via in ("transfer_url", "proxy_url"):
        t, ts = transfer(disks.disk_service(src_disk.id).get(), types.ImageTransferDirection.DOWNLOAD)
        out = os.path.join(WORK, "out-%s.qcow2" % via)
        if os.path.exists(out):
            os.remove(out)
        sync()
        t0 = time.monotonic()
        client.download(getattr(t, via), out, CA, fmt="qcow2")
        subprocess.run(["sync"], check=True)
        record("download %s" % via, time.monotonic() - t0)
        finalize(ts)
    subprocess.run(["qemu-img", "compare", IMAGE, out], check=True)
    os.remove(ref)
    for x in disks.list():
        if x.name.startswith("bench-"):
            disks.disk_service(x.id).remove()
    wait(lambda: not [x for x in disks.list() if x.name.startswith("bench-")])

best = {k: min(v) for k, v in results.items()}
print()
print("image: %d MiB virtual, %d MiB of data; best of %d runs" % (vsize >> 20, data >> 20, RUNS))
print("%-22s %10s %10s %10s %8s" % ("", "reference", "host", "proxy", "target"))
for kind, ref, target in (("upload", "qemu-img convert (in)", "0.8x / 0.6x"),
                          ("download", "qemu-img convert (out)", "0.8x / 0.6x")):
    r = best[ref]
    hst = best["%s transfer_url" % kind]
    prx = best["%s proxy_url" % kind]
    mibs = lambda s: vsize / s / 2**20
    print("%-22s %7.1f MiB/s %6.1f MiB/s %6.1f MiB/s" % (kind + " throughput", mibs(r), mibs(hst), mibs(prx)))
    print("%-22s %10s %9.2fx %9.2fx %8s" % (kind + " vs qemu-img", "1.00x", r / hst, r / prx, target))

# ---- the Debian image: upload it, boot it, time start -> the guest agent's first report ----
DEBIAN = os.environ.get("HALYARD_DEBIAN_IMAGE")
if DEBIAN:
    dinfo = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", DEBIAN]))
    d = disks.add(types.Disk(name="bench-debian", format=types.DiskFormat.COW,
                             provisioned_size=dinfo["virtual-size"], sparse=True,
                             storage_domains=[types.StorageDomain(name="bench")]))
    wait(lambda: disks.disk_service(d.id).get().status == types.DiskStatus.OK)
    t, ts = transfer(d, types.ImageTransferDirection.UPLOAD)
    t0 = time.monotonic()
    client.upload(DEBIAN, t.transfer_url, CA)
    finalize(ts)
    print("upload of the Debian image (%d MiB allocated) %.2f s" % (dinfo["actual-size"] >> 20, time.monotonic() - t0))
    vms = system.vms_service()
    vm = vms.add(types.Vm(name="bench-debian", cluster=types.Cluster(name="Default"),
                          template=types.Template(name="Blank"), memory=1024 * 2**20,
                          cpu=types.Cpu(topology=types.CpuTopology(sockets=2, cores=1, threads=1)),
                          bios=types.Bios(type=types.BiosType.Q35_OVMF),
                          os=types.OperatingSystem(type="other_linux")))
    vs = vms.vm_service(vm.id)
    vs.disk_attachments_service().add(types.DiskAttachment(
        disk=types.Disk(id=d.id), interface=types.DiskInterface.VIRTIO, bootable=True, active=True))
    wait(lambda: vs.get().status == types.VmStatus.DOWN)
    t0 = time.monotonic()
    vs.start()
    t_up = None
    while True:
        v = vs.get()
        now = time.monotonic() - t0
        if t_up is None and v.status == types.VmStatus.UP:
            t_up = now
        if v.fqdn or v.guest_operating_system:
            t_agent = now
            break
        if now > 900:
            raise AssertionError("no report from the guest agent in 900 s")
        time.sleep(0.2)
    print("Debian guest: start -> up %.1f s, start -> the guest agent's first report %.1f s (host name %s)"
          % (t_up or t_agent, t_agent, v.fqdn), flush=True)
    vs.stop()
    wait(lambda: vs.get().status == types.VmStatus.DOWN, timeout=120)
    vs.remove()  # and its disk, as oVirt removes a VM's disks
    wait(lambda: not [x for x in disks.list() if x.name == "bench-debian"])

conn.close()
print("TRANSFER BENCH DONE")
