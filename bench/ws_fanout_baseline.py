"""Baseline peer for the fan-out benchmark: a bare `websockets` server that forwards every
NATS message on SUBJECT, as it is, to every connected client — no GraphQL, no credentials,
no per-subscriber filtering. Run as `python -m bench.ws_fanout_baseline PORT NATS_URL SUBJECT`;
each client gets the text "ready" once it is registered."""

from __future__ import annotations

import asyncio
import signal
import sys

import nats
from nats.aio.msg import Msg
from websockets.asyncio.server import ServerConnection, broadcast, serve


async def main(port: int, url: str, subject: str) -> None:
    clients: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            await ws.send("ready")
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    async def forward(msg: Msg) -> None:
        broadcast(clients, msg.data.decode())

    nc = await nats.connect(url)
    await nc.subscribe(subject, cb=forward)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with serve(handler, "127.0.0.1", port, max_queue=None):
        await stop.wait()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
