"""Prepares the all-in-one for the Ansible playbook with the unmodified SDK: the host
approved and up, a data domain attached to data center Default and active.

Environment: HALYARD_URL, HALYARD_CA, HALYARD_PASSWORD, HALYARD_HOST_NAME,
HALYARD_SD_PATH. Prints SETUP OK at the end.
"""
import os
import time

import ovirtsdk4 as sdk
import ovirtsdk4.types as types

HOST = os.environ["HALYARD_HOST_NAME"]


def wait(what, fn, timeout=120):
    t0 = time.time()
    while True:
        v = fn()
        if v:
            return v
        if time.time() - t0 > timeout:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.3)


conn = sdk.Connection(url=os.environ["HALYARD_URL"], username="admin@internal",
                      password=os.environ["HALYARD_PASSWORD"], ca_file=os.environ["HALYARD_CA"])
system = conn.system_service()
hosts = system.hosts_service()
h = wait("the host to register", lambda: (hosts.list(search="name=%s" % HOST) or [None])[0])
if h.status == types.HostStatus.PENDING_APPROVAL:
    hosts.host_service(h.id).approve(cluster=types.Cluster(name="Default"))
wait("the host to be up", lambda: hosts.host_service(h.id).get().status == types.HostStatus.UP)
sd = system.storage_domains_service().add(types.StorageDomain(
    name="data1", type=types.StorageDomainType.DATA, host=types.Host(name=HOST),
    storage=types.HostStorage(type=types.StorageType.LOCALFS, path=os.environ["HALYARD_SD_PATH"])))
dc = system.data_centers_service().list(search="name=Default")[0]
attached = system.data_centers_service().data_center_service(dc.id).storage_domains_service()
attached.add(types.StorageDomain(id=sd.id))
wait("the domain to be active",
     lambda: attached.storage_domain_service(sd.id).get().status == types.StorageDomainStatus.ACTIVE)
conn.close()
print("SETUP OK", flush=True)
