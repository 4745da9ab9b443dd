"""Adding a host by address with the unmodified SDK: the agent waits with a one-time
enrollment token (given as root_password), the Manager connects, has it make a CSR,
signs it and installs the certificate.

Environment: HALYARD_URL, HALYARD_CA, HALYARD_PASSWORD, HALYARD_HOST_NAME,
HALYARD_HOST_PORT, HALYARD_TOKEN.
"""
import os
import time

import ovirtsdk4 as sdk
import ovirtsdk4.types as types

conn = sdk.Connection(url=os.environ["HALYARD_URL"], username="admin@internal",
                      password=os.environ["HALYARD_PASSWORD"], ca_file=os.environ["HALYARD_CA"])
hosts = conn.system_service().hosts_service()
name = os.environ["HALYARD_HOST_NAME"]
port = int(os.environ["HALYARD_HOST_PORT"])
token = os.environ["HALYARD_TOKEN"]


def host(password):
    return types.Host(name=name, address="127.0.0.1", port=port, root_password=password,
                      cluster=types.Cluster(name="Default"))


# A wrong token: refused, nothing added.
try:
    hosts.add(host("wrong-" + token))
    raise AssertionError("a wrong enrollment token was accepted")
except sdk.Error as e:
    print("wrong token refused: %s" % e, flush=True)
assert hosts.list(search="name=%s" % name) == []

h = hosts.add(host(token))
print("added %s (%s)" % (h.name, h.status), flush=True)
svc = hosts.host_service(h.id)
t0 = time.time()
while svc.get().status != types.HostStatus.UP:
    assert time.time() - t0 < 60, "the enrolled host did not come up: %s" % svc.get().status
    time.sleep(0.5)
print("host up after %.1f s" % (time.time() - t0), flush=True)

# The token was for one use only.
try:
    hosts.add(types.Host(name=name + "-again", address="127.0.0.1", port=port,
                         root_password=token, cluster=types.Cluster(name="Default")))
    raise AssertionError("the token worked twice")
except sdk.Error as e:
    print("second use refused: %s" % e, flush=True)
conn.close()
print("ENROLL OK", flush=True)
