"""A bare HTTP/1.1 client for network-fault tests: sees the bytes on the wire as a simulated miner sends them."""

from __future__ import annotations

import asyncio

from simulator.server import SimMiner

GUARD = 10.0  # s: a hang fails the test instead of waiting for pytest's timeout


class Wire:
    """A bare HTTP/1.1 client on one kept-alive connection: sees the bytes as the miner sends them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.reads = 0  # socket reads the body took

    @classmethod
    async def open(cls, miner: SimMiner) -> Wire:
        return cls(*await asyncio.open_connection(miner.host, miner.port))

    def send(self, path: str = "/api/system/info") -> None:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: miner\r\n\r\n".encode())

    async def head(self) -> tuple[int, dict[str, str]]:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), GUARD)
        status_line, *lines = raw.decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
        return int(status_line.split()[1]), headers

    async def _read(self, n: int) -> bytes:
        self.reads += 1
        data = await asyncio.wait_for(self.reader.read(n), GUARD)
        if not data:
            raise ConnectionError("closed")
        return data

    async def body(self, headers: dict[str, str]) -> tuple[bytes, int]:
        """The body and how many chunks it came in (0 with Content-Length)."""
        if "content-length" in headers:
            data = b""
            while len(data) < int(headers["content-length"]):
                data += await self._read(65536)
            return data, 0
        assert headers.get("transfer-encoding") == "chunked"
        data, chunks = b"", 0
        while True:
            size = int((await asyncio.wait_for(self.reader.readuntil(b"\r\n"), GUARD)).strip(), 16)
            chunk = await asyncio.wait_for(self.reader.readexactly(size + 2), GUARD)
            if size == 0:
                return data, chunks
            data, chunks = data + chunk[:-2], chunks + 1

    async def get(self, path: str = "/api/system/info") -> tuple[int, bytes]:
        self.send(path)
        status, headers = await self.head()
        return status, (await self.body(headers))[0]

    async def closed_by_peer(self) -> bool:
        """True once the miner closed this connection (EOF or reset) without sending anything."""
        try:
            return await asyncio.wait_for(self.reader.read(1), GUARD) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.close()
