#!/usr/bin/env bash
# Build the tollgate container image from wheels made on this host.
#
#   hack/build-image.sh [IMAGE]                  IMAGE defaults to tollgate:dev
#
# 1. Wheels: tollgate itself with `pip wheel`, and every dependency for the base image's Python
#    into dist/wheels. When the host's Python is the base image's, `pip wheel` builds them all;
#    otherwise the dependencies are binary wheels downloaded for the base's Python version and
#    architecture (`pip download --only-binary=:all: --python-version X.Y --platform …`). pip
#    runs here, on the host, because pip inside a build container may not trust the host's
#    network (proxy) certificates; the Dockerfile installs with `pip install --no-index`.
# 2. The base image: BASE_IMAGE (default python:3.12-slim), pulled if needed. When no registry
#    is reachable (air-gapped or proxied machines) and OFFLINE_BASE is auto or always, a base is
#    made from Debian packages instead, as root:
#        debootstrap --variant=minbase --include=python3 bookworm ROOTFS   (~40 s)
#        tar -C ROOTFS -c . | docker import - local/tollgate-base:bookworm
#    and the wheels target its Python (3.11).
# 3. docker build, with the repository as context; .dockerignore sends only dist/wheels.
#
# Environment:
#   BASE_IMAGE       base image with python3                 (python:3.12-slim)
#   PYTHON_VERSION   X.Y of the base's python3               (from a python:X.Y tag, else asked
#                                                             from the image)
#   OFFLINE_BASE     auto | always | never                   (auto: only when the pull fails)
#   DEBIAN_SUITE     suite of the offline base               (bookworm)
#   DEBIAN_MIRROR    mirror of the offline base              (http://deb.debian.org/debian)
#   PYTHON           host Python that runs pip               (.venv/bin/python, else python3)
#   DOCKER           docker CLI                              (docker)
#   WHEELS_ONLY=1    stop after making the wheels
set -eEuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

IMAGE="${1:-${IMAGE:-tollgate:dev}}"
BASE_IMAGE="${BASE_IMAGE:-python:3.12-slim}"
PYTHON_VERSION="${PYTHON_VERSION:-}"
OFFLINE_BASE="${OFFLINE_BASE:-auto}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKER="${DOCKER:-docker}"
WHEELS_DIR=dist/wheels # fixed: .dockerignore lets exactly this folder into the build context
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

ROOTFS=""
log() { printf '[build-image] %s\n' "$*" >&2; }
cleanup() {
    if [[ -n "${ROOTFS}" && -d "${ROOTFS}" ]]; then rm -rf "${ROOTFS}"; fi
}
trap cleanup EXIT
trap 'log "failed at line ${LINENO}: ${BASH_COMMAND}"' ERR

# --------------------------------------------------------------------------- base image

offline_base() {
    local image="local/tollgate-base:${DEBIAN_SUITE}"
    if "${DOCKER}" image inspect "${image}" > /dev/null 2>&1; then
        log "offline base ${image} exists"
    else
        command -v debootstrap > /dev/null || {
            log "debootstrap is missing (apt-get install -y --no-install-recommends debootstrap)"
            exit 1
        }
        [[ "$(id -u)" == 0 ]] || { log "debootstrap needs root"; exit 1; }
        ROOTFS="$(mktemp -d /tmp/tollgate-rootfs.XXXXXX)"
        log "debootstrap ${DEBIAN_SUITE} (minbase + python3) from ${DEBIAN_MIRROR}"
        debootstrap --variant=minbase --include=python3 "${DEBIAN_SUITE}" "${ROOTFS}" \
            "${DEBIAN_MIRROR}" > "${ROOTFS}.log" 2>&1 || {
            tail -n 20 "${ROOTFS}.log" >&2
            exit 1
        }
        rm -f "${ROOTFS}.log"
        rm -rf "${ROOTFS}"/var/cache/apt/archives/*.deb "${ROOTFS}"/var/lib/apt/lists/*
        tar -C "${ROOTFS}" -c . | "${DOCKER}" import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            - "${image}" > /dev/null
        log "imported ${image}"
    fi
    BASE_IMAGE="${image}"
    PYTHON_VERSION=""
}

ensure_base() {
    if [[ "${OFFLINE_BASE}" == always ]]; then
        offline_base
    elif "${DOCKER}" image inspect "${BASE_IMAGE}" > /dev/null 2>&1; then
        log "base ${BASE_IMAGE} is present"
    elif "${DOCKER}" pull --quiet "${BASE_IMAGE}" > /dev/null 2>&1; then
        log "pulled ${BASE_IMAGE}"
    elif [[ "${OFFLINE_BASE}" == auto ]]; then
        log "cannot pull ${BASE_IMAGE}: making an offline base"
        offline_base
    else
        log "cannot pull ${BASE_IMAGE} and OFFLINE_BASE=never"
        exit 1
    fi
    if [[ -z "${PYTHON_VERSION}" ]]; then
        if [[ "${BASE_IMAGE}" =~ (^|/)python:([0-9]+\.[0-9]+) ]]; then
            PYTHON_VERSION="${BASH_REMATCH[2]}"
        else
            PYTHON_VERSION="$("${DOCKER}" run --rm --network=none --entrypoint python3 \
                "${BASE_IMAGE}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        fi
    fi
}

# --------------------------------------------------------------------------- wheels

platform_tags() {
    local arch
    case "$(uname -m)" in
        x86_64 | amd64) arch=x86_64 ;;
        aarch64 | arm64) arch=aarch64 ;;
        *) log "unsupported architecture $(uname -m)"; exit 1 ;;
    esac
    for glibc in 2_36 2_35 2_34 2_28 2_27 2_24 2_17 2_12 2_5; do
        printf -- '--platform=manylinux_%s_%s\n' "${glibc}" "${arch}"
    done
    printf -- '--platform=manylinux2014_%s\n--platform=manylinux1_%s\n' "${arch}" "${arch}"
}

build_wheels() {
    local host_version pip=("${PYTHON}" -m pip --disable-pip-version-check)
    host_version="$("${PYTHON}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    rm -rf "${WHEELS_DIR}"
    mkdir -p "${WHEELS_DIR}"
    log "pip wheel: tollgate"
    "${pip[@]}" wheel --quiet --no-deps --wheel-dir "${WHEELS_DIR}" .
    local project=("${WHEELS_DIR}"/tollgate-*.whl)
    if [[ "${host_version}" == "${PYTHON_VERSION}" ]]; then
        log "pip wheel: dependencies for Python ${PYTHON_VERSION} (the host's)"
        "${pip[@]}" wheel --quiet --wheel-dir "${WHEELS_DIR}" "${project[0]}" pip
    else
        log "pip download: binary wheels of the dependencies for Python ${PYTHON_VERSION}" \
            "(host: ${host_version})"
        mapfile -t platforms < <(platform_tags)
        "${pip[@]}" download --quiet --dest "${WHEELS_DIR}" --only-binary=:all: \
            --implementation=cp --python-version="${PYTHON_VERSION}" "${platforms[@]}" \
            "${project[0]}" pip
    fi
    log "$(find "${WHEELS_DIR}" -name '*.whl' | wc -l) wheels," \
        "$(du -sh "${WHEELS_DIR}" | cut -f1) in ${WHEELS_DIR}"
}

# --------------------------------------------------------------------------- main

started=${SECONDS}
if [[ "${WHEELS_ONLY:-0}" == 1 ]]; then
    PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
    build_wheels
    exit 0
fi
command -v "${DOCKER}" > /dev/null || { log "${DOCKER} not found"; exit 1; }
ensure_base
build_wheels
log "docker build ${IMAGE} from ${BASE_IMAGE} (Python ${PYTHON_VERSION})"
"${DOCKER}" build --build-arg "BASE_IMAGE=${BASE_IMAGE}" --tag "${IMAGE}" .
log "built ${IMAGE} in $((SECONDS - started)) s"
