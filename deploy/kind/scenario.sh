#!/usr/bin/env bash
# The demo's scenario on kind: strait installed with its Helm chart, a
# namespace opted in by label, curl between pods on two nodes over mTLS,
# then two clusters on two networks sharing one root. Run by
# `cargo xtask kind`, which builds the image archive first.
# Usage: scenario.sh IMAGE_ARCHIVE
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
chart="$here/../helm/strait"
archive=${1:?usage: scenario.sh IMAGE_ARCHIVE}
ns=strait-system
clusters=()

cleanup() {
  for name in "${clusters[@]}"; do
    kind delete cluster --name "$name" || true
  done
}
trap cleanup EXIT

for tool in kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "kind scenario: $tool is not on PATH" >&2; exit 1; }
done

# create NAME CONFIG: a cluster, with the image loaded on its nodes.
create() {
  kind create cluster --name "$1" --config "$2" --wait 180s
  clusters+=("$1")
  kind load image-archive "$archive" --name "$1"
}

# install NAME [HELM ARGS...]: strait on cluster NAME, waiting for it.
install() {
  local name=$1
  shift
  helm install strait "$chart" --kube-context "kind-$name" --namespace "$ns" \
    --create-namespace --set imagePullPolicy=Never \
    --set multiCluster.clusterName="$name" --wait --timeout 5m "$@"
}

# agent NAME NODE ARGS...: straitctl in the agent of NODE.
agent() {
  local ctx=kind-$1 node=$2
  shift 2
  local pod
  pod=$(kubectl --context "$ctx" -n "$ns" get pod -o name \
    -l app.kubernetes.io/component=agent --field-selector "spec.nodeName=$node")
  kubectl --context "$ctx" -n "$ns" exec "$pod" -- /usr/local/bin/straitctl "$@"
}

# app NAME: the demo's client and server, ready.
app() {
  kubectl --context "kind-$1" apply -f "$here/app.yaml"
  kubectl --context "kind-$1" -n demo rollout status deploy/server --timeout 5m
  kubectl --context "kind-$1" -n demo rollout status deploy/client --timeout 5m
}

echo "== one cluster: a control plane and two workers in two zones"
create strait "$here/one-cluster.yaml"
install strait
app strait
kubectl --context kind-strait -n demo exec deploy/client -- \
  curl -sS --max-time 5 -o /dev/null -w 'client -> server.demo: HTTP %{http_code}\n' http://server.demo/
for node in strait-worker strait-worker2; do
  agent strait "$node" workloads
  agent strait "$node" certs
done
helm uninstall strait --kube-context kind-strait --namespace "$ns" --wait
kind delete cluster --name strait

echo "== two clusters on two networks, one root of trust"
create east "$here/east.yaml"
create west "$here/west.yaml"
remotes=$(mktemp -d)
trap 'cleanup; rm -rf "$remotes"' EXIT
kind get kubeconfig --name west --internal >"$remotes/west"
kind get kubeconfig --name east --internal >"$remotes/east"
kubectl --context kind-east create namespace "$ns"
kubectl --context kind-east -n "$ns" create secret generic strait-remotes --from-file="$remotes/west"
install east --set multiCluster.remoteKubeconfigsSecret=strait-remotes
# West's CA takes east's keys: one root for both clusters.
mkdir "$remotes/keys"
for key in root-cert.pem root-key.pem control-root.pem control-root-key.pem; do
  kubectl --context kind-east -n "$ns" get secret strait-ca \
    -o "jsonpath={.data.${key//./\\.}}" | base64 -d >"$remotes/keys/$key"
done
kubectl --context kind-west create namespace "$ns"
kubectl --context kind-west -n "$ns" create secret generic strait-ca --from-file="$remotes/keys"
kubectl --context kind-west -n "$ns" create secret generic strait-remotes --from-file="$remotes/east"
install west --set multiCluster.remoteKubeconfigsSecret=strait-remotes
app east
app west
# Each cluster's agents see the server's endpoints in both clusters.
agent east east-worker endpoints server.demo
echo "(traffic between the two networks goes through east-west gateways: not part of this chart yet)"
