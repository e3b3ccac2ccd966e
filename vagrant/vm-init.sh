#!/bin/bash
# PID 1 of a VM that `cargo xtask vagrant` boots directly (kernel
# `init=/usr/local/sbin/strait-vm-init`): mounts what strait needs and the
# run's share (9p), runs the share's scenario, and powers the VM off.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mount -o remount,rw /
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mkdir -p /run/netns /share
modprobe 9pnet_virtio
mount -t 9p -o trans=virtio,version=9p2000.L share /share
ip link set lo up
echo "strait-vm: userspace after $(cut -d' ' -f1 /proc/uptime) s"
bash /share/scenario.sh
echo "strait-vm: scenario exited $?"
sync
echo o >/proc/sysrq-trigger
sleep 10
