#!/bin/bash
# One VM's part of `cargo xtask vagrant`, run by strait-vm-init with the
# run's share on /share: the VM's link and a pod (a network namespace and
# a cgroup), strait-ca (on the first VM), strait-agent loading its eBPF
# programs in this VM's kernel, then the pod serves (server) or curls the
# other VM's pod (client). Lines starting with `strait-vm[` are what
# xtask reads.
set -euo pipefail
# shellcheck source=/dev/null
. /share/vm.env
bin=/share/bin
say() { echo "strait-vm[$NAME] $(cut -d' ' -f1 /proc/uptime): $*"; }
# Runs a command in the pod: its cgroup (capture's attach point), its
# network namespace.
in_pod() {
  bash -c 'echo $$ >/sys/fs/cgroup/pods/pod/cgroup.procs && exec ip netns exec pod "$@"' _ "$@"
}
# Waits up to $1 tenths of a second for the rest to succeed.
wait_for() {
  local tries=$1
  shift
  for _ in $(seq "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

ip addr add "$ADDR/24" dev eth0
ip link set eth0 up
sysctl -qw net.ipv4.ip_forward=1
ip netns add pod
ip link add veth-pod type veth peer name eth0 netns pod
ip addr add "$POD_GW/24" dev veth-pod
ip link set veth-pod up
ip -n pod link set lo up
ip -n pod addr add "$POD_IP/24" dev eth0
ip -n pod link set eth0 up
ip -n pod route add default via "$POD_GW"
ip route add "$PEER_POD_NET" via "$PEER"
mkdir -p /sys/fs/cgroup/pods/pod
say "kernel $(uname -r), BTF $(test -e /sys/kernel/btf/vmlinux && echo yes || echo no)"

if [ "$RUN_CA" = 1 ]; then
  cp -r /share/ca /run/ca
  "$bin/strait-ca" serve --ca-dir /run/ca --config-dir /share/config \
    --listen "$CA_ADDR" >/run/ca.log 2>&1 &
fi
"$bin/strait-agent" --node "$NAME" --config-dir /share/config \
  --capture-cgroup /sys/fs/cgroup/pods --ca-addr "$CA_ADDR" \
  --credential-dir /share/credential --status-dir /run/strait-status \
  >/run/agent.log 2>&1 &
if ! wait_for 1200 curl -sf http://127.0.0.1:15021/healthz/ready; then
  say "agent not ready"; tail -20 /run/agent.log; exit 1
fi
say "agent ready"
enrolled() {
  curl -s http://127.0.0.1:15000/workloads | grep -q '"state": *"captured"'
}
if ! wait_for 1200 enrolled; then
  say "pod not enrolled"; curl -s http://127.0.0.1:15000/workloads; tail -20 /run/agent.log; exit 1
fi
say "pod enrolled"
"$bin/straitctl" capture | sed "s/^/strait-vm[$NAME] capture: /"

case "$ROLE" in
  server)
    mkdir -p /run/www
    echo "served by $NAME" >/run/www/marker
    in_pod python3 -m http.server 8080 --directory /run/www >/run/server.log 2>&1 &
    say "serving"
    wait
    ;;
  client)
    url="http://$PEER_POD_IP:8080/marker"
    if ! wait_for 1200 in_pod curl -sf --max-time 5 "$url"; then
      say "curl failed"; tail -20 /run/agent.log; exit 1
    fi
    say "curl $url: $(in_pod curl -sS --max-time 5 "$url")"
    "$bin/straitctl" certs | sed "s/^/strait-vm[$NAME] certs: /"
    curl -s http://127.0.0.1:15020/metrics | grep '^istio_tcp_connections_opened_total' \
      | sed "s/^/strait-vm[$NAME] metrics: /"
    say "done"
    ;;
esac
