#!/usr/bin/env bash
# Builds (once) what nodeprep's real-kernel tests (tests/vm.rs) boot: Debian bookworm's generic
# kernel as an ELF vmlinux, and a base initramfs with busybox and the kernel modules the tests
# need. The tests run this script themselves (tests/vm/mod.rs), so `cargo nextest run` works on a
# fresh machine; running it beforehand only moves the one-time download out of the first test.
#
#   bash scripts/vm-kernel.sh          # prints KEY=VALUE lines on its last lines (stdout)
#
# What it does, all idempotent:
#   1. installs qemu-system-x86, busybox-static, cpio, kmod, xz-utils with apt-get when missing
#      (needs root then);
#   2. `apt-get download`s linux-image-6.1.0-<N>-amd64 (what linux-image-amd64 depends on; never
#      the -cloud flavour, which lacks e1000e) into the cache, `dpkg -x`es it, runs `depmod -b`;
#   3. extracts the ELF vmlinux from the bzImage (QEMU boots it through PVH, faster under TCG);
#   4. builds base.cpio (newc): busybox with every applet linked, the needed modules uncompressed
#      with their dependencies, and a depmod output (modules.dep, modules.alias, ...) for just
#      those under lib/modules/<version>/. It has no /init: each scenario brings its own.
#
# Cache: ${NODEPREP_VM_CACHE:-$HOME/.cache/nodeprep-vm}. A run whose results are there (and were
# built by this same script) only prints them. The kernel version is fixed at the first run;
# NODEPREP_VM_REFRESH=1 resolves linux-image-amd64 again (picks up a newer kernel),
# NODEPREP_VM_KERNEL_PACKAGE=linux-image-6.1.0-N-amd64 pins one.
#
# Output (stdout, last lines):
#   NODEPREP_VM_KERNEL_VERSION=6.1.0-N-amd64
#   NODEPREP_VM_VMLINUX=/path/vmlinux
#   NODEPREP_VM_BASE_CPIO=/path/base.cpio
# Progress and errors go to stderr; on failure the exit status is non-zero and the message names
# the step, the command and its output.
set -euo pipefail

CACHE=${NODEPREP_VM_CACHE:-$HOME/.cache/nodeprep-vm}
SELF=$(readlink -f "${BASH_SOURCE[0]}")

# Modules the tests need (their dependencies come from modules.dep): vfio-pci and friends for
# binding, e1000e and nvme so the devices have host drivers, ext4 (which also serves ext2) for the
# mounted disk, bridge for a NIC enslaved to a Linux bridge.
REQUIRED_MODULES=(vfio vfio_pci vfio_pci_core vfio_iommu_type1 irqbypass e1000e nvme nvme_core ext4 bridge)
# Taken when the kernel has them as modules.
OPTIONAL_MODULES=(vfio_virqfd crc32c_generic crc32c_intel)

log() { printf 'vm-kernel: %s\n' "$*" >&2; }
die() {
  printf 'vm-kernel: error: %s\n' "$*" >&2
  exit 1
}
# Runs a command quietly; on failure dies with the step, the command and its output.
run() {
  local step=$1 out
  shift
  if ! out=$("$@" 2>&1); then
    die "$step: command failed: $*
$out"
  fi
}

# ----------------------------------------------------------------------------------------------
# Fast path: everything is cached and was built by this very script.

script_sum=$(sha256sum "$SELF" | cut -d' ' -f1)
state=$CACHE/state.env

tools_present() {
  command -v qemu-system-x86_64 >/dev/null 2>&1 && command -v cpio >/dev/null 2>&1 &&
    command -v depmod >/dev/null 2>&1 && command -v xz >/dev/null 2>&1 &&
    [ -x /bin/busybox ] && dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'
}

cached_ok() {
  [ -f "$state" ] || return 1
  local sum="" vmlinux="" cpio="" version=""
  while IFS='=' read -r k v; do
    case $k in
      SCRIPT_SHA256) sum=$v ;;
      NODEPREP_VM_VMLINUX) vmlinux=$v ;;
      NODEPREP_VM_BASE_CPIO) cpio=$v ;;
      NODEPREP_VM_KERNEL_VERSION) version=$v ;;
    esac
  done <"$state"
  [ "$sum" = "$script_sum" ] && [ -s "$vmlinux" ] && [ -s "$cpio" ] && [ -n "$version" ] || return 1
  if [ -n "${NODEPREP_VM_KERNEL_PACKAGE:-}" ] && [ "linux-image-$version" != "$NODEPREP_VM_KERNEL_PACKAGE" ]; then
    return 1
  fi
  tools_present
}

print_state() { grep '^NODEPREP_VM_' "$state"; }

if [ "${NODEPREP_VM_REFRESH:-0}" != 1 ] && cached_ok; then
  print_state
  exit 0
fi

mkdir -p "$CACHE" || die "cannot create the cache directory $CACHE"
# One builder at a time (tests run in parallel processes); the others wait and then find the cache.
exec 9>"$CACHE/lock"
flock 9 || die "cannot lock $CACHE/lock"
if [ "${NODEPREP_VM_REFRESH:-0}" != 1 ] && cached_ok; then
  print_state
  exit 0
fi

# ----------------------------------------------------------------------------------------------
# 1. Host tools.

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_update() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    run "apt-get update" apt-get update -qq
    apt_updated=1
  fi
}

missing=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
command -v cpio >/dev/null 2>&1 || missing+=(cpio)
command -v depmod >/dev/null 2>&1 || missing+=(kmod)
command -v xz >/dev/null 2>&1 || missing+=(xz-utils)
if ((${#missing[@]})); then
  [ "$(id -u)" -eq 0 ] || die "install the Debian packages ${missing[*]} (or run this script as root)"
  apt_update
  log "apt-get install ${missing[*]}"
  run "installing ${missing[*]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
[ -x /bin/busybox ] || die "busybox-static is installed but /bin/busybox is missing"

# ----------------------------------------------------------------------------------------------
# 2. The kernel package.

resolve_kernel_package() {
  if [ -n "${NODEPREP_VM_KERNEL_PACKAGE:-}" ]; then
    echo "$NODEPREP_VM_KERNEL_PACKAGE"
    return
  fi
  if [ "${NODEPREP_VM_REFRESH:-0}" != 1 ] && [ -f "$CACHE/kernel-package" ]; then
    cat "$CACHE/kernel-package"
    return
  fi
  local deps
  deps=$(apt-cache depends linux-image-amd64 2>/dev/null | grep -o 'linux-image-[0-9][^ ]*-amd64' | grep -v cloud || true)
  if [ -z "$deps" ]; then
    apt_update
    deps=$(apt-cache depends linux-image-amd64 2>&1 | grep -o 'linux-image-[0-9][^ ]*-amd64' | grep -v cloud) ||
      die "resolving the kernel: 'apt-cache depends linux-image-amd64' names no linux-image-<version>-amd64"
  fi
  head -n1 <<<"$deps"
}

pkg=$(resolve_kernel_package)
version=${pkg#linux-image-}
[[ $version =~ ^[0-9]+\.[0-9]+.*-amd64$ ]] || die "unexpected kernel package name '$pkg'"

debs=$CACHE/debs
mkdir -p "$debs"
deb=$(ls "$debs/${pkg}_"*_amd64.deb 2>/dev/null | tail -n1 || true)
if [ -z "$deb" ]; then
  log "apt-get download $pkg"
  # apt's _apt user must be able to write there, or apt warns; download into a temp dir we own.
  tmpdl=$(mktemp -d "$debs/.dl.XXXXXX")
  chmod 755 "$tmpdl"
  if ! out=$(cd "$tmpdl" && apt-get download "$pkg" 2>&1); then
    apt_update
    out=$(cd "$tmpdl" && apt-get download "$pkg" 2>&1) || {
      rm -rf "$tmpdl"
      die "downloading the kernel: command failed: apt-get download $pkg
$out"
    }
  fi
  mv "$tmpdl"/*.deb "$debs/"
  rm -rf "$tmpdl"
  deb=$(ls "$debs/${pkg}_"*_amd64.deb | tail -n1)
fi

out_dir=$CACHE/$version
rm -rf "$out_dir.tmp"
mkdir -p "$out_dir.tmp"
tree=$out_dir.tmp/pkg
log "dpkg -x $(basename "$deb")"
run "unpacking the kernel package" dpkg -x "$deb" "$tree"
moddir=
for d in "$tree/lib/modules/$version" "$tree/usr/lib/modules/$version"; do
  [ -d "$d" ] && moddir=$d && break
done
[ -n "$moddir" ] || die "the kernel package $deb has no lib/modules/$version"
modbase=${moddir%/lib/modules/"$version"}
log "depmod $version"
run "depmod of the unpacked kernel" depmod -b "$modbase" "$version"

# ----------------------------------------------------------------------------------------------
# 3. vmlinux out of the bzImage: find a compressed payload, decompress it, keep it if it is ELF.

bzimage=$(ls "$tree"/boot/vmlinuz-"$version" 2>/dev/null) || die "the kernel package has no boot/vmlinuz-$version"
vmlinux=$out_dir.tmp/vmlinux
is_elf() { [ "$(head -c4 "$1" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; }
extract_vmlinux() {
  local magic tool off
  for spec in '\xFD7zXZ\x00:xz -dc' '\x1F\x8B\x08:gzip -dc' '\x28\xB5\x2F\xFD:zstd -dc' \
    '\x5D\x00\x00\x00:xz --format=lzma -dc' '\x02\x21\x4C\x18:lz4 -dc' '\x89LZO:lzop -dc' 'BZh:bzip2 -dc'; do
    magic=${spec%%:*}
    tool=${spec#*:}
    command -v "${tool%% *}" >/dev/null 2>&1 || continue
    for off in $(LC_ALL=C grep -obUaP "$magic" "$bzimage" | cut -d: -f1); do
      # Trailing bytes after the stream make the decompressor fail: judge by the output.
      tail -c +"$((off + 1))" "$bzimage" | $tool >"$vmlinux" 2>/dev/null || true
      if [ -s "$vmlinux" ] && is_elf "$vmlinux"; then
        log "vmlinux: ${tool%% *} payload at offset $off"
        return 0
      fi
    done
  done
  return 1
}
extract_vmlinux || die "extracting vmlinux: no compressed payload in $bzimage decompresses to an ELF file"

# ----------------------------------------------------------------------------------------------
# 4. The base initramfs.

declare -A DEP PATHOF
while IFS= read -r line; do
  mod=${line%%:*}
  file=${mod##*/}
  name=${file%%.ko*}
  name=${name//-/_}
  PATHOF[$name]=$mod
  DEP[$name]=${line#*:}
done <"$moddir/modules.dep"

declare -A TAKE
queue=()
for m in "${REQUIRED_MODULES[@]}"; do
  [ -n "${PATHOF[$m]:-}" ] || die "the kernel $version has no module $m (built in? check boot/config-$version)"
  queue+=("$m")
done
for m in "${OPTIONAL_MODULES[@]}"; do
  [ -n "${PATHOF[$m]:-}" ] && queue+=("$m")
done
while ((${#queue[@]})); do
  m=${queue[0]}
  queue=("${queue[@]:1}")
  [ -n "${TAKE[$m]:-}" ] && continue
  TAKE[$m]=1
  for dep in ${DEP[$m]}; do
    d=${dep##*/}
    d=${d%%.ko*}
    queue+=("${d//-/_}")
  done
done

root=$out_dir.tmp/root
kdir=$root/lib/modules/$version
mkdir -p "$kdir" "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,mnt,root,etc,var/lib}
for m in $(printf '%s\n' "${!TAKE[@]}" | sort); do
  rel=${PATHOF[$m]}
  src=$moddir/$rel
  dst=$kdir/${rel%%.ko*}.ko
  mkdir -p "$(dirname "$dst")"
  case $rel in
    *.ko) cp "$src" "$dst" ;;
    *.ko.xz) xz -dc "$src" >"$dst" ;;
    *.ko.zst) zstd -qdc "$src" >"$dst" ;;
    *.ko.gz) gzip -dc "$src" >"$dst" ;;
    *) die "unknown module file $rel" ;;
  esac
  echo "${rel%%.ko*}.ko" >>"$kdir/modules.order"
done
for f in modules.builtin modules.builtin.modinfo; do
  [ -f "$moddir/$f" ] && cp "$moddir/$f" "$kdir/"
done
run "depmod of the initramfs modules" depmod -b "$root" "$version"
grep -q 'vfio-pci.ko:' "$kdir/modules.dep" || die "the initramfs modules.dep has no vfio-pci"

cp /bin/busybox "$root/bin/busybox"
while IFS= read -r applet; do
  [ -n "$applet" ] && [ ! -e "$root/$applet" ] && ln -s /bin/busybox "$root/$applet"
done < <(/bin/busybox --list-full)

base_cpio=$out_dir.tmp/base.cpio
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet >"$base_cpio") ||
  die "building the base initramfs: cpio failed"
log "base initramfs: ${#TAKE[@]} modules ($(printf '%s ' $(printf '%s\n' "${!TAKE[@]}" | sort))), $(du -h "$base_cpio" | cut -f1)"

# Keep only the results; the unpacked package is 400 MB.
rm -rf "$tree" "$root"
rm -rf "$out_dir"
mv "$out_dir.tmp" "$out_dir"

{
  echo "SCRIPT_SHA256=$script_sum"
  echo "NODEPREP_VM_KERNEL_VERSION=$version"
  echo "NODEPREP_VM_VMLINUX=$out_dir/vmlinux"
  echo "NODEPREP_VM_BASE_CPIO=$out_dir/base.cpio"
} >"$state.tmp"
mv "$state.tmp" "$state"
echo "$pkg" >"$CACHE/kernel-package"
# Older kernel packages are of no further use.
find "$debs" -maxdepth 1 -name '*.deb' ! -name "${pkg}_*" -delete
print_state
