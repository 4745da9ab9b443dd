"""The SDK flow of the Manager tests, with the unmodified ovirt-engine-sdk-python.

Environment: HALYARD_URL, HALYARD_CA, HALYARD_PASSWORD, HALYARD_HOST_NAME,
HALYARD_KERNEL, HALYARD_INITRD. Prints one line per step; exits non-zero on failure.
"""
import os
import sys
import time

import ovirtsdk4 as sdk
import ovirtsdk4.types as types

URL = os.environ["HALYARD_URL"]
CA = os.environ["HALYARD_CA"]
PW = os.environ["HALYARD_PASSWORD"]
HOST = os.environ["HALYARD_HOST_NAME"]
VM = os.environ.get("HALYARD_VM_NAME", "sdk-vm")


def step(msg):
    print(msg, flush=True)


def wait(what, fn, timeout=180, every=0.5):
    t0 = time.time()
    while True:
        v = fn()
        if v:
            return v
        if time.time() - t0 > timeout:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(every)


# Wrong password: an authentication error, not a crash.
try:
    sdk.Connection(url=URL, username="admin@internal", password="wrong-" + PW, ca_file=CA).test(raise_exception=True)
    raise AssertionError("a wrong password was accepted")
except sdk.AuthError as e:
    step("wrong password refused: %s" % e)

conn = sdk.Connection(url=URL, username="admin@internal", password=PW, ca_file=CA)
assert conn.test(raise_exception=True)
system = conn.system_service()
api = system.get()
step("connected to %s %s" % (api.product_info.name, api.product_info.version.full_version))
assert api.special_objects.blank_template.id == "00000000-0000-0000-0000-000000000000"

dcs = system.data_centers_service().list()
clusters = system.clusters_service().list()
step("data centers %s, clusters %s" % ([d.name for d in dcs], [c.name for c in clusters]))
assert [c.name for c in clusters] == ["Default"]
cluster = clusters[0]
assert conn.follow_link(cluster.data_center).name == "Default"

# The registered host: pending approval, then approved and up.
hosts = system.hosts_service()
h = wait("the host to register", lambda: (hosts.list(search="name=%s" % HOST) or [None])[0], timeout=60)
step("host %s is %s" % (h.name, h.status))
assert h.status == types.HostStatus.PENDING_APPROVAL
hosts.host_service(h.id).approve(cluster=types.Cluster(name="Default"))
h = wait("the host to be up", lambda: (lambda x: x if x.status == types.HostStatus.UP else None)(hosts.host_service(h.id).get()))
step("host up: %d MiB, %d threads" % (h.memory >> 20, h.cpu.topology.threads))
try:
    hosts.host_service(h.id).approve()
    raise AssertionError("approving an approved host worked")
except sdk.Error as e:
    step("second approve refused: %s" % e.code)

# A VM from Blank with direct kernel boot of the test guest.
vms = system.vms_service()
vm = vms.add(
    types.Vm(
        name=VM,
        cluster=types.Cluster(name="Default"),
        template=types.Template(name="Blank"),
        memory=256 * 2**20,
        cpu=types.Cpu(topology=types.CpuTopology(sockets=1, cores=1, threads=1)),
        os=types.OperatingSystem(
            type="other_linux",
            kernel=os.environ["HALYARD_KERNEL"],
            initrd=os.environ["HALYARD_INITRD"],
            cmdline="console=ttyS0 quiet",
        ),
    )
)
step("vm %s added: %s" % (vm.name, vm.status))
assert vm.status == types.VmStatus.DOWN
assert [v.name for v in vms.list(search="name=%s*" % VM[:-2])] == [VM]
assert vms.list(search='name="no such vm"') == []
vm_service = vms.vm_service(vm.id)
vm_service.nics_service().add(types.Nic(name="nic1", interface=types.NicInterface.VIRTIO))
assert [n.name for n in vm_service.nics_service().list()] == ["nic1"]
assert conn.follow_link(vm.cluster).name == "Default"
# follow= embeds linked objects in one request
fv = vms.list(search="name=%s" % VM, follow="nics,cluster")[0]
assert [n.name for n in fv.nics] == ["nic1"], fv.nics
assert fv.cluster.name == "Default"
assert vm_service.get(follow="nics").nics[0].interface == types.NicInterface.VIRTIO
try:
    vms.list(follow="no_such_link")
    raise AssertionError("an unknown follow link was accepted")
except sdk.Error as e:
    assert "400" in str(e) or "follow" in str(e), e
assert vm_service.get().cpu.topology.cores == 1

t0 = time.time()
vm_service.start()
vm = wait("the VM to be up", lambda: (lambda x: x if x.status == types.VmStatus.UP else None)(vm_service.get()))
step("vm up after %.1f s on %s" % (time.time() - t0, conn.follow_link(vm.host).name))
print("VM_ID=%s" % vm.id, flush=True)

# Errors: start of a running VM, unknown ids.
try:
    vm_service.start()
    raise AssertionError("starting a running VM worked")
except sdk.Error as e:
    assert e.code == 409, e
    step("start of a running VM refused: %s" % e)
try:
    vms.vm_service("11111111-2222-3333-4444-555555555555").get()
    raise AssertionError("unknown VM found")
except sdk.NotFoundError as e:
    step("unknown id: %s" % e.code)

if os.environ.get("HALYARD_KEEP_VM"):
    # The caller continues with the running VM (host failure test).
    conn.close()
    sys.exit(0)

vm_service.stop()
wait("the VM to be down", lambda: vm_service.get().status == types.VmStatus.DOWN)
step("vm stopped")
vm_service.remove()
wait("the VM to be gone", lambda: not vms.list(search="name=%s" % VM))
step("vm removed")

evs = [e.description for e in system.events_service().list(max=50)]
assert any("was started by admin@internal" in e for e in evs), evs
assert any("powered off" in e for e in evs), evs
jobs = system.jobs_service().list()
assert any(j.status == types.JobStatus.FINISHED for j in jobs)
step("events and jobs recorded (%d events)" % len(evs))
conn.close()
print("FLOW OK", flush=True)
