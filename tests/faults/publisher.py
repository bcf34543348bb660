"""The fault suite's publisher process: a numbered stream of telemetry through BusClient.

    python tests/faults/publisher.py HOST PORT SITE DEVICE MESSAGES POINTS BASE_TS RATE

Message ``i`` carries ``POINTS`` values (``p0_count``...), each equal to ``i``, at
``ts = BASE_TS + i`` ms, with ``seq = i``: every stored row names the message it came from,
so the test can count what is missing or doubled exactly. QoS 1; the client requeues what
the broker had not acknowledged when a connection dies and waits (bounded queue) while the
broker is down. Prints ``published N`` every 1,000 messages and, once the broker has
acknowledged every message, ``acknowledged N SECONDS``.
"""

from __future__ import annotations

import asyncio
import sys
import time

from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.bus.codec import encode_telemetry
from gridpilot.model import Topic

_FLUSH_TIMEOUT_S = 900.0  # the full profile's broker outage is 60 s; this is a backstop


async def main(argv: list[str]) -> None:
    host, port, site, device = argv[0], int(argv[1]), argv[2], argv[3]
    messages, points, base_ts, rate = int(argv[4]), int(argv[5]), int(argv[6]), float(argv[7])
    names = [f"p{k}_count" for k in range(points)]
    topic = str(Topic.telemetry(site, device))
    started = time.monotonic()
    async with BusClient(
        BrokerAddress(host, port),
        f"fault-publisher-{site}",
        max_outgoing=2_000,
        backoff_initial_s=0.1,
        backoff_max_s=1.0,  # reconnect quickly after the broker comes back
        close_timeout_s=_FLUSH_TIMEOUT_S,
    ) as client:
        await client.wait_connected(30)
        for i in range(messages):
            # Paced, so that faults land mid-stream: message i is due at i / rate seconds.
            ahead = started + i / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
            value = float(i)
            payload = encode_telemetry(base_ts + i, dict.fromkeys(names, value), seq=i)
            await client.publish(topic, payload, qos=1)
            if (i + 1) % 1_000 == 0:
                print(f"published {i + 1}", flush=True)
        await client.flush(timeout=_FLUSH_TIMEOUT_S)
    print(f"acknowledged {messages} {time.monotonic() - started:.3f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
