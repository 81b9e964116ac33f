#!/usr/bin/env bash
# Builds tests/cluster/bin/neuronsim: etcd, kube-apiserver, kube-scheduler and the simulated Neuron
# node (real kubelet device manager + PodResources server), all from the Kubernetes Go modules.
# Kubernetes v1.37.2 modules (k8s.io/kubernetes v1.37.2, k8s.io/* v0.37.2) and etcd 3.7.0: they need
# Go >= 1.26 (the machine's own Go; no GOTOOLCHAIN switch). Idempotent: skips the build when the binary
# matches the current sources (stamp of go.mod, go.sum, *.go). Cold build on 2 cores: see the README,
# "Testing". Needs only the Go toolchain and the module proxy.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
module="$root/tests/cluster"
bin="$module/bin/neuronsim"
stamp="$module/bin/.sources.sha256"

if ! command -v go >/dev/null 2>&1; then
  echo "install-cluster: the Go toolchain is required (go >= 1.26); it is not on PATH" >&2
  exit 1
fi
# go.mod says `go 1.26.0`: an older go would try to download a toolchain, which is not allowed here.
go_version="$(go env GOVERSION)"
if [[ ! "$go_version" =~ ^go1\.([0-9]+) ]] || (( BASH_REMATCH[1] < 26 )); then
  echo "install-cluster: Go >= 1.26 is required for the Kubernetes 1.37 modules; found $go_version" >&2
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
# Build beside the binary and rename into place, the stamp too: a cluster already running keeps its
# binary, a failed build leaves the old one and its stamp untouched, and a binary or stamp shared by hard
# link with another checkout is replaced here, never written through.
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp" "$stamp.tmp.$$"' EXIT
(cd "$module" && go mod download && go build -trimpath -ldflags=-s -o "$tmp" ./cmd/neuronsim)
mv -f "$tmp" "$bin"
echo "$want" > "$stamp.tmp.$$"
mv -f "$stamp.tmp.$$" "$stamp"
echo "install-cluster: built in $(( $(date +%s) - start ))s"
