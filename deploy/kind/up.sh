#!/usr/bin/env bash
# Bring up the kind e2e cluster with neuron-contig from this checkout. Needs a Docker engine and
# kind + kubectl on PATH; exits 3 with a clear message where there is no Docker engine (CI here).
#   deploy/kind/up.sh          # build image, create cluster, fake devices, deploy, wait
#   deploy/kind/up.sh down     # delete the cluster
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cluster=neuron-contig-e2e
# deploy/ takes the extender's and the scheduler's mutual-TLS certificates from cert-manager.
cert_manager_version=v1.21.2

if [[ "${1:-}" == down ]]; then
  exec kind delete cluster --name "$cluster"
fi
if ! docker info >/dev/null 2>&1; then
  echo "up.sh: no Docker engine reachable: the kind e2e tier cannot run here" >&2
  exit 3
fi

docker build -t neuron-contig:e2e "$repo"
kind get clusters | grep -qx "$cluster" || kind create cluster --config "$here/kind-config.yaml"
kind load docker-image neuron-contig:e2e --name "$cluster"
kc=(kubectl --context "kind-$cluster")
# The second scheduler must not be newer than the API server: run the cluster's own version.
server_version="$("${kc[@]}" version -o json | python3 -c 'import json, sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"

# Fake Neuron devices: character devices cloned from /dev/null, counted from the instance type label.
for node in $(kind get nodes --name "$cluster"); do
  type="$("${kc[@]}" get node "$node" -o jsonpath='{.metadata.labels.node\.kubernetes\.io/instance-type}')"
  case "$type" in
    inf1.6xlarge) count=4 ;;
    trn1.32xlarge) count=16 ;;
    *) continue ;;
  esac
  for ((i = 0; i < count; i++)); do
    docker exec "$node" sh -c "[ -e /dev/neuron$i ] || mknod -m 666 /dev/neuron$i c 1 3"
  done
done

# cert-manager first: deploy/extender/certificates.yaml needs its CRDs, and its webhook must answer before
# Issuers and Certificates can be created.
"${kc[@]}" apply -f "https://github.com/cert-manager/cert-manager/releases/download/$cert_manager_version/cert-manager.yaml"
for deployment in cert-manager cert-manager-cainjector cert-manager-webhook; do
  "${kc[@]}" -n cert-manager rollout status "deployment/$deployment" --timeout=180s
done

# The deploy/ manifests with the image just built (kind load put it on the nodes, so IfNotPresent never
# pulls it). An overlay inside deploy/ would be a kustomize cycle and kustomize refuses absolute bases,
# hence this one in the git-ignored .deps/.
mkdir -p "$repo/.deps"
overlay="$(mktemp -d "$repo/.deps/kind-overlay.XXXXXX")"
trap 'rm -rf "$overlay"' EXIT
cat >"$overlay/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../deploy
images:
  - name: public.ecr.aws/neuron-contig/neuron-contig
    newName: neuron-contig
    newTag: e2e
  - name: registry.k8s.io/kube-scheduler
    newTag: $server_version
YAML
"${kc[@]}" apply -k "$overlay"
"${kc[@]}" -n kube-system wait --for=condition=Ready --timeout=120s \
  certificate/neuron-scheduler-extender certificate/neuron-contig-scheduler-client
"${kc[@]}" -n kube-system rollout status daemonset/neuron-contig-device-plugin --timeout=180s
"${kc[@]}" -n kube-system rollout status deployment/neuron-scheduler-extender --timeout=180s
"${kc[@]}" -n kube-system rollout status deployment/neuron-contig-scheduler --timeout=180s
