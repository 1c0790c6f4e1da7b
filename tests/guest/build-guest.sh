#!/usr/bin/env bash
# Builds (once) a bootable Debian 12 guest with the kernel's soft iWARP driver (siw) and rdma-core's tools, for the
# interop tests. Idempotent: every stage leaves a stamp; a complete cache is reused, a partial stage is redone.
#
#   tests/guest/build-guest.sh            # build into ${PINNEDDMA_GUEST_CACHE:-$HOME/.cache/pinneddma-guest}
#
# Output in the cache directory: vmlinuz, initrd.img, rootfs.img (raw ext4) and the stamp "complete".
# Debian 12's kernel is built without CONFIG_RDMA_SIW, so siw.ko is built out of tree from linux-source-6.1 against
# the headers of exactly the installed kernel.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${PINNEDDMA_GUEST_CACHE:-$HOME/.cache/pinneddma-guest}
mirror=${PINNEDDMA_GUEST_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
root="$cache/rootfs"
mkdir -p "$cache"
log() { printf '[build-guest %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# The files copied into the image: a change to any of them rebuilds the image (not the rootfs).
files_hash=$(cat "$here/build-guest.sh" "$here/guest-init" "$here/guest-cmd" | sha256sum | cut -c1-16)
if [ -f "$cache/complete" ] && [ "$(cat "$cache/complete")" = "$files_hash" ] \
   && [ -f "$cache/rootfs.img" ] && [ -f "$cache/vmlinuz" ] && [ -f "$cache/initrd.img" ]; then
  log "cache complete: $cache"
  exit 0
fi
rm -f "$cache/complete"

# Only one build at a time per cache.
exec 9>"$cache/.lock"
flock -w 3600 9

mounted=()
cleanup() {
  local i
  for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
  mounted=()
}
trap cleanup EXIT
chroot_mounts() {
  local m
  for m in proc sys dev dev/pts; do
    mountpoint -q "$root/$m" && continue
    case $m in
      proc) mount -t proc proc "$root/proc" ;;
      sys) mount -t sysfs sys "$root/sys" ;;
      dev) mount --bind /dev "$root/dev" ;;
      dev/pts) mount -t devpts devpts "$root/dev/pts" ;;
    esac
    mounted+=("$root/$m")
  done
}
in_root() { DEBIAN_FRONTEND=noninteractive LC_ALL=C chroot "$root" "$@"; }
# Never a configuration prompt (the initramfs settings below exist before their package).
apt_install() { in_root apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"; }

# A small initramfs: the guest needs only its virtio disk and ext4 to mount the root (the default, MODULES=most,
# takes minutes to build, twice, and to unpack under TCG at every boot). pdma-init loads the rest.
small_initramfs() {
  mkdir -p "$root/etc/initramfs-tools/conf.d"
  echo 'MODULES=list' > "$root/etc/initramfs-tools/conf.d/pdma-guest"
  printf '%s\n' virtio_pci virtio_blk ext4 > "$root/etc/initramfs-tools/modules"
}

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  for attempt in 1 2 3 4 5 6; do
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } && break
    log "apt-get failed (lock held?), retrying in 20 s"; sleep 20
  done
fi

# Stage 1: debootstrap.
if [ ! -f "$cache/stage1" ]; then
  log "stage 1: debootstrap $suite (5 to 11 min)"
  # A run killed mid-way may have left mounts inside: never follow them while deleting.
  { findmnt -rn -o TARGET | grep -F "$root/" || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf --one-file-system "$root"
  debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror"
  touch "$cache/stage1"
fi

# Stage 2: kernel, rdma-core, tools, and what the out-of-tree module build needs.
if [ ! -f "$cache/stage2" ]; then
  log "stage 2: kernel and packages"
  chroot_mounts
  echo "deb $mirror $suite main" > "$root/etc/apt/sources.list"
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
  small_initramfs
  in_root apt-get update -qq
  apt_install \
    linux-image-amd64 initramfs-tools kmod udev \
    rdma-core ibverbs-providers ibverbs-utils rdmacm-utils perftest \
    iproute2 procps socat coreutils util-linux psmisc
  kver=$(ls "$root/lib/modules" | sort -V | tail -n1)
  apt_install linux-source-6.1 "linux-headers-$kver" make gcc xz-utils
  touch "$cache/stage2"
fi
kver=$(ls "$root/lib/modules" | sort -V | tail -n1)
echo "$kver" > "$cache/kernel-version"

# Stage 3: siw.ko, out of tree, against the installed kernel's headers.
stage3_recipe="siw with test knobs v1"
if [ "$(cat "$cache/stage3" 2>/dev/null)" != "$stage3_recipe" ]; then
  log "stage 3: building siw.ko for $kver (about 4 min)"
  chroot_mounts
  rm -rf "$root/usr/src/siw-build"
  mkdir -p "$root/usr/src/siw-build"
  tarball=$(ls "$root"/usr/src/linux-source-6.1.tar.* | head -n1)
  tar -xf "$tarball" -C "$root/usr/src/siw-build" --wildcards '*/drivers/infiniband/sw/siw/*'
  srcdir=$(cd "$root/usr/src/siw-build" && ls -d */drivers/infiniband/sw/siw)
  # Test knobs: the settings that siw keeps as constants become module parameters (writable in
  # /sys/module/siw/parameters), so the tests can make the kernel the initiator of every mode: mpa_version (1 or 2),
  # mpa_crc_required, peer_to_peer, and rtr_types (the RTR types siw's P2P request offers: 1 RDMA Write, 2 RDMA Read).
  s="$root/usr/src/siw-build/$srcdir"
  sed -i -e 's/^const bool mpa_crc_required;/bool mpa_crc_required;\nmodule_param(mpa_crc_required, bool, 0644);/' \
         -e 's/^const bool peer_to_peer;/bool peer_to_peer;\nmodule_param(peer_to_peer, bool, 0644);/' \
         -e 's/^u_char mpa_version = MPA_REVISION_2;/&\nmodule_param(mpa_version, byte, 0644);/' "$s/siw_main.c"
  sed -i -e 's/^extern const bool mpa_crc_required;/extern bool mpa_crc_required;/' \
         -e 's/^extern const bool peer_to_peer;/extern bool peer_to_peer;/' "$s/siw.h"
  sed -i -e 's/^static __be16 rtr_type = MPA_V2_RDMA_READ_RTR | MPA_V2_RDMA_WRITE_RTR;/#include <linux\/moduleparam.h>\nstatic int rtr_types = 3;\nmodule_param(rtr_types, int, 0644);\n#define rtr_type ((rtr_types \& 1 ? MPA_V2_RDMA_WRITE_RTR : 0) | (rtr_types \& 2 ? MPA_V2_RDMA_READ_RTR : 0))/' "$s/siw_cm.c"
  for k in 'module_param(mpa_crc_required' 'module_param(peer_to_peer' 'module_param(mpa_version' 'module_param(rtr_types'; do
    grep -qF "$k" "$s"/siw_main.c "$s"/siw_cm.c || { log "siw source did not take the test knob $k"; exit 1; }
  done
  in_root make -C "/lib/modules/$kver/build" M="/usr/src/siw-build/$srcdir" CONFIG_RDMA_SIW=m modules -j2
  mkdir -p "$root/lib/modules/$kver/extra"
  cp "$root/usr/src/siw-build/$srcdir/siw.ko" "$root/lib/modules/$kver/extra/siw.ko"
  in_root depmod -a "$kver"
  in_root modinfo -k "$kver" -F parm siw | grep '^rtr_types' >/dev/null || { log "siw.ko has no test knobs"; exit 1; }
  rm -rf "$root/usr/src/siw-build"
  echo "$stage3_recipe" > "$cache/stage3"
fi

# Stage 4: the guest's init and command channel, the boot files, and the disk image.
log "stage 4: image"
small_initramfs
if ! grep -qx 'MODULES=list' "$root/etc/initramfs-tools/conf.d/pdma-guest" 2>/dev/null \
   || [ "$(cat "$cache/initramfs" 2>/dev/null)" != "small v1" ]; then
  chroot_mounts
  in_root update-initramfs -u -k "$kver"
  echo "small v1" > "$cache/initramfs"
fi
cleanup
install -m 0755 "$here/guest-init" "$root/sbin/pdma-init"
install -m 0755 "$here/guest-cmd" "$root/usr/local/sbin/pdma-cmd"
echo guest > "$root/etc/hostname"
cp -L "$root/boot/vmlinuz-$kver" "$cache/vmlinuz"
cp -L "$root/boot/initrd.img-$kver" "$cache/initrd.img"
rm -f "$cache/rootfs.img.tmp"
mkfs.ext4 -q -F -L pdmaroot -E root_owner=0:0 \
  -d "$root" "$cache/rootfs.img.tmp" 3G
mv "$cache/rootfs.img.tmp" "$cache/rootfs.img"
echo "$files_hash" > "$cache/complete"
log "done: $cache (kernel $kver)"
