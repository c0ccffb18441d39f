"""CloudNativePG's own CRDs, for checking what the operator sends against its real schema.

The CRDs come from the CloudNativePG Go module at a pinned version (:data:`CNPG_VERSION`,
pinned here and nowhere else, with the module's checksum), fetched through the Go module
proxy with ``go mod download`` in a throw-away module, and copied into
``~/.cache/tollgate/cnpg/<version>/`` (``$TOLLGATE_CACHE`` moves the root). A warm cache
answers without Go and without the network.

In order, :func:`cnpg_crds` takes the CRDs from: ``$TOLLGATE_CNPG_CRDS`` (a directory holding
the YAML files, e.g. the module's ``config/crd/bases``, for machines without the proxy); the
cache; the Go module proxy. Otherwise it raises :class:`CnpgError` saying how to get them:
never a silent skip. Run ``python -m tests.harness.cnpg`` to fill the cache and print the paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.harness.controlplane import cache_root

MODULE = "github.com/cloudnative-pg/cloudnative-pg"
CNPG_VERSION = "v1.29.0"
"""The CloudNativePG release whose API the operator is checked against."""
MODULE_SUM = "h1:49Dm8+y4va7RODspJjeaK8uMWP3OGAD0gMsxhjm16Mo="
"""The go.sum hash of :data:`MODULE` at :data:`CNPG_VERSION`: a changed module is refused."""
CRD_DIR = "config/crd/bases"
CLUSTERS = "postgresql.cnpg.io_clusters.yaml"
"""The `Cluster` CRD (postgresql.cnpg.io/v1), the only CloudNativePG kind Tollgate creates."""
GO_FALLBACK = Path("/usr/local/go/bin/go")  # the official tarball's place, often not on PATH
_SOURCE_FILE = "SOURCE.json"


class CnpgError(RuntimeError):
    """The CloudNativePG CRDs are not cached and could not be fetched."""


def cache_dir(version: str = CNPG_VERSION) -> Path:
    return cache_root() / "cnpg" / version


def find_go() -> Path | None:
    """`go` from PATH, else the official tarball's /usr/local/go/bin/go (as hack/envtest)."""
    found = shutil.which("go")
    if found:
        return Path(found)
    return GO_FALLBACK if os.access(GO_FALLBACK, os.X_OK) else None


def cnpg_crds(names: Sequence[str] = (CLUSTERS,)) -> list[Path]:
    """Paths of the CloudNativePG CRD files `names` at :data:`CNPG_VERSION`."""
    env = os.environ.get("TOLLGATE_CNPG_CRDS")
    if env:
        directory = Path(env).expanduser().resolve()
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise CnpgError(f"TOLLGATE_CNPG_CRDS={env} lacks: {', '.join(missing)}")
        return [directory / n for n in names]
    directory = cache_dir()
    if not all((directory / n).is_file() for n in names):
        directory.parent.mkdir(parents=True, exist_ok=True)
        with _lock(directory.parent / ".lock"):
            if not all((directory / n).is_file() for n in names):  # another worker's work?
                _fetch(directory)
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise CnpgError(f"{MODULE}@{CNPG_VERSION} has no {CRD_DIR}/{', '.join(missing)}")
    return [directory / n for n in names]


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One fetch at a time across processes (parallel test workers)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _how_to_fix() -> str:
    return (f"Either make the Go module proxy reachable (GOPROXY, default "
            f"https://proxy.golang.org) and re-run, or copy the directory {CRD_DIR} of "
            f"{MODULE}@{CNPG_VERSION} (e.g. from a machine with Go: `go mod download -json "
            f"{MODULE}@{CNPG_VERSION}` prints it as Dir) here and point TOLLGATE_CNPG_CRDS "
            "at it.")


def _fetch(target: Path) -> None:
    """`go mod download` the pinned module; copy every CRD of it into `target`."""
    go = find_go()
    if go is None:
        raise CnpgError("the CloudNativePG CRDs are not cached and `go` is not on PATH (nor "
                        f"at {GO_FALLBACK}): install Go >= 1.22. " + _how_to_fix())
    print(f"[cnpg] fetching {MODULE}@{CNPG_VERSION} through the Go module proxy",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="tollgate-cnpg-") as scratch:
        env = dict(os.environ, GOFLAGS="-mod=mod", GOWORK="off", GOTOOLCHAIN="local")
        # `go mod download` by module path needs a main module, even an empty one.
        (Path(scratch) / "go.mod").write_text("module tollgate.test/cnpgcrds\n\ngo 1.22\n")
        proc = subprocess.run(
            [str(go), "mod", "download", "-json", f"{MODULE}@{CNPG_VERSION}"],
            cwd=scratch, env=env, capture_output=True, text=True, timeout=600, check=False)
    info: dict[str, object] = {}
    with contextlib.suppress(ValueError):
        info = json.loads(proc.stdout or "{}")
    error = info.get("Error") or (proc.stderr.strip() if proc.returncode else "")
    if error:
        raise CnpgError(f"`go mod download {MODULE}@{CNPG_VERSION}` failed: {error}\n"
                        + _how_to_fix())
    if info.get("Sum") != MODULE_SUM:
        raise CnpgError(f"{MODULE}@{CNPG_VERSION} has checksum {info.get('Sum')}, expected "
                        f"{MODULE_SUM} (tests/harness/cnpg.py pins both)")
    source = Path(str(info["Dir"])) / CRD_DIR
    crds = sorted(source.glob("*.yaml"))
    if not crds:
        raise CnpgError(f"{source} holds no CRDs")
    # Copy into a sibling, then rename: a reader never sees half a cache.
    partial = Path(tempfile.mkdtemp(prefix=f".{CNPG_VERSION}-", dir=target.parent))
    partial.chmod(0o755)
    try:
        for crd in crds:
            (partial / crd.name).write_bytes(crd.read_bytes())
        (partial / _SOURCE_FILE).write_text(json.dumps(
            {"module": MODULE, "version": CNPG_VERSION, "sum": MODULE_SUM,
             "path": CRD_DIR, "origin": info.get("Origin")}, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


if __name__ == "__main__":
    for crd_path in cnpg_crds():
        print(crd_path)
