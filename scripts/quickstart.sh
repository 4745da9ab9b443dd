#!/bin/bash
# Halyard quick start on a fresh Debian 12 machine (as root): an all-in-one Manager + host.
#   installs the packages, builds Halyard, starts virtlogd + libvirtd if they are not
#   running, and sanlock (for shared storage), starts the Manager (oVirt Engine API v4
#   on https://localhost:8443, SQLite), makes a one-time join token, starts the host
#   agent which registers with the Manager with it (pinning the Manager's CA), adds a
#   local data domain attached to Default, then adds the tiny test guest as a VM
#   through the REST API, starts it and shows its ready line. Both daemons listen on
#   loopback only (see README, "Listening on the network").
#
# Environment:
#   HALYARD_DOMAIN_TYPE  kvm or qemu (default qemu: TCG works everywhere; use kvm on
#                        hosts whose KVM boots stock kernels)
#   HALYARD_STATE        where logs and state go (default /var/lib/halyard)
#   HALYARD_PORT         the Manager's HTTPS port (default 8443)
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${HALYARD_STATE:-/var/lib/halyard}
DOMAIN_TYPE=${HALYARD_DOMAIN_TYPE:-qemu}
PORT=${HALYARD_PORT:-8443}
MGR=$STATE/manager
HOST_PKI=$STATE/host-pki
BRIDGE=ovirtmgmt
step() { echo; echo "==> $*"; }

stop_pidfile() {
  if [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; then
    kill "$(cat "$1")"
    for _ in $(seq 50); do kill -0 "$(cat "$1")" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$1"
}

step "installing packages"
./scripts/install-deps.sh

step "building (release)"
cargo build --release --locked -p halyard-manager -p halyard-hostd -p halyard-cli -p halyard-testguest
install -m 0755 target/release/halyard-manager target/release/halyard-hostd target/release/halyard \
  target/release/halyard-testguest /usr/local/bin/

mkdir -p "$STATE/run" "$STATE/images" /var/log/halyard/vms && chmod 0755 "$STATE"

step "starting virtlogd and libvirtd (if not running)"
# No udev here: give /dev/kvm the group and mode udev would.
[ -e /dev/kvm ] && chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  [ -S /run/libvirt/virtlogd-sock ] || virtlogd -d -p "$STATE/run/virtlogd.pid"
  LIBVIRT_LOG_OUTPUTS="3:file:$STATE/libvirtd.log" libvirtd -d -p "$STATE/run/libvirtd.pid"
  for _ in $(seq 600); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.1; done
fi
virsh -c qemu:///system version | sed -n 's/^Running hypervisor: /hypervisor: /p'

step "sanlock daemon (if not running): host ids and SPM leases of shared domains"
# Watchdog off (-w 0): the all-in-one has no second host to fence it. Where the kernel
# refuses sanlock's memlock limit (containers without CAP_SYS_RESOURCE), it starts
# with the small LD_PRELOAD shim the test harness uses.
if ! sanlock client status >/dev/null 2>&1; then
  mkdir -p /run/sanlock
  start_sanlock() {
    setsid env ${1:+LD_PRELOAD=$1} sanlock daemon -D -w 0 -U root -G root \
      </dev/null >>"$STATE/sanlock.log" 2>&1 &
    echo $! > "$STATE/run/sanlock.pid"
    for _ in $(seq 50); do sanlock client status >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
  }
  if ! start_sanlock ""; then
    gcc -O2 -shared -fPIC -o "$STATE/run/rlimit_clamp.so" crates/testinfra/shim/rlimit_clamp.c -ldl
    start_sanlock "$STATE/run/rlimit_clamp.so" || { echo "sanlock does not start; see $STATE/sanlock.log"; exit 1; }
  fi
fi
echo "sanlock: $(sanlock client status 2>/dev/null | head -1)"

step "management bridge $BRIDGE"
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link add "$BRIDGE" type bridge
  ip addr add 192.168.222.1/24 dev "$BRIDGE"
  ip link set "$BRIDGE" up
fi

step "Manager (https://localhost:$PORT/ovirt-engine/api, data in $MGR)"
stop_pidfile "$STATE/run/hostd.pid"
stop_pidfile "$STATE/run/manager.pid"
rm -f "$MGR/listen.addr"
# Loopback only; its certificate names this machine's host name and localhost (the
# host agent is 127.0.0.1: the CA signs no certificate for the Manager's own names).
setsid halyard-manager --data-dir "$MGR" --listen 127.0.0.1 --port "$PORT" \
  </dev/null >>"$STATE/manager.log" 2>&1 &
echo $! > "$STATE/run/manager.pid"
for _ in $(seq 300); do [ -f "$MGR/listen.addr" ] && break; sleep 0.1; done
[ -f "$MGR/listen.addr" ] || { echo "the Manager did not start; see $STATE/manager.log"; exit 1; }
export HALYARD_URL=https://localhost:$PORT HALYARD_PASSWORD_FILE=$MGR/admin-password HALYARD_CA=$MGR/pki/ca.pem

step "host agent (registers with the Manager; certificate in $HOST_PKI)"
rm -f "$STATE/hostd/listen.addr"
HOSTNAME_=$(hostname)
# A one-time join token (as Incus and Proxmox join nodes) approves this registration;
# the agent pins the Manager's CA by its fingerprint.
TOKEN=$(halyard hosts join-token --host-name "$HOSTNAME_" --expires-in 600)
CA_FP=$(openssl x509 -in "$MGR/pki/ca.pem" -noout -fingerprint -sha256 | cut -d= -f2)
HALYARD_JOIN_TOKEN=$TOKEN setsid halyard-hostd --pki-dir "$HOST_PKI" --domain-type "$DOMAIN_TYPE" \
  --state-dir "$STATE/hostd" --listen 127.0.0.1 --image-dir "$STATE/images" \
  --manager "https://localhost:$PORT" --manager-ca-fingerprint "$CA_FP" --address 127.0.0.1 \
  </dev/null >>"$STATE/hostd.log" 2>&1 &
echo $! > "$STATE/run/hostd.pid"
unset TOKEN
# It registers (CSR + join token), is approved, gets its certificate, then the Manager
# connects to it over VDSM's protocol and marks it up.
for _ in $(seq 600); do
  halyard hosts show "$HOSTNAME_" --json 2>/dev/null | grep -q '"status": "up"' && break; sleep 0.2
done
halyard hosts list
halyard hosts show "$HOSTNAME_" --json | grep -q '"status": "up"' || { echo "the host is not up; see $STATE/hostd.log"; exit 1; }

step "local data domain (attached to Default, as Proxmox has its local storage)"
if ! halyard storage list | grep -q '^local '; then
  mkdir -p "$STATE/data/local" && chmod 0777 "$STATE/data/local"
  halyard storage add local --path "$STATE/data/local" --host "$HOSTNAME_" --attach-to Default
fi
halyard storage list

step "test guest"
GUEST=$(halyard-testguest --json)
KERNEL=$(echo "$GUEST" | sed -n 's/.*"kernel":"\([^"]*\)".*/\1/p')
INITRD=$(echo "$GUEST" | sed -n 's/.*"initrd":"\([^"]*\)".*/\1/p')
# Hosts boot kernels and attach images only from their image directories.
install -m 0644 "$KERNEL" "$STATE/images/testguest-vmlinux"
install -m 0644 "$INITRD" "$STATE/images/testguest-initrd.img"
KERNEL=$STATE/images/testguest-vmlinux
INITRD=$STATE/images/testguest-initrd.img
echo "kernel $KERNEL"
echo "initrd $INITRD"

step "adding and starting a VM through the REST API"
NAME=quickstart-$(cut -c1-8 /proc/sys/kernel/random/uuid)
halyard vms add "$NAME" --memory 256M --kernel "$KERNEL" --initrd "$INITRD" --nic \
  --cmdline "console=ttyS0 quiet panic=-1 halyard.ip=192.168.222.10/24 halyard.gw=192.168.222.1"
halyard vms start "$NAME"
VM_ID=$(halyard vms show "$NAME" --json | sed -n 's/^  "id": "\([^"]*\)".*/\1/p')
LOG=/var/log/halyard/vms/$VM_ID.log
for _ in $(seq 1200); do grep -q 'HALYARD-GUEST ready' "$LOG" 2>/dev/null && break; sleep 0.1; done
echo
grep 'HALYARD-GUEST ready' "$LOG" || { echo "the guest did not come up; see $LOG and $STATE/hostd.log"; exit 1; }
echo
halyard vms list
cat <<MSG

The Manager runs at https://localhost:$PORT/ovirt-engine/api
  user admin@internal, password in $MGR/admin-password, CA at $MGR/pki/ca.pem
  (or https://localhost:$PORT/ovirt-engine/services/pki-resource?resource=ca-certificate&format=X509-PEM-CA)
Try:
  export HALYARD_URL=$HALYARD_URL HALYARD_PASSWORD_FILE=$HALYARD_PASSWORD_FILE HALYARD_CA=$HALYARD_CA
  halyard hosts list
  halyard storage list
  halyard vms list
  halyard vms shutdown $NAME
  halyard events list
or the oVirt Python SDK (ovirtsdk4) with url=https://localhost:$PORT/ovirt-engine/api.
Logs: $STATE/manager.log, $STATE/hostd.log, console $LOG
MSG
