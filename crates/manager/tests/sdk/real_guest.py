"""A real OS through the unmodified SDK, its unmodified examples and the unmodified
ovirt-imageio client (all from PyPI).

- upload_disk.py uploads the harness's Debian 12 image into a thin COW disk;
- a VM (q35 + OVMF) boots it with cloud-init: host name, a user, a password and an SSH
  key whose comment and the password carry shell metacharacters (they must arrive as
  text and run nothing);
- the guest agent reports the host name to the API (the time from start is printed);
- the guest's SSH server accepts the key, tried from the test's network namespace;
- the serial console shows the boot and a login prompt; a VNC client with a ticket sees
  the login screen (not a blank frame);
- an uploaded ISO put into the running VM's CD-ROM is seen by the guest;
- after a clean shutdown, download_disk.py downloads the disk and qemu-img compare finds
  it identical to the volume the guest wrote; checksum_disk.py agrees.

Environment: HALYARD_URL, HALYARD_CA, HALYARD_PASSWORD, HALYARD_HOST_NAME,
HALYARD_SD_PATH, HALYARD_WORK, HALYARD_IMAGE, HALYARD_SSH_KEY, HALYARD_NETNS,
HALYARD_GUEST_ADDR, HALYARD_NS_ADDR, HALYARD_SDIST_DIR, HALYARD_CONSOLE_DIR,
HALYARD_VM_NAME, HALYARD_CLI. Prints one line per step and REAL GUEST OK at the end.
"""
import base64
import hashlib
import http.client
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import time

import ovirtsdk4 as sdk
import ovirtsdk4.types as types
from ovirt_imageio import client

URL = os.environ["HALYARD_URL"]
CA = os.environ["HALYARD_CA"]
PW = os.environ["HALYARD_PASSWORD"]
HOST = os.environ["HALYARD_HOST_NAME"]
SD_PATH = os.environ["HALYARD_SD_PATH"]
WORK = os.environ["HALYARD_WORK"]
IMAGE = os.environ["HALYARD_IMAGE"]
KEY = os.environ["HALYARD_SSH_KEY"]
NETNS = os.environ["HALYARD_NETNS"]
GUEST = os.environ["HALYARD_GUEST_ADDR"]
NS_ADDR = os.environ["HALYARD_NS_ADDR"]
SDIST_DIR = os.environ["HALYARD_SDIST_DIR"]
CONSOLE_DIR = os.environ["HALYARD_CONSOLE_DIR"]
VM_NAME = os.environ["HALYARD_VM_NAME"]
CLI = os.environ["HALYARD_CLI"]
BASE = URL.split("/ovirt-engine")[0]
M_HOST, M_PORT = BASE[len("https://"):].rsplit(":", 1)
M_PORT = int(M_PORT)
SDK_VERSION = "4.6.3"
SDIST = "ovirt_engine_sdk_python-%s.tar.gz" % SDK_VERSION
SDIST_SHA256 = "9cf0242792b8910cb7b2decc3886db2ccfd779507e46ac1ce2a52573075fd3df"
DISK_ID = "5d1e6a3c-4b7e-4f9a-9c2e-0a1b2c3d4e5f"
T0 = time.time()
MiB = 1 << 20


def step(msg):
    print("[%6.1f] %s" % (time.time() - T0, msg), flush=True)


def wait(what, fn, timeout=120, every=0.5):
    t0 = time.time()
    while True:
        v = fn()
        if v:
            return v
        if time.time() - t0 > timeout:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(every)


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def refused(what, fn, code=None):
    try:
        fn()
    except sdk.Error as e:
        if code is not None:
            assert e.code == code, (what, e.code, str(e))
        step("%s refused: %s" % (what, str(e).splitlines()[0][:200]))
        return
    raise AssertionError("%s was accepted" % what)


# ---- the SDK's examples, unchanged (from the verified sdist) ------------------------------
def examples():
    path = os.path.join(SDIST_DIR, SDIST)

    def good():
        if not os.path.exists(path):
            return False
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest() == SDIST_SHA256

    if not good():
        os.makedirs(SDIST_DIR, exist_ok=True)
        tmp = os.path.join(SDIST_DIR, "download-%d" % os.getpid())
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "--dest", tmp, "ovirt-engine-sdk-python==%s" % SDK_VERSION], check=True, timeout=300)
        os.replace(os.path.join(tmp, SDIST), path)
        shutil.rmtree(tmp, ignore_errors=True)
        assert good(), "the sdist's SHA-256 is wrong"
    dest = os.path.join(WORK, "examples")
    shutil.rmtree(dest, ignore_errors=True)
    prefix = "ovirt_engine_sdk_python-%s/examples/" % SDK_VERSION
    with tarfile.open(path) as t:
        for m in t.getmembers():
            if m.isfile() and m.name.startswith(prefix):
                out = os.path.join(dest, m.name[len(prefix):])
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with t.extractfile(m) as src, open(out, "wb") as dst:
                    dst.write(src.read())
    home = os.path.join(WORK, "home")
    os.makedirs(os.path.join(home, ".config"), exist_ok=True)
    conf = os.path.join(home, ".config", "ovirt.conf")
    with open(conf, "w") as f:
        f.write("[halyard]\nengine_url = %s\nusername = admin@internal\npassword = %s\nsecure = yes\ncafile = %s\n"
                % (URL[: -len("/ovirt-engine/api")], PW, CA))
    os.chmod(conf, 0o600)
    return dest, home


EXDIR, HOME = examples()


def example(name, *args, timeout=600):
    env = dict(os.environ, HOME=HOME, PYTHONPATH=EXDIR, PYTHONUNBUFFERED="1")
    t0 = time.time()
    r = subprocess.run([sys.executable, os.path.join(EXDIR, name + ".py")] + list(args), cwd=WORK, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0, "%s failed (exit %d):\n%s" % (name, r.returncode, out[-3000:])
    return out, time.time() - t0


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
    name="rdata", type=types.StorageDomainType.DATA, host=types.Host(name=HOST),
    storage=types.HostStorage(type=types.StorageType.LOCALFS, path=SD_PATH)))
attached = system.data_centers_service().data_center_service(dc.id).storage_domains_service()
attached.add(types.StorageDomain(id=sd.id))
wait("the domain to be active",
     lambda: attached.storage_domain_service(sd.id).get().status == types.StorageDomainStatus.ACTIVE)
step("domain rdata active")

# ---- upload_disk.py: the Debian image into a thin COW disk ---------------------------------
info = json.loads(run("qemu-img", "info", "--output=json", IMAGE))
out, secs = example("upload_disk", "-c", "halyard", IMAGE, "--sd-name", "rdata", "--disk-format", "qcow2",
                    "--disk-sparse", "--disk-id", DISK_ID)
assert "Upload completed successfully" in out, out[-2000:]
disks = system.disks_service()
disk = disks.disk_service(DISK_ID).get()
refused("a second disk with the same id", lambda: disks.add(types.Disk(
    id=DISK_ID, name="dup", format=types.DiskFormat.COW, provisioned_size=MiB,
    storage_domains=[types.StorageDomain(name="rdata")])), 409)
assert disk.format == types.DiskFormat.COW and disk.sparse and disk.status == types.DiskStatus.OK, disk.format
assert disk.provisioned_size == info["virtual-size"], (disk.provisioned_size, info["virtual-size"])
step("upload_disk.py: the Debian image (%d MiB virtual, %d MiB allocated) into a thin COW disk in %.1f s" % (
    info["virtual-size"] >> 20, os.path.getsize(IMAGE) >> 20, secs))

# ---- the VM: q35 + OVMF, the disk, a NIC on ovirtmgmt, a VNC console, cloud-init -----------
vms = system.vms_service()
vm = vms.add(types.Vm(name=VM_NAME, cluster=types.Cluster(name="Default"), template=types.Template(name="Blank"),
                      memory=1024 * MiB, cpu=types.Cpu(topology=types.CpuTopology(sockets=2, cores=1, threads=1)),
                      bios=types.Bios(type=types.BiosType.Q35_OVMF),
                      os=types.OperatingSystem(type="other_linux")))
vs = vms.vm_service(vm.id)
vs.disk_attachments_service().add(types.DiskAttachment(disk=types.Disk(id=DISK_ID), interface=types.DiskInterface.VIRTIO,
                                                       bootable=True, active=True))
profile = [p for p in system.vnic_profiles_service().list() if p.name == "ovirtmgmt"][0]
vs.nics_service().add(types.Nic(name="nic1", interface=types.NicInterface.VIRTIO,
                                vnic_profile=types.VnicProfile(id=profile.id)))
consoles = vs.graphics_consoles_service()
consoles.add(types.GraphicsConsole(protocol=types.GraphicsType.VNC))

with open(KEY + ".pub") as f:
    pub = f.read().strip()
KEY_LINE = pub + "$(touch /tmp/pwned-key);`touch /tmp/pwned-key2`|reboot"
MARK = secrets.token_hex(8)
ROOT_PW = "p'w\"$(touch /tmp/pwned-pw)`id`;%s" % MARK
print("ROOT_PASSWORD_MARK %s" % MARK, flush=True)
init = types.Initialization(
    host_name="halyard-debian.example.test",
    user_name="halyard",
    root_password=ROOT_PW,
    authorized_ssh_keys=KEY_LINE + "\n",
    timezone="Europe/Prague",
    dns_servers=NS_ADDR,
    dns_search="example.test",
    nic_configurations=[types.NicConfiguration(
        name="eth0", on_boot=True, boot_protocol=types.BootProtocol.STATIC,
        ip=types.Ip(version=types.IpVersion.V4, address=GUEST, netmask="255.255.255.0", gateway=NS_ADDR))],
    custom_script="write_files:\n  - path: /var/tmp/halyard-note.txt\n    content: \"written by cloud-init\\n\"\n",
)
# Refusals first: the VM's initialization is checked field by field.
refused("a host name with shell metacharacters", lambda: vs.update(types.Vm(
    initialization=types.Initialization(host_name="deb;reboot"))), 400)
refused("an authorized key that is no key", lambda: vs.update(types.Vm(
    initialization=types.Initialization(authorized_ssh_keys="hello world; reboot"))), 400)
refused("a static NIC without an address", lambda: vs.update(types.Vm(initialization=types.Initialization(
    nic_configurations=[types.NicConfiguration(name="eth0", on_boot=True,
                                               boot_protocol=types.BootProtocol.STATIC)]))), 400)
vs.update(types.Vm(initialization=init))
got = vs.get().initialization
assert got.host_name == "halyard-debian.example.test" and got.user_name == "halyard", got.host_name
assert got.root_password is None, "the API shows the root password"
assert got.nic_configurations[0].ip.address == GUEST, got.nic_configurations
step("the VM's initialization kept (root password never shown); bad fields refused")

t_start = time.time()
vs.start(use_cloud_init=True)
wait("the VM running", lambda: vs.get().status in (types.VmStatus.UP, types.VmStatus.POWERING_UP), timeout=180)
console = os.path.join(CONSOLE_DIR, "%s.log" % vm.id)

# ---- the serial console through the Manager: `halyard vms console`, from the first seconds ----
pwfile = os.path.join(WORK, "admin-password")
with open(os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    f.write(PW)
cli_env = dict(os.environ, HALYARD_URL=BASE, HALYARD_PASSWORD_FILE=pwfile, HALYARD_CA=CA)
serial_path = os.path.join(WORK, "serial.out")
serial_file = open(serial_path, "wb")
serial = subprocess.Popen([CLI, "vms", "console", VM_NAME], stdin=subprocess.PIPE, stdout=serial_file,
                          stderr=subprocess.PIPE, env=cli_env)


def serial_text():
    with open(serial_path, "rb") as f:
        return f.read().decode(errors="replace")


def ws_get(path, token=None, oversized=False):
    """A WebSocket handshake on the Manager's port: (status, first message or body).
    With oversized, after the first message it announces a 2 MiB frame (past the
    Manager's 1 MiB limit) and returns (status, True) if the Manager then ended the
    connection without waiting for that frame's payload."""
    ctx = ssl.create_default_context(cafile=CA)
    s = ctx.wrap_socket(socket.create_connection((M_HOST, M_PORT), timeout=15), server_hostname=M_HOST)
    key = base64.b64encode(os.urandom(16)).decode()
    head = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n"
            % (path, M_HOST, M_PORT, key))
    if token:
        head += "Authorization: Bearer %s\r\n" % token
    s.sendall((head + "\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        c = s.recv(4096)
        if not c:
            break
        buf += c
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 101:
        s.close()
        return status, rest.decode(errors="replace")

    def need(n):
        nonlocal rest
        while len(rest) < n:
            c = s.recv(4096)
            if not c:
                raise AssertionError("the WebSocket closed early")
            rest += c
        out, rest = rest[:n], rest[n:]
        return out

    b0, b1 = need(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(need(2), "big")
    elif n == 127:
        n = int.from_bytes(need(8), "big")
    payload = need(n)
    if oversized:
        # FIN + binary, masked, 64-bit length of 2 MiB; a few payload bytes only.
        s.sendall(bytes([0x82, 0x80 | 127]) + (2 << 20).to_bytes(8, "big") + os.urandom(4) + b"x" * 1024)
        s.settimeout(10)
        ended = False
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    ended = True
                    break
                rest += c
                if rest.startswith(b"\x88"):  # a close frame (nothing else follows the greeting)
                    ended = True
                    break
        except (socket.timeout, ConnectionResetError, ssl.SSLError):
            ended = not isinstance(sys.exc_info()[1], socket.timeout)
        s.close()
        return status, ended
    s.close()
    return status, payload


code, body = ws_get("/ovirt-engine/services/console/serial/%s" % vm.id)
assert code == 401, "the serial console without a token: %d %s" % (code, body)
code, body = ws_get("/ovirt-engine/services/console/serial/%s" % vm.id, token="not-a-token")
assert code == 401, "the serial console with a bad token: %d %s" % (code, body)
step("the serial console refuses callers without a valid token (401)")


def console_text():
    try:
        with open(console, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


seen_names = []


def fqdn():
    # qemu-ga may report the image's own name before cloud-init set the new one.
    v = vs.get()
    if v.fqdn and v.fqdn not in seen_names:
        seen_names.append(v.fqdn)
        step("the guest agent reports host name %s" % v.fqdn)
    return v.fqdn if v.fqdn and v.fqdn.startswith("halyard-debian") else None


name = wait("the guest agent to report the host name cloud-init set", fqdn, timeout=900, every=1)
t_agent = time.time() - t_start
step("the guest agent reports host name %s, %.1f s after start" % (name, t_agent))
wait("a login prompt on the serial console", lambda: "login:" in console_text(), timeout=300, every=1)
t_login = time.time() - t_start
text = console_text()
assert "Linux version" in text or "Booting" in text or "EFI stub" in text, text[:2000]
step("the serial console shows the boot (%d lines) and a login prompt, %.1f s after start" % (
    len(text.splitlines()), t_login))
print("TIMING start_to_agent_s=%.1f start_to_login_s=%.1f" % (t_agent, t_login), flush=True)
wait("the login prompt through `halyard vms console`", lambda: "login:" in serial_text(), timeout=120)
seen = serial_text()
assert any(x in seen for x in ("Linux version", "systemd", "[  OK  ]", "cloud-init")), seen[:3000]
second = subprocess.run([CLI, "vms", "console", VM_NAME], input=b"", capture_output=True, env=cli_env,
                        timeout=60)
assert second.returncode != 0 and b"in use" in second.stderr, second
prompts = seen.count("login:")
serial.stdin.write(b"\r")
serial.stdin.flush()
wait("a new login prompt after Enter on the serial console", lambda: serial_text().count("login:") > prompts,
     timeout=60)
serial.stdin.close()
assert serial.wait(timeout=30) == 0, serial.stderr.read()
serial_file.close()
step("`halyard vms console` showed the boot (%d lines) and a login prompt, answered Enter with a new one; "
     "a second session at the same time is refused (in use)" % len(seen.splitlines()))


# ---- SSH from the test's namespace with the key cloud-init installed -------------------------
def ssh(command, user="halyard", input=None, timeout=60, check=True):
    r = subprocess.run(["ip", "netns", "exec", NETNS, "ssh", "-i", KEY, "-o", "BatchMode=yes",
                        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "%s@%s" % (user, GUEST), command],
                       input=input, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError("ssh %r: exit %d: %s" % (command, r.returncode, (r.stdout + r.stderr)[-800:]))
    return r


def ssh_up():
    try:
        return ssh("true", check=False, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


wait("the guest's SSH server to accept the key", ssh_up, timeout=300, every=2)
t_ssh = time.time() - t_start


def cloud_init_done():
    # Its config stage restarts sshd (set-passwords): a refused connection is a retry.
    try:
        r = ssh("cloud-init status", check=False, timeout=30)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and "status: done" in r.stdout


wait("cloud-init's last stage (cloud-init status: done, over SSH)", cloud_init_done, timeout=400, every=3)
t_ready = time.time() - t_start
step("cloud-init finished %.1f s after start; SSH accepted the key %.1f s after start" % (t_ready, t_ssh))
print("TIMING start_to_cloud_init_done_s=%.1f start_to_ssh_s=%.1f" % (t_ready, t_ssh), flush=True)
r = ssh("hostname; id -un; cat ~/.ssh/authorized_keys; cat /var/tmp/halyard-note.txt; "
        "ls /tmp/pwned-key /tmp/pwned-key2 /tmp/pwned-pw 2>&1; true")
out = r.stdout
assert out.splitlines()[0].startswith("halyard-debian"), out
assert out.splitlines()[1] == "halyard", out
assert KEY_LINE in out, "the key's line did not arrive as text: %s" % out
assert "written by cloud-init" in out, out
assert out.count("No such file") == 3, "a metacharacter ran something: %s" % out
pw = ssh("sudo python3 -c \"import crypt, spwd, sys; pw = sys.stdin.read(); "
         "h = spwd.getspnam('halyard').sp_pwdp; print('PWOK' if crypt.crypt(pw, h) == h else 'PWBAD')\"",
         input=ROOT_PW).stdout
assert "PWOK" in pw, pw
step("SSH from namespace %s to %s with the key: host name, user, key line and password arrived as text; "
     "nothing ran" % (NETNS, GUEST))

# ---- the VNC console with a ticket shows the login screen ------------------------------------
con = wait("the VNC console's port", lambda: (lambda cs: cs[0] if cs and cs[0].port else None)(
    consoles.list(current=True)))


def snapshot(password, name):
    pwfile = os.path.join(WORK, name + ".pw")
    with open(pwfile, "wb") as f:
        f.write(subprocess.run(["vncpasswd", "-f"], input=password.encode(), capture_output=True,
                               check=True).stdout)
    out = os.path.join(WORK, name + ".jpg")
    r = subprocess.run(["timeout", "30", "vncsnapshot", "-quiet", "-passwd", pwfile,
                        "%s::%d" % (con.address, con.port), out], capture_output=True, text=True)
    return r.returncode == 0 and os.path.exists(out), out, (r.stdout + r.stderr).strip()


def colours(jpg):
    ppm = subprocess.run(["djpeg", "-pnm", jpg], capture_output=True, check=True).stdout
    data = ppm.split(b"\n", 3)[3]
    return len({data[i:i + 3] for i in range(0, len(data) - 2, 3 * 7)})


cs = consoles.console_service(con.id)
t = cs.ticket()
ok, jpg, msg = snapshot(t.value, "login")
assert ok, "the ticket did not let the VNC client in: %s" % msg
n = colours(jpg)
assert n > 2, "the login screen is a blank frame (%d colours)" % n
ok, _, msg = snapshot(t.value[::-1] + "x", "wrong")
assert not ok, "a wrong VNC password got in"
step("a VNC client with the ticket saw the login screen (%d colours; a blank frame has 1); a wrong one is refused" % n)

# ---- the VNC WebSocket proxy (noVNC's way in): one-time proxy tickets ----------------------
pt = cs.proxy_ticket()
assert pt.value and len(pt.value) >= 32, pt.value
code, first = ws_get("/ovirt-engine/services/websocket-proxy/%s" % pt.value)
assert code == 101 and first.startswith(b"RFB 003."), (code, first)
code, _ = ws_get("/ovirt-engine/services/websocket-proxy/%s" % pt.value)
assert code == 403, "a used proxy ticket was taken again: %d" % code
code, _ = ws_get("/ovirt-engine/services/websocket-proxy/%s" % ("0" * 64))
assert code == 403, "a guessed proxy ticket was taken: %d" % code
step("the WebSocket proxy relayed the console's RFB greeting (%r); a used or guessed ticket is refused (403)"
     % first.strip())
code, ended = ws_get("/ovirt-engine/services/websocket-proxy/%s" % cs.proxy_ticket().value, oversized=True)
assert code == 101 and ended, "a frame past the 1 MiB limit was waited for (%d, ended=%s)" % (code, ended)
step("a WebSocket frame announcing 2 MiB (past the 1 MiB limit) ends the connection at once")

# ---- an ISO into the running VM's CD-ROM: the guest sees it ----------------------------------
iso_dir = os.path.join(WORK, "iso")
os.makedirs(iso_dir, exist_ok=True)
with open(os.path.join(iso_dir, "hello.txt"), "w") as f:
    f.write("hello from Halyard's CD\n")
iso = os.path.join(WORK, "hello.iso")
run("xorriso", "-as", "mkisofs", "-quiet", "-V", "HALYARDCD", "-J", "-R", "-o", iso, iso_dir)
d = disks.add(types.Disk(name="hello.iso", format=types.DiskFormat.RAW, provisioned_size=os.path.getsize(iso),
                         content_type=types.DiskContentType.ISO, storage_domains=[types.StorageDomain(name="rdata")]))
wait("hello.iso ok", lambda: disks.disk_service(d.id).get().status == types.DiskStatus.OK)
transfers = system.image_transfers_service()
tr = transfers.add(types.ImageTransfer(disk=types.Disk(id=d.id), direction=types.ImageTransferDirection.UPLOAD,
                                       format=types.DiskFormat.RAW))
trs = transfers.image_transfer_service(tr.id)
tr = wait("the ISO transfer ready", lambda: (lambda x: x if x.phase == types.ImageTransferPhase.TRANSFERRING
                                                     else None)(trs.get()))
client.upload(iso, tr.proxy_url, CA)
trs.finalize()
wait("the ISO upload finished", lambda: trs.get().phase == types.ImageTransferPhase.FINISHED_SUCCESS)
cds = vs.cdroms_service()
cd = cds.list()[0]
cds.cdrom_service(cd.id).update(types.Cdrom(file=types.File(id=d.id)), current=True)


def guest_sees_cd():
    r = ssh("for d in /dev/sr*; do sudo blkid -o value -s LABEL $d; done; true", check=False)
    return "HALYARDCD" in r.stdout


wait("the guest to see the new CD", guest_sees_cd, timeout=60, every=2)
r = ssh("for d in /dev/sr*; do if [ \"$(sudo blkid -o value -s LABEL $d)\" = HALYARDCD ]; then "
        "sudo mount -o ro $d /mnt && cat /mnt/hello.txt; sudo umount /mnt; fi; done")
assert "hello from Halyard's CD" in r.stdout, r.stdout
step("the running VM's CD changed to hello.iso: the guest reads hello.txt from it")

# ---- the guest writes, shuts down cleanly; download_disk.py and checksum_disk.py ------------
ssh("echo 'the last thing the guest wrote' | sudo tee /var/tmp/last.txt >/dev/null; sync")
vs.shutdown()
wait("the VM down after its shutdown", lambda: vs.get().status == types.VmStatus.DOWN, timeout=300, every=1)
step("the guest shut down through its agent")


def volume_of(disk_id):
    for root, dirs, files in os.walk(SD_PATH):
        if os.path.basename(root) == disk_id:
            vols = [f for f in files if not f.endswith((".meta", ".lease"))]
            assert len(vols) == 1, vols
            return os.path.join(root, vols[0])
    raise AssertionError("no volume of disk %s" % disk_id)


vol = volume_of(DISK_ID)
dst = os.path.join(WORK, "downloaded.qcow2")
out, secs = example("download_disk", "-c", "halyard", DISK_ID, dst)
assert "Download completed successfully" in out, out[-2000:]
r = subprocess.run(["qemu-img", "compare", vol, dst], capture_output=True, text=True)
assert r.returncode == 0, "the download differs from the disk: %s" % (r.stdout + r.stderr)
r = subprocess.run(["qemu-img", "compare", IMAGE, dst], capture_output=True, text=True)
assert r.returncode == 1, "the guest wrote nothing? %s" % (r.stdout + r.stderr)
step("download_disk.py in %.1f s: identical to the volume the guest wrote last (and not to the upload)" % secs)
out, _ = example("checksum_disk", "-c", "halyard", DISK_ID)
got = json.loads(out[out.find("{"):out.rfind("}") + 1])
want = client.checksum(dst)
assert got["checksum"] == want["checksum"] and got["algorithm"] == want["algorithm"], (got, want)
step("checksum_disk.py agrees with the imageio client's checksum of the download (%s)" % want["algorithm"])

vs.remove()
conn.close()
print("REAL GUEST OK", flush=True)
