"""Where local mode keeps its data, ports and generated secrets (`.tollgate/`)."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalState:
    pg_port: int
    nats_port: int
    api_port: int
    app_password: str
    jwt_secret: str

    @property
    def owner_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres"

    @property
    def app_dsn(self) -> str:
        return f"postgresql://tollgate_app:{self.app_password}@127.0.0.1:{self.pg_port}/postgres"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def graphql_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/graphql"


def state_file(home: Path) -> Path:
    return home / "state.json"


def load_or_create(home: Path, pg_port: int, nats_port: int, api_port: int) -> LocalState:
    """Secrets are generated once and kept (mode 600) so a second run reuses the data."""
    home.mkdir(parents=True, exist_ok=True)
    path = state_file(home)
    previous = json.loads(path.read_text()) if path.exists() else {}
    state = LocalState(
        pg_port=pg_port, nats_port=nats_port, api_port=api_port,
        app_password=previous.get("app_password") or secrets.token_urlsafe(24),
        jwt_secret=previous.get("jwt_secret") or secrets.token_urlsafe(32),
    )
    path.write_text(json.dumps(asdict(state), indent=2))
    path.chmod(0o600)
    return state


def load(home: Path) -> LocalState:
    path = state_file(home)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: start local mode first with `tollgate dev` "
                                "(or `make run`)")
    return LocalState(**json.loads(path.read_text()))


def save_partner_keys(home: Path, keys: dict[str, dict[str, str]]) -> list[Path]:
    """Write newly issued partner API keys to `<home>/partner-keys/<tenant>-<agreement>`
    (mode 600): the database keeps only their digests, so this is the one copy."""
    folder = home / "partner-keys"
    written = []
    for tenant, issued in sorted(keys.items()):
        for agreement, key in sorted(issued.items()):
            folder.mkdir(mode=0o700, exist_ok=True)
            path = folder / f"{tenant}-{agreement}"
            path.write_text(key)
            path.chmod(0o600)
            written.append(path)
    return written
