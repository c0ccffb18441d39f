#!/usr/bin/env bash
# Builds the test control plane: the multicall binary of this module (etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl) and kwok.
#
# The binaries land in ${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/envtest/<hash>/bin
# where <hash> is the first 16 hex digits of the SHA-256 of go.mod, go.sum,
# main.go and build.sh concatenated in that order (tests/harness/controlplane.py
# computes the same). A directory that already holds the binaries is reused.
# Progress goes to stderr; the last line on stdout is the bin directory.
#
# Cold (empty Go caches) this takes 7-20 minutes on 2 cores (peak ~2 GiB RAM)
# and fills ~5 GiB under ~/go/pkg/mod and ~/.cache/go-build; warm it takes ~25 s.
#
# go.mod/go.sum are generated, deterministically: go mod init; require
# k8s.io/kubernetes $K8S_VERSION; for each `k8s.io/X => ./staging/...` line of
# its go.mod (path: `go mod download -json k8s.io/kubernetes@$K8S_VERSION`, .GoMod)
# `go mod edit -replace=k8s.io/X=k8s.io/X@v0.<minor>.<patch>`; `go mod edit
# -go=1.25.0`; `go mod tidy`. Bump K8S_VERSION below together with them.
set -eEuo pipefail

K8S_VERSION=v1.35.4
KWOK_VERSION=v0.7.0
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/envtest"
hash="$(cd "$here" && cat go.mod go.sum main.go build.sh | sha256sum | cut -c1-16)"
out="$cache_root/$hash"
bin="$out/bin"

log() { printf '[envtest-build] %s\n' "$*" >&2; }

complete() {
    local name
    for name in envtest kwok "${COMPONENTS[@]}"; do
        [[ -x "$1/$name" ]] || return 1
    done
}

if complete "$bin"; then
    log "up to date: $bin"
    printf '%s\n' "$bin"
    exit 0
fi

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
    PATH="$PATH:/usr/local/go/bin"  # the official tarball's place, often not on PATH
fi
if ! command -v go >/dev/null 2>&1; then
    log "go is not on PATH: install Go >= 1.25 (https://go.dev/dl/ or your package manager),"
    log "or point TOLLGATE_ENVTEST_BIN at a directory that already holds: envtest kwok ${COMPONENTS[*]}"
    exit 1
fi

mkdir -p "$cache_root"
# One build at a time (parallel test workers may all ask for the binaries).
exec 9>"$cache_root/.lock"
if command -v flock >/dev/null 2>&1; then
    log "taking the build lock $cache_root/.lock"
    flock 9
fi
if complete "$bin"; then   # another process built it while we waited
    log "up to date: $bin"
    printf '%s\n' "$bin"
    exit 0
fi

stage="$(mktemp -d "$out.tmp.XXXXXX")"
heartbeat_pid=""
cleanup() {
    if [[ -n "$heartbeat_pid" ]]; then kill "$heartbeat_pid" 2>/dev/null || true; fi
    rm -rf "$stage"
}
trap cleanup EXIT
trap 'log "build FAILED (line $LINENO)"' ERR

start=$SECONDS
# A heartbeat on stderr. Its sleep must not outlive it: it would hold our
# stdout open, and a caller reading that to EOF would wait for it.
(
    trap 'kill "$nap" 2>/dev/null || true; exit 0' TERM
    while :; do
        sleep 60 & nap=$!
        wait "$nap"
        log "still building... $((SECONDS - start))s elapsed"
    done
) </dev/null >/dev/null &
heartbeat_pid=$!

log "$(go version); output $bin"
log "building kube components $K8S_VERSION (cold: 5-17 min on 2 cores, warm: ~20 s)"
ldflags="-s -w"
ldflags+=" -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
(
    cd "$here"
    GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$stage/bin/envtest" .
)
log "kube components built in $((SECONDS - start))s"

t=$SECONDS
log "building kwok $KWOK_VERSION (cold: 2-3 min)"
(
    cd "$stage"   # outside any module: go install pkg@version stands alone
    GOWORK=off GOBIN="$stage/bin" CGO_ENABLED=0 \
        go install -trimpath -ldflags="-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
)
log "kwok built in $((SECONDS - t))s"

for name in "${COMPONENTS[@]}"; do
    ln -sfn envtest "$stage/bin/$name"
done
complete "$stage/bin"

rm -rf "$bin"
mkdir -p "$out"
mv "$stage/bin" "$bin"
log "done in $((SECONDS - start))s: $bin"
printf '%s\n' "$bin"
