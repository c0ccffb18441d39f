"""Node.js clients for the API tests: the npm packages pinned in tests/harness/npm/.

`node_modules()` installs them once, with the committed lockfile, into
``~/.cache/tollgate/npm/<hash of package.json and package-lock.json>/`` (a file lock keeps
concurrent test runs from installing twice); `script()` runs one of the scripts next to
them. Without Node.js/npm, or without a reachable npm registry, it fails with a message
that says so: these tests are never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

NPM_DIR = Path(__file__).resolve().parent / "npm"
PACKAGE_FILES = ("package.json", "package-lock.json")
NODE_MAJOR_MIN = 20
INSTALL_TIMEOUT_S = 600
STACK_FRAME = re.compile(r"npm (error|ERR!)\s+at ")


class NodeHarnessError(RuntimeError):
    """Node.js, npm or the npm registry is not usable; the message says what to do."""


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tollgate" / "npm"


def package_hash() -> str:
    digest = hashlib.sha256()
    for name in PACKAGE_FILES:
        digest.update(name.encode() + b"\0" + (NPM_DIR / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise NodeHarnessError(
            f"`{name}` is not on PATH: the API conformance tests need Node.js ≥ "
            f"{NODE_MAJOR_MIN} with npm (e.g. `apt-get install nodejs npm`)")
    return path


def _check_node_version(node: str) -> None:
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30,
                             check=False).stdout.strip()
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError as exc:
        raise NodeHarnessError(f"cannot read the Node.js version ({version!r})") from exc
    if major < NODE_MAJOR_MIN:
        raise NodeHarnessError(f"Node.js {version} is too old: graphql-ws needs ≥ "
                               f"{NODE_MAJOR_MIN}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def node_modules() -> Path:
    """The installed node_modules folder (installing it on first use)."""
    _check_node_version(_tool("node"))
    npm = _tool("npm")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    key = package_hash()
    target = root / key
    marker = target / ".installed"
    if marker.exists():
        return target / "node_modules"
    with _locked(root / f"{key}.lock"):
        if marker.exists():
            return target / "node_modules"
        staging = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=root))
        staging.chmod(0o755)
        try:
            for name in PACKAGE_FILES:
                shutil.copy2(NPM_DIR / name, staging / name)
            try:
                result = subprocess.run(
                    [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts"],
                    cwd=staging, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                    check=False)
            except subprocess.TimeoutExpired as exc:
                raise NodeHarnessError(
                    f"`npm install` in {staging} did not finish in {INSTALL_TIMEOUT_S} s: "
                    "is the npm registry reachable?") from exc
            if result.returncode != 0:
                said = [line for line in (result.stderr or result.stdout).splitlines()
                        if line.strip() and not STACK_FRAME.match(line)]
                tail = "\n".join(said[:12])
                raise NodeHarnessError(
                    f"`npm install` of tests/harness/npm failed (exit {result.returncode}); "
                    f"is the npm registry reachable? npm said:\n{tail}")
            (staging / ".installed").write_text(key)
            if target.exists():
                shutil.rmtree(target)  # a half-made folder of an interrupted run
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target / "node_modules"


@contextlib.contextmanager
def workdir(modules: Path) -> Iterator[Path]:
    """A scratch folder holding the harness scripts beside a link to `modules`."""
    with tempfile.TemporaryDirectory(prefix="tollgate-node-") as scratch:
        folder = Path(scratch)
        (folder / "node_modules").symlink_to(modules, target_is_directory=True)
        for script in NPM_DIR.glob("*.mjs"):
            shutil.copy2(script, folder / script.name)
        (folder / "package.json").write_text('{"type": "module", "private": true}\n')
        yield folder


@contextlib.asynccontextmanager
async def script(modules: Path, name: str, *args: str
                 ) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run `node <name> args…` from the harness; killed at exit if still running."""
    with workdir(modules) as folder:
        process = await asyncio.create_subprocess_exec(
            _tool("node"), str(folder / name), *args, cwd=folder,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
