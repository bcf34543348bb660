"""Errors of the fieldbus package, arranged by what the caller should do about them.

::

    FieldbusError                      root; every error has a .kind (counter key)
    ├── TransportError                 no usable answer; the connection is dropped and
    │   │                              reopened on the next request: retry on the next poll
    │   ├── DeviceTimeout       timeout      no reply within the timeout
    │   ├── ConnectionRefused   refused      the TCP connection could not be opened
    │   ├── Disconnected        disconnected the peer closed the connection
    │   └── PortUnavailable     port         the serial port cannot be opened (missing,
    │       │                                no permission); not retried within a call
    │       └── PortBusy        busy         another process holds the serial port; the
    │                                        message names it (like ``fuser -v``)
    ├── ProtocolError           protocol     the peer's reply breaks Modbus (wrong echo,
    │   │                                    another unit's reply); a TCP connection is
    │   │                                    dropped, an RTU line is kept
    │   ├── CrcError            crc          an RTU frame arrived garbled (CRC mismatch):
    │   │                                    line noise or wrong line settings
    │   └── ShortReply          short_reply  a reply stopped short of a whole frame
    ├── DeviceRejected          exception_N  the device answered with Modbus exception N;
    │                                        .transient for busy/acknowledge/gateway codes,
    │                                        otherwise the register map or value is wrong
    ├── RequestError            request      we were asked to send something Modbus cannot
    │                                        carry (too many registers, read-only table):
    │                                        a configuration or programming error
    └── CodecError                           register words <-> engineering values
        ├── DecodeError         decode       the words are not a valid value (NaN, wrong
        │                                    count, bad text): drop this reading
        └── EncodeError         encode       the value does not fit the register type:
                                             refuse the write

``transient`` says whether repeating the same request later can succeed; the Modbus TCP
client retries only transient errors within one call.
"""

from __future__ import annotations

# Busy-type answers: the request was fine, the device or the gateway in front of it was not
# ready. 5 acknowledge, 6 server busy, 10 gateway path unavailable, 11 target failed to respond.
_TRANSIENT_EXCEPTION_CODES = frozenset({5, 6, 10, 11})

EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
"""Names of the Modbus exception codes, for messages."""


class FieldbusError(Exception):
    """Root of every error raised by ``gridpilot.fieldbus``."""

    kind: str = "fieldbus"
    """Short stable name, used as the key of error counters."""
    transient: bool = False
    """True when the same request may succeed later without changing anything."""


class TransportError(FieldbusError):
    """No usable answer arrived; the connection is closed and reopened on next use."""

    kind = "transport"
    transient = True


class DeviceTimeout(TransportError):  # noqa: N818  # name fixed in docs/dev/INTERFACES.md
    """The device did not answer (or the connection did not open) within the timeout."""

    kind = "timeout"


class ConnectionRefused(TransportError):  # noqa: N818  # name fixed in docs/dev/INTERFACES.md
    """The TCP connection could not be opened (refused, unreachable, unknown host)."""

    kind = "refused"


class Disconnected(TransportError):  # noqa: N818  # named like its siblings above
    """The connection was closed by the peer or the network while in use."""

    kind = "disconnected"


class ProtocolError(FieldbusError):
    """The peer's reply violates Modbus (short reply, mismatched echo, bad framing)."""

    kind = "protocol"
    # A garbled reply is often a one-off (a stale answer, a half-reset gateway); a fresh
    # connection usually cures it.
    transient = True


class PortUnavailable(TransportError):  # noqa: N818  # named like its siblings
    """A serial port cannot be opened: it does not exist or we may not open it."""

    kind = "port"
    # Not within one call: a missing adapter or another process' lock does not go away in
    # milliseconds. The gateway tries again on its next poll.
    transient = False


class PortBusy(PortUnavailable):
    """Another process holds the serial port (an exclusive lock, or ``EBUSY``)."""

    kind = "busy"


class CrcError(ProtocolError):
    """An RTU frame arrived with a CRC that does not match its bytes."""

    kind = "crc"


class ShortReply(ProtocolError):  # noqa: N818  # names what arrived, like DeviceTimeout
    """Bytes of a reply arrived, then silence before the frame was whole."""

    kind = "short_reply"


class DeviceRejected(FieldbusError):  # noqa: N818  # name fixed in docs/dev/INTERFACES.md
    """The device answered with a Modbus exception response."""

    def __init__(self, message: str, exception_code: int) -> None:
        super().__init__(message)
        self.exception_code = exception_code
        self.kind = f"exception_{exception_code}"
        self.transient = exception_code in _TRANSIENT_EXCEPTION_CODES


class RequestError(FieldbusError):
    """The request cannot be sent as asked; fix the register map or the calling code."""

    kind = "request"


class CodecError(FieldbusError):
    """Converting between register words and engineering values failed."""

    kind = "codec"


class DecodeError(CodecError):
    """Register words do not hold a valid value of the point's type."""

    kind = "decode"


class EncodeError(CodecError):
    """An engineering value cannot be represented in the point's register type."""

    kind = "encode"


def exception_name(code: int) -> str:
    """Human name of a Modbus exception code ("illegal data address" for 2)."""
    return EXCEPTION_NAMES.get(code, "unknown exception")
