"""Write the GraphQL schema (SDL) to api/schema.graphql: `python -m tollgate_api.export PATH`."""

from __future__ import annotations

import sys
from pathlib import Path

from tollgate_api.schema import build_schema


def sdl() -> str:
    return build_schema().as_str() + "\n"


if __name__ == "__main__":
    Path(sys.argv[1] if len(sys.argv) > 1 else "api/schema.graphql").write_text(sdl())
