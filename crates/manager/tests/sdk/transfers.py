"""Image transfers through the unmodified SDK and the unmodified ovirt-imageio client
(both from PyPI): uploads and downloads through the host's data server and through the
Manager's proxy, checksums, and the protocol's refusals.

Environment: HALYARD_URL, HALYARD_CA, HALYARD_PASSWORD, HALYARD_HOST_NAME,
HALYARD_SD_PATH, HALYARD_WORK, HALYARD_BOOT_ISO (a bootable ISO of the test guest),
HALYARD_CONSOLE_DIR (where the host logs VMs' serial consoles), HALYARD_VM_NAME. Prints one line per step and TRANSFERS OK at the end.
"""
import http.client
import json
import os
import socket
import ssl
import subprocess
import time
from urllib.parse import urlparse

import ovirtsdk4 as sdk
import ovirtsdk4.types as types
from ovirt_imageio import client

URL = os.environ["HALYARD_URL"]
CA = os.environ["HALYARD_CA"]
PW = os.environ["HALYARD_PASSWORD"]
HOST = os.environ["HALYARD_HOST_NAME"]
SD_PATH = os.environ["HALYARD_SD_PATH"]
WORK = os.environ["HALYARD_WORK"]
BOOT_ISO = os.environ["HALYARD_BOOT_ISO"]
CONSOLE_DIR = os.environ["HALYARD_CONSOLE_DIR"]
VM_NAME = os.environ["HALYARD_VM_NAME"]
T0 = time.time()
MiB = 1 << 20


def step(msg):
    print("[%6.1f] %s" % (time.time() - T0, msg), flush=True)


def wait(what, fn, timeout=120, every=0.3):
    t0 = time.time()
    while True:
        v = fn()
        if v:
            return v
        if time.time() - t0 > timeout:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(every)


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def refused(what, fn, code=None):
    try:
        fn()
    except sdk.Error as e:
        if code is not None:
            assert e.code == code, (what, e.code, str(e))
        step("%s refused: %s" % (what, str(e).splitlines()[0][:200]))
        return
    raise AssertionError("%s was accepted" % what)


conn = sdk.Connection(url=URL, username="admin@internal", password=PW, ca_file=CA)
system = conn.system_service()
dc = system.data_centers_service().list(search="name=Default")[0]
hosts = system.hosts_service()
h = wait("the host to register", lambda: (hosts.list(search="name=%s" % HOST) or [None])[0], timeout=60)
if h.status == types.HostStatus.PENDING_APPROVAL:
    hosts.host_service(h.id).approve(cluster=types.Cluster(name="Default"))
wait("the host to be up", lambda: hosts.host_service(h.id).get().status == types.HostStatus.UP)
sds = system.storage_domains_service()
sd = sds.add(types.StorageDomain(
    name="tdata", type=types.StorageDomainType.DATA, host=types.Host(name=HOST),
    storage=types.HostStorage(type=types.StorageType.LOCALFS, path=SD_PATH)))
attached = system.data_centers_service().data_center_service(dc.id).storage_domains_service()
attached.add(types.StorageDomain(id=sd.id))
wait("the domain to be active",
     lambda: attached.storage_domain_service(sd.id).get().status == types.StorageDomainStatus.ACTIVE)
step("domain tdata active")

disks = system.disks_service()
transfers = system.image_transfers_service()


def new_disk(name, size, fmt=types.DiskFormat.COW, content=types.DiskContentType.DATA):
    d = disks.add(types.Disk(name=name, format=fmt, provisioned_size=size, sparse=True,
                             content_type=content, storage_domains=[types.StorageDomain(name="tdata")]))
    wait("disk %s ok" % name, lambda: disks.disk_service(d.id).get().status == types.DiskStatus.OK)
    return disks.disk_service(d.id).get()


def start(disk, direction, **kw):
    # As the SDK's helpers: guest data (qemu-nbd converts to the disk's format).
    kw.setdefault("format", types.DiskFormat.RAW)
    t = transfers.add(types.ImageTransfer(disk=types.Disk(id=disk.id), direction=direction, **kw))
    assert t.phase == types.ImageTransferPhase.INITIALIZING, t.phase
    ts = transfers.image_transfer_service(t.id)
    t = wait("transfer %s ready" % t.id,
             lambda: (lambda x: x if x.phase != types.ImageTransferPhase.INITIALIZING else None)(ts.get()))
    assert t.phase == types.ImageTransferPhase.TRANSFERRING, t.phase
    assert urlparse(t.transfer_url).port != urlparse(t.proxy_url).port
    return t, ts


def finish(ts, phase=types.ImageTransferPhase.FINISHED_SUCCESS):
    ts.finalize()
    t = wait("the transfer to end", lambda: (lambda x: x if x.phase in (
        types.ImageTransferPhase.FINISHED_SUCCESS, types.ImageTransferPhase.FINISHED_FAILURE) else None)(ts.get()))
    assert t.phase == phase, (t.phase, phase)
    return t


def https(url):
    u = urlparse(url)
    c = http.client.HTTPSConnection(u.hostname, u.port, context=ssl.create_default_context(cafile=CA))
    return c, u.path


def request(url, method, path_suffix="", body=None, headers=None):
    c, path = https(url)
    try:
        c.request(method, path + path_suffix, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


# ---- an image with data, zeros and holes -----------------------------------------------
src = os.path.join(WORK, "src.qcow2")
run("qemu-img", "create", "-q", "-f", "qcow2", src, "64M")
run("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 1M", "-c", "write -P 0xcd 10M 3M",
    "-c", "write -z 20M 1M", "-c", "write -P 0x11 63M 1M", src)
step("source image made (64 MiB virtual, 5 MiB of data)")

# ---- upload into a thin COW disk through the host (transfer_url) -----------------------
d1 = new_disk("up1", 64 * MiB)
t, ts = start(d1, types.ImageTransferDirection.UPLOAD)
step("upload transfer ready: host %s" % urlparse(t.transfer_url).netloc)
print("TICKET_URL %s" % t.transfer_url, flush=True)
status, body = request(t.transfer_url, "OPTIONS")
opts = json.loads(body)
assert status == 200 and "zero" in opts["features"] and opts["max_writers"] >= 1, (status, body)
# imageio's local service: the host names its unix socket; only root may reach it, and
# the ticket is checked there as on the TCP port. The proxy never passes it on.
sock = opts.get("unix_socket")
assert sock and os.path.isabs(sock), opts
st = os.stat(sock)
assert (st.st_mode & 0o777) == 0o600 and (os.stat(os.path.dirname(sock)).st_mode & 0o777) == 0o700, \
    (oct(st.st_mode), sock)


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def local_request(path, method, headers=None):
    c = UnixHTTP(sock)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


tpath = urlparse(t.transfer_url).path
status, body = local_request(tpath, "OPTIONS")
assert status == 200 and json.loads(body)["max_writers"] == opts["max_writers"], (status, body)
guessed, body = local_request(tpath[:-1] + ("0" if tpath[-1] != "0" else "1"), "OPTIONS")
assert guessed == 403, (guessed, body)
status, body = request(t.proxy_url, "OPTIONS")
assert status == 200 and "unix_socket" not in json.loads(body) and json.loads(body)["max_writers"] >= 1, body
step("local service at %s (0600 in 0700): ticket accepted, guessed ticket %d; the proxy hides it" % (sock, guessed))
client.upload(src, t.transfer_url, CA)
step("uploaded through transfer_url")
finish(ts)
d1 = disks.disk_service(d1.id).get()
assert d1.status == types.DiskStatus.OK, d1.status
step("finalized: disk up1 ok, actual size %d" % d1.actual_size)

# ---- download it again through the proxy; compare; checksums ---------------------------
t, ts = start(d1, types.ImageTransferDirection.DOWNLOAD)
out = os.path.join(WORK, "down.qcow2")
client.download(t.proxy_url, out, CA, fmt="qcow2")
run("qemu-img", "compare", src, out)
step("downloaded through proxy_url: qemu-img compare identical")
status, body = request(t.transfer_url, "GET", "/checksum")
remote = json.loads(body)
local = client.checksum(src)
assert status == 200 and remote["checksum"] == local["checksum"], (remote, local)
status, body = request(t.proxy_url, "GET", "/checksum")
assert status == 200 and json.loads(body)["checksum"] == local["checksum"], body
step("checksum %s... equals the client's (host and proxy)" % local["checksum"][:16])
status, body = request(t.transfer_url, "GET", "/extents")
ext = json.loads(body)
assert ext[-1]["start"] + ext[-1]["length"] == 64 * MiB and any(e["zero"] for e in ext), ext
status, body = request(t.transfer_url, "GET", "/extents?context=dirty")
assert status == 404, (status, body)
# A read ticket does not write.
status, body = request(t.transfer_url, "PUT", body=b"x" * 10,
                       headers={"Content-Range": "bytes 0-9/*", "Content-Length": "10"})
assert status == 403, (status, body)
step("a download ticket refuses a PUT: %d %s" % (status, body.decode().strip()[:80]))
# Past the end.
status, body = request(t.transfer_url, "GET", headers={"Range": "bytes=%d-%d" % (64 * MiB, 64 * MiB + 9)})
assert status == 416, (status, body)
step("a range past the end: %d" % status)
finish(ts)
# The ticket is gone with the transfer: reusing it is refused.
status, body = request(t.transfer_url, "GET", headers={"Range": "bytes=0-9"})
assert status == 403, (status, body)
status, body = request(t.proxy_url, "GET", headers={"Range": "bytes=0-9"})
assert status == 403, (status, body)
step("the ended transfer's ticket is refused by host and proxy")

# ---- guessed tickets ---------------------------------------------------------------------
u = urlparse(t.transfer_url)
for guess in ["00000000-0000-0000-0000-000000000000", u.path.split("/")[-1][:-1] + "0", "*"]:
    status, body = request("https://%s/images/%s" % (u.netloc, guess), "GET", headers={"Range": "bytes=0-9"})
    assert status in (400, 403, 405), (guess, status, body)
step("guessed tickets refused")

# ---- upload through the proxy into a raw disk (format conversion by qemu-nbd) ---------
d2 = new_disk("up2", 64 * MiB, fmt=types.DiskFormat.RAW)
t, ts = start(d2, types.ImageTransferDirection.UPLOAD)
client.upload(src, t.proxy_url, CA)
finish(ts)
t, ts = start(disks.disk_service(d2.id).get(), types.ImageTransferDirection.DOWNLOAD)
out2 = os.path.join(WORK, "down2.raw")
client.download(t.transfer_url, out2, CA, fmt="raw")
finish(ts)
run("qemu-img", "compare", src, out2)
step("qcow2 uploaded through the proxy into a raw disk, downloaded raw: identical")

# ---- overlapping writes: the last wins -----------------------------------------------------
d3 = new_disk("up3", 8 * MiB)
t, ts = start(d3, types.ImageTransferDirection.UPLOAD)
for data, off in [(b"A" * 8192, 0), (b"B" * 4096, 4096)]:
    status, body = request(t.transfer_url, "PUT", body=data, headers={
        "Content-Range": "bytes %d-%d/*" % (off, off + len(data) - 1), "Content-Length": str(len(data))})
    assert status == 200, (status, body)
status, body = request(t.transfer_url, "GET", headers={"Range": "bytes=0-8191"})
assert status == 206 and body == b"A" * 4096 + b"B" * 4096, (status, body[:16])
# Past the ticket's end, and a Content-Range that does not match the body.
status, body = request(t.transfer_url, "PUT", body=b"x" * 10, headers={
    "Content-Range": "bytes %d-%d/*" % (8 * MiB - 5, 8 * MiB + 4), "Content-Length": "10"})
assert status == 416, (status, body)
status, body = request(t.transfer_url, "PUT", body=b"x" * 10, headers={
    "Content-Range": "bytes 0-99/*", "Content-Length": "10"})
assert status == 400, (status, body)
status, body = request(t.transfer_url, "PATCH", body=b'{"op": "explode"}',
                       headers={"Content-Type": "application/json"})
assert status == 400, (status, body)
step("overlapping writes: the last wins; past the end 416; bad Content-Range/PATCH 400")

# ---- a client that disconnects half-way ----------------------------------------------------
c, path = https(t.transfer_url)
c.putrequest("PUT", path)
c.putheader("Content-Range", "bytes 0-%d/*" % (4 * MiB - 1))
c.putheader("Content-Length", str(4 * MiB))
c.endheaders()
c.send(b"C" * MiB)
c.sock.shutdown(socket.SHUT_RDWR)
c.close()
time.sleep(0.5)
status, body = request(t.transfer_url, "GET", headers={"Range": "bytes=0-8191"})
assert status == 206, status
step("a client disconnected half-way; the transfer is %s" % ts.get().phase)
assert ts.get().phase == types.ImageTransferPhase.TRANSFERRING
# Resumable: the same ticket takes the rest. Sent with flush=n and never flushed: what
# qemu-nbd holds of the qcow2's metadata must reach the disk when the transfer ends
# (qemu-nbd stopped with SIGTERM, as systemd stops VDSM's; a SIGKILL loses it).
status, _ = request(t.transfer_url, "PUT", "?flush=n", body=b"D" * (4 * MiB), headers={
    "Content-Range": "bytes 0-%d/*" % (4 * MiB - 1), "Content-Length": str(4 * MiB)})
assert status == 200, status
finish(ts)
t, ts = start(disks.disk_service(d3.id).get(), types.ImageTransferDirection.DOWNLOAD)
status, body = request(t.transfer_url, "GET", headers={"Range": "bytes=%d-%d" % (4 * MiB - 4, 4 * MiB + 3)})
assert body == b"DDDD\0\0\0\0", body
finish(ts)
step("the transfer went on after the disconnect and finished: data as written last")

# ---- inactivity: paused by the system, resumed, cancelled -> the disk goes -----------------
d4 = new_disk("up4", 8 * MiB)
t, ts = start(d4, types.ImageTransferDirection.UPLOAD, inactivity_timeout=3,
              timeout_policy=types.ImageTransferTimeoutPolicy.PAUSE)
wait("paused by the system", lambda: ts.get().phase == types.ImageTransferPhase.PAUSED_SYSTEM, timeout=30)
status, _ = request(t.transfer_url, "OPTIONS")
assert status == 403, status
step("no client activity for 3 s: paused_system, its ticket refused")
ts.resume()
t = wait("resumed", lambda: (lambda x: x if x.phase == types.ImageTransferPhase.TRANSFERRING else None)(ts.get()))
status, _ = request(t.transfer_url, "OPTIONS")
assert status == 200, status
ts.cancel()
wait("the cancelled upload's disk to go", lambda: not [x for x in disks.list() if x.id == d4.id])
step("resumed with a new ticket, then cancelled: the disk is removed")
d5 = new_disk("up5", 8 * MiB)
t, ts = start(d5, types.ImageTransferDirection.UPLOAD, inactivity_timeout=2,
              timeout_policy=types.ImageTransferTimeoutPolicy.CANCEL)
wait("cancelled by the system", lambda: ts.get().phase in (
    types.ImageTransferPhase.FINISHED_CLEANUP, types.ImageTransferPhase.CANCELLED_SYSTEM), timeout=30)
wait("its disk to go", lambda: not [x for x in disks.list() if x.id == d5.id])
step("timeout_policy cancel: cancelled by the system, disk removed")

# ---- an ISO that is not an ISO; a real ISO --------------------------------------------------
junk = os.path.join(WORK, "junk.iso")
with open(junk, "wb") as f:
    f.write(os.urandom(MiB))
d6 = new_disk("junk.iso", MiB, fmt=types.DiskFormat.RAW, content=types.DiskContentType.ISO)
t, ts = start(d6, types.ImageTransferDirection.UPLOAD)
client.upload(junk, t.transfer_url, CA)
finish(ts, types.ImageTransferPhase.FINISHED_FAILURE)
wait("the bad ISO's disk to go", lambda: not [x for x in disks.list() if x.id == d6.id])
step("an upload marked ISO that is not one: finished_failure, disk removed")
iso_dir = os.path.join(WORK, "isodir")
os.makedirs(iso_dir, exist_ok=True)
with open(os.path.join(iso_dir, "hello.txt"), "w") as f:
    f.write("hello from an ISO\n")
iso = os.path.join(WORK, "small.iso")
run("xorriso", "-as", "mkisofs", "-quiet", "-V", "HALYARD", "-o", iso, iso_dir)
size = os.path.getsize(iso)
d7 = new_disk("small.iso", max(size, MiB), fmt=types.DiskFormat.RAW, content=types.DiskContentType.ISO)
t, ts = start(d7, types.ImageTransferDirection.UPLOAD)
client.upload(iso, t.transfer_url, CA)
finish(ts)
assert disks.disk_service(d7.id).get().content_type == types.DiskContentType.ISO
step("an ISO uploaded: content_type iso, ok")

# ---- a VM boots from an uploaded ISO; its CD changes while it runs -------------------------
size = os.path.getsize(BOOT_ISO)
d8 = new_disk("boot.iso", size, fmt=types.DiskFormat.RAW, content=types.DiskContentType.ISO)
t, ts = start(d8, types.ImageTransferDirection.UPLOAD)
client.upload(BOOT_ISO, t.proxy_url, CA)
finish(ts)
step("the bootable ISO uploaded (%d KiB)" % (size >> 10))
vms = system.vms_service()
vm = vms.add(types.Vm(name=VM_NAME, cluster=types.Cluster(name="Default"), template=types.Template(name="Blank"),
                      memory=256 * MiB, os=types.OperatingSystem(boot=types.Boot(devices=[types.BootDevice.CDROM]))))
vs = vms.vm_service(vm.id)
consoles = vs.graphics_consoles_service()
consoles.add(types.GraphicsConsole(protocol=types.GraphicsType.VNC))
refused("a second VNC console", lambda: consoles.add(types.GraphicsConsole(protocol=types.GraphicsType.VNC)), 409)
cds = vs.cdroms_service()
cd = cds.list()[0]
assert cd.file is None, cd.file
refused("a data disk in the CD-ROM", lambda: cds.cdrom_service(cd.id).update(
    types.Cdrom(file=types.File(id=d1.id))), 400)
refused("changing the CD of a VM that is down now", lambda: cds.cdrom_service(cd.id).update(
    types.Cdrom(file=types.File(id=d8.id)), current=True), 409)
cds.cdrom_service(cd.id).update(types.Cdrom(file=types.File(id=d8.id)))
assert cds.list()[0].file.id == d8.id
vs.start()
wait("the VM running", lambda: vs.get().status in (types.VmStatus.UP, types.VmStatus.POWERING_UP), timeout=180)
console = os.path.join(CONSOLE_DIR, "%s.log" % vm.id)
wait("the guest booted from the CD to print its ready line",
     lambda: os.path.exists(console) and "HALYARD-GUEST ready" in open(console, errors="replace").read(),
     timeout=180)
step("VM %s booted from the uploaded ISO in its CD-ROM (its console shows the guest ready)" % VM_NAME)

# ---- its VNC console: a ticket lets a VNC client in; a wrong or expired one does not ---------
con = wait("the VNC console's port", lambda: (lambda cs: cs[0] if cs and cs[0].port else None)(
    consoles.list(current=True)))
assert con.protocol == types.GraphicsType.VNC and con.address, con.address


def snapshot(password, name):
    pwfile = os.path.join(WORK, name + ".pw")
    with open(pwfile, "wb") as f:
        f.write(subprocess.run(["vncpasswd", "-f"], input=password.encode(), capture_output=True,
                               check=True).stdout)
    out = os.path.join(WORK, name + ".jpg")
    r = subprocess.run(["timeout", "30", "vncsnapshot", "-quiet", "-passwd", pwfile,
                        "%s::%d" % (con.address, con.port), out], capture_output=True, text=True)
    return r.returncode == 0 and os.path.exists(out), out, (r.stdout + r.stderr).strip()


def distinct_colours(jpg):
    ppm = subprocess.run(["djpeg", "-pnm", jpg], capture_output=True, check=True).stdout
    # P6 header: magic, width height, maxval, then RGB triples.
    parts = ppm.split(b"\n", 3)
    data = parts[3]
    return len({data[i:i + 3] for i in range(0, len(data) - 2, 3 * 7)})


ok, _, msg = snapshot("guessed1", "none")
assert not ok, "a VNC client got in before any ticket"
step("before any ticket, a VNC client is refused: %s" % msg[-80:])
cs = consoles.console_service(con.id)
t = cs.ticket()
assert t.value and t.expiry == 120, (t.value, t.expiry)
ok, jpg, msg = snapshot(t.value, "ticket")
assert ok, "the ticket did not let the VNC client in: %s" % msg
colours = distinct_colours(jpg)
assert colours > 2, "the guest's screen is blank (%d colours)" % colours
step("with the ticket a VNC client took a screenshot of the guest's screen: %d colours, not a blank frame" % colours)
ok, _, msg = snapshot(t.value[::-1] + "x", "wrong")
assert not ok, "a wrong password got in"
t2 = cs.ticket(ticket=types.Ticket(expiry=2))
time.sleep(3)
ok, _, msg = snapshot(t2.value, "expired")
assert not ok, "an expired ticket got in"
step("a wrong password and an expired ticket are refused")
vv = cs.remote_viewer_connection_file()
assert "[virt-viewer]" in vv and "type=vnc" in vv and "port=%d" % con.port in vv and "password=" in vv, vv
step("remote_viewer_connection_file: a console.vv for remote-viewer")


def live_cd_source():
    x = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", VM_NAME], capture_output=True, text=True,
                       check=True).stdout
    i = x.index("device='cdrom'")
    disk = x[i:x.index("</disk>", i)]
    m = [l for l in disk.splitlines() if "<source file=" in l]
    return m[0].split("'")[1] if m else None


assert d8.id in (live_cd_source() or ""), live_cd_source()
cds.cdrom_service(cd.id).update(types.Cdrom(file=types.File(id=d7.id)), current=True)
assert d7.id in (live_cd_source() or ""), live_cd_source()
assert cds.cdrom_service(cd.id).get(current=True).file.id == d7.id
assert cds.list()[0].file.id == d8.id, "current=true changed the next run's CD"
cds.cdrom_service(cd.id).update(types.Cdrom(file=types.File(id="")), current=True)
assert live_cd_source() is None, live_cd_source()
assert cds.cdrom_service(cd.id).get(current=True).file is None
step("the running VM's CD changed to small.iso, then ejected (libvirt's live XML agrees); the next run keeps boot.iso")
vs.stop()
wait("the VM down", lambda: vs.get().status == types.VmStatus.DOWN, timeout=120)
vs.remove()

# ---- refusals of the API -------------------------------------------------------------------
refused("a transfer of a locked disk", lambda: [
    transfers.add(types.ImageTransfer(disk=types.Disk(id=d1.id), direction=types.ImageTransferDirection.DOWNLOAD)),
    transfers.add(types.ImageTransfer(disk=types.Disk(id=d1.id), direction=types.ImageTransferDirection.DOWNLOAD))], 409)
for x in transfers.list():
    if x.phase == types.ImageTransferPhase.TRANSFERRING or x.phase == types.ImageTransferPhase.INITIALIZING:
        xs = transfers.image_transfer_service(x.id)
        wait("ready", lambda: xs.get().phase != types.ImageTransferPhase.INITIALIZING)
        xs.finalize()
refused("format cow of a raw disk", lambda: transfers.add(types.ImageTransfer(
    disk=types.Disk(id=d2.id), direction=types.ImageTransferDirection.DOWNLOAD, format=types.DiskFormat.COW)), 400)
refused("a shallow transfer", lambda: transfers.add(types.ImageTransfer(
    disk=types.Disk(id=d2.id), direction=types.ImageTransferDirection.DOWNLOAD, shallow=True)), 400)
refused("an unknown disk", lambda: transfers.add(types.ImageTransfer(
    disk=types.Disk(id="00000000-0000-0000-0000-00000000abcd"))), 404)
refused("an ISO disk in qcow2", lambda: disks.add(types.Disk(
    name="bad.iso", format=types.DiskFormat.COW, provisioned_size=MiB, content_type=types.DiskContentType.ISO,
    storage_domains=[types.StorageDomain(name="tdata")])), 400)
listed = transfers.list()
assert len(listed) >= 8 and all(x.disk is not None for x in listed), len(listed)
step("%d transfers listed" % len(listed))
conn.close()
print("TRANSFERS OK", flush=True)
