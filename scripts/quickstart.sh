#!/bin/bash
# Halyard quick start on a fresh Debian 12 machine (as root):
#   installs the packages, builds Halyard, starts virtlogd + libvirtd if they are not
#   running, starts the host agent on port 54321, builds the tiny test guest and boots
#   it through the agent over VDSM's protocol, then shows the guest's ready line.
#
# Environment:
#   HALYARD_DOMAIN_TYPE  kvm or qemu (default qemu: TCG works everywhere; use kvm on
#                        hosts whose KVM boots stock kernels)
#   HALYARD_STATE        where logs and state go (default /var/lib/halyard)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE=${HALYARD_STATE:-/var/lib/halyard}
DOMAIN_TYPE=${HALYARD_DOMAIN_TYPE:-qemu}
PKI=/etc/halyard/pki
BRIDGE=ovirtmgmt
step() { echo; echo "==> $*"; }

step "installing packages"
./scripts/install-deps.sh

step "building (release)"
cargo build --release --locked -p halyard-hostd -p halyard-cli -p halyard-testguest
install -m 0755 target/release/halyard-hostd target/release/halyard target/release/halyard-testguest /usr/local/bin/

mkdir -p "$STATE/run" "$STATE/vms" && chmod 0755 "$STATE" "$STATE/vms"

step "starting virtlogd and libvirtd (if not running)"
# No udev here: give /dev/kvm the group and mode udev would.
[ -e /dev/kvm ] && chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  [ -S /run/libvirt/virtlogd-sock ] || virtlogd -d -p "$STATE/run/virtlogd.pid"
  LIBVIRT_LOG_OUTPUTS="3:file:$STATE/libvirtd.log" libvirtd -d -p "$STATE/run/libvirtd.pid"
  for _ in $(seq 600); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.1; done
fi
virsh -c qemu:///system version | sed -n 's/^Running hypervisor: /hypervisor: /p'

step "management bridge $BRIDGE"
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link add "$BRIDGE" type bridge
  ip addr add 192.168.222.1/24 dev "$BRIDGE"
  ip link set "$BRIDGE" up
fi

step "host agent (development PKI in $PKI)"
halyard-hostd pki init --dir "$PKI" >/dev/null
if [ -f "$STATE/run/hostd.pid" ] && kill -0 "$(cat "$STATE/run/hostd.pid")" 2>/dev/null; then
  kill "$(cat "$STATE/run/hostd.pid")"; sleep 0.5
fi
rm -f "$STATE/hostd/listen.addr"
setsid halyard-hostd --pki-dir "$PKI" --domain-type "$DOMAIN_TYPE" --state-dir "$STATE/hostd" \
  </dev/null >>"$STATE/hostd.log" 2>&1 &
echo $! > "$STATE/run/hostd.pid"
for _ in $(seq 100); do [ -f "$STATE/hostd/listen.addr" ] && break; sleep 0.1; done
export HALYARD_PKI_DIR=$PKI
halyard rpc Host.ping2 >/dev/null
echo "halyard-hostd is listening on port 54321 (log: $STATE/hostd.log)"

step "test guest"
GUEST=$(halyard-testguest --json)
KERNEL=$(echo "$GUEST" | sed -n 's/.*"kernel":"\([^"]*\)".*/\1/p')
INITRD=$(echo "$GUEST" | sed -n 's/.*"initrd":"\([^"]*\)".*/\1/p')
echo "kernel $KERNEL"
echo "initrd $INITRD"

step "booting the guest through the agent (VM.create over TLS + STOMP + JSON-RPC)"
VM_ID=$(cat /proc/sys/kernel/random/uuid)
NAME=quickstart-$(echo "$VM_ID" | cut -c1-8)
LOG="$STATE/vms/$NAME.console.log"
XML="$STATE/vms/$NAME.xml"
sed -e "s|@ID@|$VM_ID|; s|@NAME@|$NAME|; s|@KERNEL@|$KERNEL|; s|@INITRD@|$INITRD|; s|@LOG@|$LOG|; s|@BRIDGE@|$BRIDGE|" \
  "$ROOT/scripts/quickstart-vm.xml" > "$XML"
halyard rpc VM.create --xml "$XML" --flow-id quickstart | grep -E '"(status|vmId)"'
for _ in $(seq 1200); do grep -q 'HALYARD-GUEST ready' "$LOG" 2>/dev/null && break; sleep 0.1; done
echo
grep 'HALYARD-GUEST ready' "$LOG" || { echo "the guest did not come up; see $LOG and $STATE/hostd.log"; exit 1; }
echo
echo "The VM $NAME ($VM_ID) runs. Try:"
echo "  export HALYARD_PKI_DIR=$PKI"
echo "  halyard rpc Host.getAllVmStats"
echo "  halyard rpc VM.shutdown vmID=$VM_ID"
echo "  halyard rpc VM.destroy vmID=$VM_ID"
