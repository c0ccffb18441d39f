"""Baseline peer for the online benchmark: answers a NATS request with one single-statement
PostgreSQL commit, nothing else. Run as `python -m bench.echo_responder SUBJECT DSN NATS_URL`."""

from __future__ import annotations

import asyncio
import signal
import sys

import asyncpg
import nats
from nats.aio.msg import Msg


async def main(subject: str, dsn: str, url: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=8)
    assert pool is not None
    await pool.execute("CREATE TABLE IF NOT EXISTS bench_echo (id bigserial PRIMARY KEY,"
                       " body bytea NOT NULL)")
    nc = await nats.connect(url)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks: set[asyncio.Task[None]] = set()

    async def answer(msg: Msg) -> None:
        await pool.execute("INSERT INTO bench_echo (body) VALUES ($1)", msg.data)
        await msg.respond(b'{"result":"SUCCESS"}')

    async def on_message(msg: Msg) -> None:
        task = asyncio.create_task(answer(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await nc.subscribe(subject, cb=on_message)
    await nc.flush()
    print("ready", flush=True)
    await stop.wait()
    await nc.close()
    await pool.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
