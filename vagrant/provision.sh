#!/bin/bash
# Provisions one VM of the Vagrantfile (as root): strait's binaries, config
# and credential from /tmp/strait, the demo pod (a network namespace and a
# cgroup), and systemd units for strait-ca (when its keys were uploaded),
# strait-agent and the pod's http.server.
# Usage: provision.sh NODE POD_IP CA_ADDR PEERS (POD_NET=VM_IP,...)
set -euo pipefail
node=${1:?node} pod_ip=${2:?pod address} ca_addr=${3:?ca address} peers=${4:-}
install -m 755 /tmp/strait/bin/* /usr/local/bin/
mkdir -p /etc/strait
rm -rf /etc/strait/config /var/lib/strait/node
cp -r /tmp/strait/config /etc/strait/config
install -d -m 700 /var/lib/strait
cp -r /tmp/strait/credential /var/lib/strait/node
if [ -d /tmp/strait/ca ]; then
  rm -rf /var/lib/strait/ca
  cp -r /tmp/strait/ca /var/lib/strait/ca
  chmod -R go-rwx /var/lib/strait/ca
fi

# The pod: 10.x.y.10 in its own namespace behind 10.x.y.1 on the VM.
gateway=${pod_ip%.*}.1
cat >/usr/local/sbin/strait-demo-pod <<SCRIPT
#!/bin/bash
set -e
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
ip netns add pod 2>/dev/null || true
ip link add veth-pod type veth peer name eth0 netns pod 2>/dev/null || true
ip addr replace $gateway/24 dev veth-pod
ip link set veth-pod up
ip -n pod link set lo up
ip -n pod addr replace $pod_ip/24 dev eth0
ip -n pod link set eth0 up
ip -n pod route replace default via $gateway
sysctl -qw net.ipv4.ip_forward=1
mkdir -p /sys/fs/cgroup/pods/pod
SCRIPT
for peer in ${peers//,/ }; do
  echo "ip route replace ${peer%%=*} via ${peer#*=}" >>/usr/local/sbin/strait-demo-pod
done
chmod 755 /usr/local/sbin/strait-demo-pod

unit() { cat >"/etc/systemd/system/$1.service"; }
unit strait-demo-pod <<UNIT
[Unit]
Description=strait demo pod network
After=network-online.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/strait-demo-pod
[Install]
WantedBy=multi-user.target
UNIT
unit strait-ca <<UNIT
[Unit]
Description=strait CA
ConditionPathExists=/var/lib/strait/ca
After=network-online.target
[Service]
ExecStart=/usr/local/bin/strait-ca serve --ca-dir /var/lib/strait/ca --config-dir /etc/strait/config --listen $ca_addr
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
unit strait-agent <<UNIT
[Unit]
Description=strait node agent
After=strait-demo-pod.service
Requires=strait-demo-pod.service
[Service]
ExecStart=/usr/local/bin/strait-agent --node $node --config-dir /etc/strait/config --capture-cgroup /sys/fs/cgroup/pods --ca-addr $ca_addr
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
unit strait-demo-web <<UNIT
[Unit]
Description=the demo pod's http.server
After=strait-agent.service
[Service]
ExecStart=/bin/bash -c 'echo \$\$ >/sys/fs/cgroup/pods/pod/cgroup.procs && exec ip netns exec pod python3 -m http.server 8080'
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now strait-demo-pod strait-ca strait-agent strait-demo-web
echo "$node: strait-agent $(systemctl is-active strait-agent), pod $pod_ip"
