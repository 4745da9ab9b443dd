"""Migrates a VM with the unmodified oVirt SDK: vm_service.migrate() to a named host or
where the Manager chooses, or cancel_migration() once it runs. Waits for the end and
prints the host the VM runs on.

env: HALYARD_URL, HALYARD_CA, HALYARD_PASSWORD, HALYARD_VM_NAME,
     HALYARD_TO (a host name, or empty: the scheduler chooses),
     HALYARD_CANCEL=1 to cancel it half-way instead."""

import os
import sys
import time

import ovirtsdk4 as sdk
import ovirtsdk4.types as types

conn = sdk.Connection(url=os.environ["HALYARD_URL"], username="admin@internal",
                      password=os.environ["HALYARD_PASSWORD"], ca_file=os.environ["HALYARD_CA"])
system = conn.system_service()
vms = system.vms_service()
vm = vms.list(search="name=%s" % os.environ["HALYARD_VM_NAME"])[0]
vm_service = vms.vm_service(vm.id)
hosts = system.hosts_service()


def host_name(h):
    return hosts.host_service(h.id).get().name if h is not None else None


before = host_name(vm_service.get().host)
to = os.environ.get("HALYARD_TO", "")
t0 = time.monotonic()
if to:
    vm_service.migrate(host=types.Host(name=to))
else:
    vm_service.migrate()
print("migrate sent: %.2f s, status %s" % (time.monotonic() - t0, vm_service.get().status), flush=True)

if os.environ.get("HALYARD_CANCEL") == "1":
    vm_service.cancel_migration()
    print("cancel sent", flush=True)

deadline = time.monotonic() + 180
while True:
    v = vm_service.get()
    if v.status != types.VmStatus.MIGRATING:
        break
    if time.monotonic() > deadline:
        sys.exit("still migrating after 180 s")
    time.sleep(0.1)
after = host_name(v.host)
print("status %s on %s (was %s) after %.2f s" % (v.status, after, before, time.monotonic() - t0), flush=True)
if v.status != types.VmStatus.UP:
    sys.exit("not up")
if os.environ.get("HALYARD_CANCEL") == "1":
    if after != before:
        sys.exit("a cancelled migration moved the VM")
elif after == before:
    sys.exit("the VM did not move")
elif to and after != to:
    sys.exit("it went to %s, not %s" % (after, to))
events = [e.description for e in system.events_service().list(max=30)]
want = "Migration cancelled" if os.environ.get("HALYARD_CANCEL") == "1" else "Migration completed"
if not any(want in d for d in events):
    sys.exit("no %r event: %s" % (want, events))
print("MIGRATE OK host=%s" % after)
conn.close()
