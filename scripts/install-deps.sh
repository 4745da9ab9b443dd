#!/bin/bash
# Installs the Debian 12 packages Halyard builds and runs with. Idempotent; run as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

PKGS=(
  qemu-system-x86 qemu-utils            # QEMU and qemu-img
  ovmf                                  # UEFI firmware (bios type q35_ovmf, q35_secure_boot)
  xorriso isolinux syslinux-common      # ISO images (the tests' ISO uploads, a bootable ISO)
  vncsnapshot tigervnc-tools libjpeg-turbo-progs  # the console test: a VNC client with a ticket
  libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
  busybox-static qemu-guest-agent xz-utils   # the test guest
  debootstrap mtools dosfstools fdisk systemd-boot-efi binutils e2fsprogs openssh-client  # the Debian test image (UEFI, cloud-init, SSH)
  sanlock libsanlock-dev libvirt-sanlock   # host ids, the SPM lease, VM leases (libvirt's sanlock lock manager)
  fence-agents ipmitool openipmi        # power management: fence_ipmilan (and the tests' simulated BMC, ipmi_sim)
  iproute2 procps ca-certificates openssl util-linux
  postgresql                            # the Manager's production database (tests run their own)
  gcc python3-dev python3-venv libxml2-dev   # ovirt-engine-sdk-python for the API tests
)

missing=()
for p in "${PKGS[@]}"; do
  [[ $p == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "==> installing: ${missing[*]}"
  apt-get update -qq
  # qemu-system-x86 and qemu-utils must come from the same QEMU release; a newer
  # qemu-utils (e.g. from backports) blocks Debian 12's qemu-system-x86, so pin both
  # to the version apt would install for qemu-system-x86.
  qv=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
  args=()
  for p in "${missing[@]}"; do
    case $p in
      qemu-system-x86|qemu-utils) args+=("$p=$qv") ;;
      *) args+=("$p") ;;
    esac
  done
  if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]] && dpkg-query -W qemu-utils >/dev/null 2>&1; then
    args+=("qemu-utils=$qv")
  fi
  apt-get install -y -q --no-install-recommends --allow-downgrades "${args[@]}"
fi
# Debian starts PostgreSQL's default cluster only through systemd; nothing here needs it.

if ! command -v cargo >/dev/null; then
  echo "error: cargo (Rust 1.80 or newer) is required; install it with rustup" >&2
  exit 1
fi
