"""A local HTTP image source that misbehaves on purpose: serves a meme, stalls forever, or trickles.

asyncio-based, in a daemon thread: a stalled request costs a coroutine, not a thread, so hundreds can hang.
"""

import asyncio
import threading

from tests.faults.proxy import stop_loop


class StallServer:
    """GET /ok.png -> the image; /stall/* -> headers never come; /trickle/* -> one body byte every `trickle_s`."""

    def __init__(self, image: bytes, trickle_s: float = 0.5) -> None:
        self.image = image
        self.trickle_s = trickle_s
        self.hits: dict[str, int] = {"ok": 0, "stall": 0, "trickle": 0}
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="stall-server")

    def start(self) -> "StallServer":
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(10)
        self.port = server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1].decode()
            if path.startswith("/stall/"):
                self.hits["stall"] += 1
                await asyncio.sleep(3600)
            elif path.startswith("/trickle/"):
                self.hits["trickle"] += 1
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.image)}\r\n\r\n".encode())
                for b in self.image:  # each read returns quickly, so only a total deadline stops this
                    writer.write(bytes([b]))
                    await writer.drain()
                    await asyncio.sleep(self.trickle_s)
            else:
                self.hits["ok"] += 1
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.image)}\r\n"
                             "Connection: close\r\n\r\n".encode() + self.image)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        stop_loop(self._loop)
