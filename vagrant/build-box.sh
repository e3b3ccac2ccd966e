#!/usr/bin/env bash
# Builds a small Debian 12 box for strait's VMs, offline from any box
# registry: debootstrap from the Debian archive, an ext4 image made with
# mkfs.ext4 -d (no loop device), converted to qcow2 by qemu-img, and the
# vagrant-libvirt box file around it. The box has no bootloader: VMs boot
# its kernel and initrd directly (kept beside it), under libvirt as under
# `cargo xtask vagrant`.
# Usage: build-box.sh OUT_DIR
set -euo pipefail
out=${1:?usage: build-box.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
work="$out/build"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

# What strait and its demo need in a VM, and what Vagrant needs of a box
# (systemd, ssh, sudo, DHCP on the first interface).
packages=linux-image-amd64,initramfs-tools,systemd-sysv,kmod,iproute2,ifupdown
packages+=,isc-dhcp-client,openssh-server,sudo,curl,python3,tcpdump,procps
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror"

echo strait-box >"$root/etc/hostname"
printf 'auto lo\niface lo inet loopback\nallow-hotplug eth0\niface eth0 inet dhcp\n' \
  >"$root/etc/network/interfaces"
# Vagrant's user, with a key made for this box (the Vagrantfile points
# Vagrant at its private half, kept beside the box).
chroot "$root" useradd --create-home --shell /bin/bash vagrant
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$root/etc/sudoers.d/vagrant"
rm -f "$out/vagrant-key" "$out/vagrant-key.pub"
ssh-keygen -q -t ed25519 -N '' -C strait-box -f "$out/vagrant-key"
install -d -m 700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
install -m 600 -o 1000 -g 1000 "$out/vagrant-key.pub" "$root/home/vagrant/.ssh/authorized_keys"
# The direct-boot init of `cargo xtask vagrant`.
install -m 755 "$here/vm-init.sh" "$root/usr/local/sbin/strait-vm-init"
chroot "$root" apt-get clean
rm -rf "$root/var/lib/apt/lists/"*

cp "$root"/boot/vmlinuz-* "$out/vmlinuz"
cp "$root"/boot/initrd.img-* "$out/initrd.img"
size_mib=$(( $(du -sm "$root" | cut -f1) + 512 ))
mkfs.ext4 -q -L strait-root -d "$root" "$work/root.raw" "${size_mib}M"
qemu-img convert -O qcow2 "$work/root.raw" "$out/box.img"

# The vagrant-libvirt box: the disk, its metadata and a default Vagrantfile.
virtual_gb=$(( (size_mib + 1023) / 1024 ))
printf '{"provider":"libvirt","format":"qcow2","virtual_size":%d}\n' "$virtual_gb" \
  >"$work/metadata.json"
printf 'Vagrant.configure("2") do |c|\nend\n' >"$work/Vagrantfile"
cp "$out/box.img" "$work/box.img"
tar -C "$work" -czf "$out/strait-debian12.box" metadata.json Vagrantfile box.img
echo "box: $out/strait-debian12.box ($(du -h "$out/strait-debian12.box" | cut -f1)); disk $out/box.img"
