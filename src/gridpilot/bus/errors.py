"""Errors of the bus part; library (paho, amqtt) errors are mapped to these at the I/O edge.

BusError                      root: anything the bus part raises on purpose
├── BusUnavailableError            the broker cannot be reached now; retry later (the client does)
│   └── BusTimeoutError            an operation did not finish in time (connect, queue space, flush)
├── BusRefusedError                the broker said no: bad credentials, not authorised, filter
│                             refused. Retrying will not help; fix the configuration
├── BusClosedError                 the client was stopped; nothing more can be sent through it
└── PayloadError              a payload does not match its schema (see ``bus.codec``);
                              ``.field`` names the field at fault when there is one
"""

from __future__ import annotations


class BusError(Exception):
    """Root of the bus errors."""


class BusUnavailableError(BusError):
    """The broker cannot be reached or the connection was lost; the client retries by itself."""


class BusTimeoutError(BusUnavailableError):
    """An operation (connect, waiting for queue space, flush) did not finish in time."""


class BusRefusedError(BusError):
    """The broker refused a connection or subscription; fix credentials or ACLs."""

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class BusClosedError(BusError):
    """The client has been closed."""


class PayloadError(BusError, ValueError):
    """A payload is not valid JSON of the expected shape.

    ``field`` is the field at fault (``"value"``, ``"values.voltage_l1_v"``), or None when
    the payload as a whole is (not JSON, not an object): a consumer that answers bad input,
    like the gateway answering a command, tells the two apart by it.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
