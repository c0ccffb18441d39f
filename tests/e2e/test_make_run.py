"""`tollgate dev` (what `make run` calls): starts everything, answers the printed query,
stops cleanly on Ctrl-C, and a second run reuses the data."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import EXAMPLES
from tollgate_core.local.servers import free_port

TOLLGATE = Path(sys.executable).parent / "tollgate"
STARTUP_DEADLINE_S = 60


class DevProcess:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.ports = [str(free_port()) for _ in range(3)]
        self.log = home.parent / f"dev-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start and return the banner once it is printed."""
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(TOLLGATE), "dev", "--home", str(self.home), "--examples", str(EXAMPLES),
                 "--pg-port", self.ports[0], "--nats-port", self.ports[1],
                 "--api-port", self.ports[2]],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.home.parent,
                env={**os.environ, "COLUMNS": "80"})
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while "Stop with Ctrl-C" not in (text := self.log.read_text()):
            assert self.process.poll() is None, f"tollgate dev exited:\n{text}"
            assert time.monotonic() < deadline, f"no banner after {STARTUP_DEADLINE_S}s:\n{text}"
            time.sleep(0.1)
        return text

    def interrupt(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=30)


def test_dev_serves_the_printed_query_and_restarts_on_the_same_data(tmp_path: Path) -> None:
    home = tmp_path / ".tollgate"
    dev = DevProcess(home)
    banner = dev.start()
    try:
        assert "Catalog     de revision 1" in banner
        curl = next(line for line in banner.splitlines() if line.startswith("curl "))
        # Paste the printed command into a shell, as a newcomer would.
        answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True,
                                cwd=tmp_path, timeout=30, check=True)
        offers = json.loads(answer.stdout)["data"]["offers"]["edges"]
        assert [o["node"]["id"] for o in offers] == ["data-boost", "mobile-m"]
        token = (home / "token").read_text()
        url = re.search(r"GraphQL\s+(\S+)", banner)
        assert url is not None
        registered = httpx.post(url.group(1), headers={"Authorization": f"Bearer {token}"},
                                json={"query": 'mutation { registerCustomer(input: {name: "A",'
                                      ' email: "a@b.de"}, idempotencyKey: "k") {'
                                      " ... on RegisterCustomerSuccess { customer { id } } } }"},
                                timeout=10).json()
        customer_id = registered["data"]["registerCustomer"]["customer"]["id"]
    finally:
        assert dev.interrupt() == 0

    again = DevProcess(home)
    banner = again.start()
    try:
        token = (home / "token").read_text()
        url = re.search(r"GraphQL\s+(\S+)", banner)
        assert url is not None
        found = httpx.post(url.group(1), headers={"Authorization": f"Bearer {token}"},
                           json={"query": f'{{ customer(id: "{customer_id}") {{ name }} }}'},
                           timeout=10).json()
        assert found == {"data": {"customer": {"name": "A"}}}
    finally:
        assert again.interrupt() == 0
        pgdata = home / "pgdata"
        if pgdata.is_symlink():  # relocated where `nobody` can reach it (running as root)
            shutil.rmtree(pgdata.resolve(), ignore_errors=True)
