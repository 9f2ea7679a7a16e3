"""A userspace stand-in for `tc netem delay D loss L` where the kernel has no sch_netem (some VM
kernels are built without it). Runs inside a host's namespace and relays TCP ports to other
hosts: `python -m tests.fleet.delay_proxy CONTROL LPORT:HOST:PORT ...`.

Every piece of data read is written onward D seconds later, in order, each way (so a round
trip costs 2 D, as netem on one link does to every packet both ways). A lost TCP segment costs
its connection one retransmission timeout, at least 200 ms on Linux, with everything behind
it held up: with probability L a piece waits that long more. CONTROL is a file holding "D L"
(seconds, fraction), read for every piece, so a test can switch the impairment on and off
without restarting the processes that use the relay."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

RTO_MIN = 0.2


def impairment(control: Path) -> tuple[float, float]:
    try:
        delay, loss = control.read_text().split()
        return float(delay), float(loss)
    except (OSError, ValueError):
        return 0.0, 0.0


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, control: Path) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(deliver())
    last = 0.0
    try:
        while data := await reader.read(65536):
            delay, loss = impairment(control)
            due = time.monotonic() + delay + (RTO_MIN if random.random() < loss else 0.0)
            last = max(last, due)  # in order: nothing overtakes a held-up piece
            queue.put_nowait((last, data))
    except OSError:
        pass
    queue.put_nowait((0.0, b""))
    try:
        await sender
    except OSError:
        pass


async def serve(control: Path, spec: str) -> asyncio.Server:
    port, host, target = spec.split(":")

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(target))
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer, control), pipe(up_reader, writer, control))

    return await asyncio.start_server(relay, "127.0.0.1", int(port))


async def main(control: Path, specs: list[str]) -> None:
    servers = [await serve(control, spec) for spec in specs]
    print("relaying", " ".join(specs), flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2:]))
