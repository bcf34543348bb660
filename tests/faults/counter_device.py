"""The gateway faults' Modbus TCP device: every read it answers carries the next number.

    python tests/faults/counter_device.py PORT [UP_S DOWN_S]

Function 3 or 4 (read holding/input registers) from any address answers with a counter
(uint32, big-endian) in every pair of words, going up by one for every reply written: each
stored value names the one poll it came from, so the test can count exactly what was lost
or doubled. Other functions get exception 01.

With ``UP_S DOWN_S`` the server flaps: it serves for ``UP_S`` seconds, then stops reading
requests, waits a moment (so a reply already written is read by its client before the
socket goes), closes the listener and every connection for ``DOWN_S`` seconds, and starts
again on the same port, forever.

Prints, flushed, one line per event the test reads:
``listening PORT``, ``down``, ``up``, ``conn N first V`` (the first value a connection got)
and ``answered V`` every 100 values.
"""

from __future__ import annotations

import asyncio
import struct
import sys

_HEADER = struct.Struct(">HHHB")  # transaction, protocol, length, unit
_DRAIN_S = 0.2  # between stopping to answer and closing the sockets


class CounterDevice:
    def __init__(self, port: int) -> None:
        self.port = port
        self.counter = 0
        self.serving = False
        self.connections = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self.handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.serving = True
        print(f"listening {self.port}", flush=True)

    async def stop(self) -> None:
        self.serving = False
        await asyncio.sleep(_DRAIN_S)
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.close()
        if self.server is not None:
            await self.server.wait_closed()
        self.server = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        first = True
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readexactly(_HEADER.size)
                tid, _pid, length, unit = _HEADER.unpack(head)
                pdu = await reader.readexactly(length - 1)
                if not self.serving:
                    return  # going down: this request stays unanswered
                function = pdu[0]
                if function in (3, 4) and len(pdu) >= 5:
                    count = struct.unpack(">H", pdu[3:5])[0]
                    self.counter += 1
                    words = [self.counter >> 16, self.counter & 0xFFFF] * (count // 2 + 1)
                    body = bytes([function, 2 * count]) + struct.pack(f">{count}H", *words[:count])
                    if first:
                        print(f"conn {conn} first {self.counter}", flush=True)
                        first = False
                    if self.counter % 100 == 0:
                        print(f"answered {self.counter}", flush=True)
                else:
                    body = bytes([function | 0x80, 1])
                writer.write(_HEADER.pack(tid, 0, len(body) + 1, unit) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.writers.discard(writer)
            writer.close()


async def main(argv: list[str]) -> None:
    device = CounterDevice(int(argv[0]))
    await device.start()
    if len(argv) < 3:
        await asyncio.Event().wait()
    up_s, down_s = float(argv[1]), float(argv[2])
    while True:
        await asyncio.sleep(up_s)
        await device.stop()
        print(f"down {device.counter}", flush=True)
        await asyncio.sleep(down_s)
        await device.start()
        print(f"up {device.counter}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
