#!/usr/bin/env bash
# Builds tests/cluster/bin/neuronsim: etcd, kube-apiserver, kube-scheduler and the simulated Neuron
# node (real kubelet device manager + PodResources server), all from the Kubernetes Go modules.
# Idempotent: skips the build when the binary matches the current sources (stamp of go.mod, go.sum,
# *.go). Cold build on 2 cores: see the README, "Testing". Needs only the Go toolchain and the module proxy.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
module="$root/tests/cluster"
bin="$module/bin/neuronsim"
stamp="$module/bin/.sources.sha256"

if ! command -v go >/dev/null 2>&1; then
  echo "install-cluster: the Go toolchain is required (go >= 1.25); it is not on PATH" >&2
  exit 1
fi
# unshare and mount (util-linux) give each simulated node its own /var/lib/kubelet.
if ! command -v unshare >/dev/null 2>&1 || ! command -v mount >/dev/null 2>&1; then
  apt-get update
  apt-get install -y --no-install-recommends util-linux mount
fi

sources_hash() {
  (cd "$module" && find go.mod go.sum cmd -type f \( -name '*.go' -o -name 'go.*' \) -print0 \
    | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

want="$(sources_hash)"
if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "install-cluster: $bin is up to date"
  exit 0
fi

mkdir -p "$module/bin"
echo "install-cluster: building $bin (first build downloads modules and compiles Kubernetes: minutes)"
start=$(date +%s)
(cd "$module" && go mod download && go build -trimpath -ldflags=-s -o "$bin" ./cmd/neuronsim)
echo "$want" > "$stamp"
echo "install-cluster: built in $(( $(date +%s) - start ))s"
