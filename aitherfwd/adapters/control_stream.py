"""Control-socket transport, streaming side (layer L2): one long-lived response.

Owns: `send_stream` — a 200 with `Content-Type: application/x-ndjson` whose body is the
chunks of an async iterator, sent chunked (HTTP/1.1; an HTTP/1.0 peer gets them until the
connection closes), each written within the session's write timeout (a peer that stops
reading is dropped, so it holds at most the socket's buffers); while it waits for the next
chunk it watches the peer's side, and a peer that hangs up (or sends anything: the stream
is the last thing on its connection) ends the stream at once, so its slot is given back
without waiting for the next chunk. The caller closes the connection afterwards.

Must not import anything of the firewall; only h11 and the standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import h11

Write = Callable[[bytes | None], Awaitable[None]]


async def send_stream(
    conn: h11.Connection,
    chunks: AsyncIterator[bytes],
    reader: asyncio.StreamReader,
    write: Write,
) -> None:
    headers = [
        ("content-type", "application/x-ndjson"),
        ("cache-control", "no-store"),
        ("connection", "close"),
    ]
    hangup = asyncio.ensure_future(reader.read(1))
    following: asyncio.Future[bytes] | None = None
    try:
        await write(conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK")))
        while True:
            following = asyncio.ensure_future(anext(chunks))
            await asyncio.wait({following, hangup}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await following
                return
            try:
                chunk = following.result()
            except StopAsyncIteration:
                break
            await write(conn.send(h11.Data(data=chunk)))
        await write(conn.send(h11.EndOfMessage()))
    finally:
        for pending in (hangup, following):
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, OSError):
                    await pending
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
