"""The typed site configuration.

YAML is parsed once into these frozen models (see ``gridpilot.config.loader``); nothing
inward of the loader sees a dict. Durations are ``timedelta``; a field's unit is in its
docstring or its name.
"""

from __future__ import annotations

import ipaddress
import math
import re
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from gridpilot.config.ieee2030_5 import CsipClientConfig
from gridpilot.control.base import PointRef
from gridpilot.control.constant_pf import ConstantPfParams
from gridpilot.control.enter_service import EnterServiceParams
from gridpilot.control.freq_droop import FreqDroopParams
from gridpilot.control.grid_operator import GridOperatorParams
from gridpilot.control.hvac import HvacParams
from gridpilot.control.peak_shaving import PeakShavingParams
from gridpilot.control.pv_export import PvExportParams
from gridpilot.control.tariff import Tariff
from gridpilot.control.vfd import VfdParams
from gridpilot.control.volt_var import VoltVarParams
from gridpilot.control.volt_watt import VoltWattParams
from gridpilot.control.watt_var import WattVarParams
from gridpilot.fieldbus.analog import VOLTAGE_TOLERANCE_V, AnalogRange, AnalogSignal
from gridpilot.model import DataType, Table, WordOrder, is_valid_identifier, unit_of
from gridpilot.model.registers import ByteOrder
from gridpilot.model.units import UNIT_SUFFIXES


def site_path(base_dir: Path, path: Path) -> Path:
    """A path of the site file: as given when absolute, else relative to ``base_dir`` (the
    site file's directory; the data directory in the demo)."""
    return path if path.is_absolute() else base_dir / path


def _identifier(value: str) -> str:
    if not is_valid_identifier(value):
        raise ValueError(
            f"{value!r} is not a valid id: use 1-63 characters of lower-case letters, digits, "
            "'_' and '-', starting with a letter or digit"
        )
    return value


def _point_name(value: str) -> str:
    _identifier(value)
    if unit_of(value) is None:
        suffixes = " ".join(sorted(UNIT_SUFFIXES))
        raise ValueError(
            f"point {value!r} has no unit suffix; end the name with one of: {suffixes} "
            "(e.g. 'active_power_w')"
        )
    return value


Identifier = Annotated[str, AfterValidator(_identifier)]
PointName = Annotated[str, AfterValidator(_point_name)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class SiteConfig(_Frozen):
    """The site this configuration describes."""

    id: Identifier
    name: str = ""
    timezone: str = "UTC"


class BrokerTlsConfig(_Frozen):
    """MQTT over TLS (``url: mqtts://...``). Relative paths are relative to the site file.

    ``deploy/mosquitto`` asks every client on its TLS listener for a certificate signed by the
    site's CA (``gridpilot deploy certs``), whose Common Name is the client's user name.
    """

    ca_file: Path | None = None
    """PEM certificate(s) of the CA that signed the broker's certificate; absent: the
    system's trusted CAs."""
    cert_file: Path | None = None
    """This client's PEM certificate, for brokers that require one."""
    key_file: Path | None = None
    """The private key of ``cert_file``; must be mode 0600 or stricter."""
    min_version: Literal["1.2", "1.3"] = "1.3"
    """Oldest TLS version this client accepts (GridPilot's broker config speaks 1.3 only)."""

    @model_validator(mode="after")
    def _cert_and_key(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give cert_file and key_file together (the certificate and its key)")
        return self


class BrokerConfig(_Frozen):
    """The MQTT broker. Without ``url``, services start an embedded broker on loopback."""

    url: str | None = None
    """``mqtt://host:port`` (or ``mqtts://``). Absent: embedded broker."""
    username: str | None = None
    password_env: str | None = None
    """Name of the environment variable holding the password (never inline)."""
    password_file: Path | None = None
    """File holding the password; must be mode 0600 or stricter."""
    client_id_prefix: Identifier = "gridpilot"
    keepalive: timedelta = timedelta(seconds=30)
    connect_timeout: timedelta = timedelta(seconds=10)
    max_outgoing: int = Field(default=10_000, ge=1, le=65_000)
    """Bound of the outgoing message queue; publishers wait when it is full."""
    embedded_port: int = Field(default=1883, ge=0, le=65535)
    """Port of the embedded broker; if taken, a free one is picked and logged."""
    tls: BrokerTlsConfig | None = None
    """CA, client certificate and key for ``mqtts://`` (absent: system CAs, no client
    certificate)."""
    signing_key_env: str | None = None
    """Environment variable holding the key the site's services sign their messages with
    (HMAC-SHA256 in an MQTT 5 user property), checked by ingest when
    ``ingest.require_signatures`` is on."""
    signing_key_file: Path | None = None
    """File holding that key (mode 0600 or stricter; e.g. ``head -c 32 /dev/urandom |
    base64 > services.key``)."""

    @model_validator(mode="after")
    def _tls_needs_mqtts(self) -> Self:
        if self.tls is not None and (self.url is None or urlsplit(self.url).scheme != "mqtts"):
            raise ValueError("broker.tls is set but the url is not mqtts://HOST:8883")
        return self

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts", "tcp"):
            raise ValueError(f"broker url {value!r} must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"broker url {value!r} has no host")
        if parts.password:
            raise ValueError(
                "put the broker password in password_env or password_file, not in the url"
            )
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1" if self.url else "127.0.0.1"

    @property
    def port(self) -> int:
        if self.url is None:
            return self.embedded_port
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)


class RetentionConfig(_Frozen):
    """How long each level of storage keeps data. ``None`` keeps it forever."""

    raw: timedelta | None = timedelta(days=30)
    rollup_1m: timedelta | None = timedelta(days=180)
    rollup_15m: timedelta | None = timedelta(days=3 * 365)
    rollup_1h: timedelta | None = None
    events: timedelta | None = timedelta(days=365)
    """Alarms and notable changes (the API's ``/events``)."""


class InfluxDBConfig(_Frozen):
    """Where the InfluxDB backend stores its data (``storage.backend: influxdb``).

    GridPilot speaks the v1 HTTP API (``/write`` with line protocol, ``/query`` with
    InfluxQL), which InfluxDB 1.x serves natively and 2.x/3.x serve for compatibility.
    Credentials never sit in the file: InfluxDB 1.x takes ``username`` with a password from
    ``password_env``/``password_file``; 2.x and 3.x take an API token from ``token_env``/
    ``token_file``. Secret files must be mode 0600 or stricter.
    """

    url: str = "http://127.0.0.1:8086"
    """``http://host:port`` or ``https://host:port`` of the InfluxDB HTTP API."""
    database: str = Field(default="gridpilot", min_length=1, max_length=255)
    """The database (1.x), or the database name mapped to a bucket (2.x/3.x DBRP)."""
    retention_policy: str | None = None
    """Retention policy to write to and read from; absent: the database's default."""
    create_database: bool = True
    """Run ``CREATE DATABASE`` on start (InfluxDB 1.x; a no-op when it exists). Set false
    for 2.x/3.x, where the bucket and its database mapping are created beforehand."""
    username: str | None = None
    password_env: str | None = None
    """Name of the environment variable holding the password (never inline)."""
    password_file: Path | None = None
    """File holding the password; relative paths are relative to the configuration file."""
    token_env: str | None = None
    """Name of the environment variable holding an API token (2.x/3.x)."""
    token_file: Path | None = None
    """File holding an API token; relative paths are relative to the configuration file."""
    timeout: timedelta = timedelta(seconds=10)
    """Longest any one HTTP request may take (connect, send and read)."""
    max_retries: int = Field(default=4, ge=0, le=20)
    """Retries (with exponential backoff from 0.1 s, capped at 5 s) of a request that
    failed to connect, timed out or got a 429/5xx answer, before StorageUnavailable."""
    write_batch_points: int = Field(default=5_000, ge=100, le=200_000)
    """Line-protocol points per HTTP write request (InfluxData recommends 5,000)."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"influxdb url {value!r} must look like http://host:8086")
        if parts.password or parts.username:
            raise ValueError(
                "put InfluxDB credentials in username + password_env/password_file or in "
                "token_env/token_file, not in the url"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_credential(self) -> Self:
        password = self.password_env is not None or self.password_file is not None
        token = self.token_env is not None or self.token_file is not None
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("set password_env or password_file, not both")
        if self.token_env is not None and self.token_file is not None:
            raise ValueError("set token_env or token_file, not both")
        if token and (password or self.username is not None):
            raise ValueError(
                "set either a token (InfluxDB 2.x/3.x) or username + password (1.x), not both"
            )
        if password and self.username is None:
            raise ValueError("a password needs a username: set influxdb.username")
        return self


def _dsn_has_password(dsn: str) -> bool:
    """Whether a libpq DSN (URL or ``key=value`` form) carries a password."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        return bool(parts.password) or "password=" in parts.query
    return re.search(r"(^|\s)password\s*=", dsn) is not None


class PostgresConfig(_Frozen):
    """Where the PostgreSQL backend stores its data (``storage.backend: postgresql``).

    Either ``dsn`` (a libpq connection string or ``postgresql://`` URL, without a password)
    or ``host``/``port``/``dbname``/``user``, which are ignored when ``dsn`` is set. The
    password comes only from ``password_env`` or ``password_file`` (mode 0600), or from
    libpq's own ``~/.pgpass`` / ``PGPASSWORD`` when neither is set.
    """

    dsn: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: str = "gridpilot"
    user: str | None = None
    """Absent: libpq's default (``PGUSER``, else the operating-system user)."""
    password_env: str | None = None
    """Name of the environment variable holding the password (never inline)."""
    password_file: Path | None = None
    """File holding the password; must be mode 0600 or stricter. Relative paths are
    relative to the configuration file."""
    schema_name: Identifier = "gridpilot"
    """The PostgreSQL schema holding GridPilot's tables (created if missing), so several
    sites or deployments can share one database."""
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    connect_timeout: timedelta = timedelta(seconds=10)
    statement_timeout: timedelta = timedelta(seconds=60)
    """Longest any one statement may run on the server before it is cancelled."""
    retry_for: timedelta = timedelta(seconds=30)
    """How long a call keeps reconnecting (with backoff) after the connection is lost
    before it fails with ``StorageUnavailable``."""

    @field_validator("dsn")
    @classmethod
    def _check_dsn(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if _dsn_has_password(value):
            raise ValueError(
                "put the PostgreSQL password in password_env or password_file, not in the dsn"
            )
        return value


class StorageConfig(_Frozen):
    """Time-series storage."""

    backend: Literal["sqlite", "postgresql", "influxdb"] = "sqlite"
    path: Path = Path("gridpilot.db")
    """SQLite file; relative paths are relative to the configuration file."""
    postgresql: PostgresConfig = PostgresConfig()
    """Used when ``backend`` is ``postgresql``."""
    influxdb: InfluxDBConfig = InfluxDBConfig()
    """Used when ``backend`` is ``influxdb``."""
    batch_size: int = Field(default=50_000, ge=1, le=1_000_000)
    """Samples per write transaction at most. Large by default: SQLite's cost per commit
    grows with the series it touches, not the samples, so big transactions are what reach
    200k samples/s (benchmarks/storage); at low rates ``flush_interval`` closes batches."""
    flush_interval: timedelta = timedelta(milliseconds=250)
    """Longest a sample waits in the ingest buffer before it is written."""
    max_buffered: int = Field(default=200_000, ge=1)
    """Bound of the ingest buffer in samples; the MQTT reader waits when it is full."""
    retention: RetentionConfig = RetentionConfig()


class IngestConfig(_Frozen):
    """Validation limits of incoming telemetry."""

    max_payload_bytes: int = Field(default=64 * 1024, ge=64)
    max_future_skew: timedelta = timedelta(seconds=300)
    """Samples stamped further than this in the future are rejected."""
    shared_subscription: Literal["auto", "on", "off"] = "off"
    """``on``: subscribe as ``$share/gridpilot-ingest/...``, so several ingest processes
    (each with its own ``--instance``) split the telemetry; ``auto``: the same unless the
    broker is the embedded one; ``off`` (the default): a plain subscription. Off by default
    because Mosquitto 2.0 restores a persistent session after a restart without its shared
    subscriptions and drops what publishers send until ingest subscribes again (the fault
    suite lost 599,900 of 1,000,000 samples that way, docs/reliability.md); a plain
    subscription's session keeps them."""
    accept_unknown_points: bool = False
    """Store points that are not configured for a known device (they have no valid range)."""
    require_signatures: bool = False
    """Refuse telemetry not signed with the key of the device's publisher: the site's
    services' key (``broker.signing_key_*``) for Modbus devices and the controller, the
    device's own ``signing_key_*`` for ``mqtt`` devices. A device with valid broker
    credentials then cannot inject data for another, even where the broker's ACL is missing
    or wrong."""
    stream_gaps: bool = True
    """Count gaps in each device's stream live (``seq`` and interval, ``/metrics``). Turn it
    off when several ingest processes share the subscription: each then sees only part of
    every stream. ``gridpilot gaps`` and the API's ``/gaps`` read storage and need neither."""


class PollClass(StrEnum):
    """How often a point is polled, relative to its device's ``poll_interval``."""

    FAST = "fast"
    """``poll_interval / fast_divisor`` (setpoints a controller follows, fast power values)."""
    NORMAL = "normal"
    """``poll_interval``."""
    SLOW = "slow"
    """``poll_interval x slow_multiple`` (energy counters, temperatures, nameplate data)."""


class PollClassesConfig(_Frozen):
    """The intervals of the poll classes as whole fractions and multiples of
    ``poll_interval``: every class then falls on one grid, so the points due at a tick are
    read together in merged blocks, and a slow point never drifts against a normal one."""

    fast_divisor: int = Field(default=5, ge=1, le=100)
    """``fast`` points are polled every ``poll_interval / fast_divisor`` (1 s -> 200 ms)."""
    slow_multiple: int = Field(default=10, ge=1, le=3600)
    """``slow`` points are polled every ``poll_interval x slow_multiple`` (1 s -> 10 s)."""


class GatewayBufferConfig(_Frozen):
    """The gateway's on-disk buffer of telemetry and events (SQLite, WAL): every message is
    committed there before it is sent and deleted after the broker's PUBACK, so what was
    polled survives a broker outage and a gateway crash, and is replayed in order.

    When a bound is reached the oldest messages not yet sent are dropped, counted (gateway
    state ``buffer.dropped``, ``/metrics``) and announced by an alarm event. The defaults
    hold about 7 days of a 4-device site polled every second (~200 B per message).
    """

    path: Path | None = None
    """The buffer file; default ``gateway-{gateway.id}.buffer.db`` next to the site file.
    One gateway process per file (it is locked while open)."""
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=64 * 1024)
    """Bytes of topics and payloads held at most (SQLite's own overhead comes on top)."""
    max_messages: int = Field(default=2_500_000, ge=10)
    """Messages held at most."""


class GatewayConfig(_Frozen):
    """The Modbus gateway service."""

    id: Identifier = "gateway"
    """Id of the gateway itself; its ``state`` topic carries the MQTT last will."""
    offline_after_failures: int = Field(default=2, ge=1, le=100)
    """Consecutive failed polls after which a device is reported ``offline``."""
    max_backoff: timedelta = timedelta(seconds=60)
    """Longest wait between reconnect attempts to a dead device."""
    poll_classes: PollClassesConfig = PollClassesConfig()
    """How much more often ``fast`` points and how much less often ``slow`` points are
    polled than a device's ``poll_interval`` (a device may set its own)."""
    state_interval: timedelta = Field(
        default=timedelta(seconds=10), ge=timedelta(milliseconds=100), le=timedelta(hours=1)
    )
    """How often each device's retained state (health, counters, poll jitter) is published
    when nothing changed; a change is published at once."""
    buffer: GatewayBufferConfig = GatewayBufferConfig()
    """The on-disk buffer between polling and the broker."""


class AnalogConfig(_Frozen):
    """A transmitter on an analog input: the register (after ``scale``/``offset``) holds the
    loop signal in mA or V; the point's value is the engineering value it stands for.

    4-20 mA loops are checked against NAMUR NE 43 (``gridpilot.fieldbus.analog``): at or
    below 3.6 mA a wire break, under 3.8 or over 20.5 mA out of range, at or above 21 mA a
    sensor fault. A faulted point publishes no value; the fault is in the device's state.
    """

    signal: AnalogSignal
    """``4-20mA`` or ``0-10V``."""
    low: float
    """Engineering value at 4 mA / 0 V, in the point's unit."""
    high: float
    """Engineering value at 20 mA / 10 V, in the point's unit."""
    tolerance_v: float = Field(default=VOLTAGE_TOLERANCE_V, ge=0, le=2)
    """``0-10V`` only: signals down to -tolerance and up to 10 V + tolerance still count."""

    @model_validator(mode="after")
    def _span(self) -> Self:
        self.range()  # low == high, or not finite, is refused with the reason
        return self

    def range(self) -> AnalogRange:
        return AnalogRange(self.signal, self.low, self.high, self.tolerance_v)


class PointConfig(_Frozen):
    """One point of a device and, for Modbus devices, where it lives in the registers."""

    point: PointName
    address: int | None = Field(default=None, ge=0, le=65535)
    """Zero-based register/coil address (as on the wire, not 4xxxx notation)."""
    table: Table = Table.HOLDING
    type: DataType = DataType.UINT16
    length: int = Field(default=1, ge=1, le=123)
    """Registers of a ``string`` value."""
    bit: int | None = Field(default=None, ge=0, le=15)
    """For ``bitfield``: take only this bit (0 = least significant) as 0/1."""
    word_order: WordOrder = WordOrder.BIG
    byte_order: ByteOrder = ByteOrder.BIG
    scale: float = 1.0
    """Engineering value = raw × scale + offset."""
    offset: float = 0.0
    valid_range: tuple[float, float] | None = None
    """[min, max] in the point's unit; readings outside are rejected, writes refused."""
    writable: bool = False
    """Commands may set this point (holding registers and coils only)."""
    analog: AnalogConfig | None = None
    """The register holds a 4-20 mA or 0-10 V signal: scale it to the point's unit and report
    loop faults (NAMUR NE 43) instead of values."""
    poll_class: PollClass = PollClass.NORMAL
    """``fast``, ``normal`` or ``slow``: see ``poll_classes``."""

    @property
    def register_count(self) -> int:
        if self.type is DataType.STRING:
            return self.length
        return self.type.register_count

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        if self.valid_range is not None and self.valid_range[0] > self.valid_range[1]:
            raise ValueError(f"valid_range {list(self.valid_range)} has min above max")
        if self.table.is_bit and self.type not in (DataType.BOOL, DataType.UINT16):
            raise ValueError(f"a {self.table} point holds one bit: use type bool, not {self.type}")
        if self.type is DataType.BOOL and not self.table.is_bit:
            raise ValueError("type bool is for coil and discrete tables; use bitfield with bit: N")
        if self.bit is not None and self.type is not DataType.BITFIELD:
            raise ValueError("bit is only meaningful with type bitfield")
        if self.writable and not self.table.is_writable:
            raise ValueError(f"a point in the {self.table} table is read-only; set writable: false")
        if self.scale == 0:
            raise ValueError("scale 0 would make every reading 0")
        if self.analog is not None and self.writable:
            raise ValueError(
                "an analog point is an input: remove writable (analog outputs are written as "
                "the register value, without analog:)"
            )
        if self.analog is not None and self.table.is_bit:
            raise ValueError(f"a {self.table} holds one bit, not an analog signal")
        return self


class DeviceProtocol(StrEnum):
    MODBUS_TCP = "modbus_tcp"
    MODBUS_RTU = "modbus_rtu"  # a unit on a serial bus (``bus:`` names a ``serial_buses`` entry)
    MODBUS_RTU_TCP = "modbus_rtu_tcp"  # RTU frames over TCP, via a serial-to-Ethernet converter
    MQTT = "mqtt"  # MQTT-native device: publishes telemetry itself, no polling

    @property
    def is_modbus(self) -> bool:
        """The gateway polls devices of this protocol."""
        return self is not DeviceProtocol.MQTT


class SerialBusConfig(_Frozen):
    """A serial line (RS-485 multi-drop, or RS-232) shared by the ``modbus_rtu`` devices
    that name it in ``bus``. The gateway sends one request at a time on it."""

    id: Identifier
    port: str = Field(min_length=1)
    """Device path, e.g. ``/dev/ttyUSB0``; prefer the stable ``/dev/serial/by-id/...``."""
    baudrate: int = Field(default=19_200, ge=300, le=4_000_000)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "E"
    """``N`` none, ``E`` even (the Modbus default), ``O`` odd."""
    stopbits: Literal[1, 2] = 1
    frame_gap: timedelta | None = None
    """Silence kept between frames; default 3.5 character times (1.75 ms above 19200 baud).
    Raise it for slow units or adapters that need time to turn the line around."""

    @field_validator("frame_gap")
    @classmethod
    def _gap(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and not timedelta(0) <= value <= timedelta(seconds=1):
            raise ValueError("must be between 0 and 1 s")
        return value


class FlowRole(StrEnum):
    """Where a device sits in the site's power flow (the dashboard's grid, PV, battery)."""

    GRID = "grid"
    PV = "pv"
    BATTERY = "battery"


_FLOW_POWER_DEFAULTS = {
    FlowRole.GRID: "active_power_w",
    FlowRole.PV: "ac_power_w",
    FlowRole.BATTERY: "active_power_w",
}


class FlowConfig(_Frozen):
    """A device's part in the site's power flow. Without any, the dashboard recognises the
    parts by their usual point names (``active_power_w`` on a device named grid/mains/...,
    ``ac_power_w``, ``soc_pct``); with them, any names work (e.g. a SunSpec inverter's
    ``m103_w``)."""

    role: FlowRole
    power_point: PointName | None = None
    """The point giving the device's active power; default ``active_power_w`` (grid,
    battery) or ``ac_power_w`` (pv)."""
    power_sign: Literal[1, -1] = 1
    """1 when the point is positive for import (grid), production (pv) or discharge
    (battery), as GridPilot counts; -1 when the device counts the other way."""
    soc_point: PointName | None = None
    """battery: the state-of-charge point, default ``soc_pct``."""

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: object) -> object:
        """The role's usual point names where none are given."""
        if not isinstance(data, dict) or data.get("role") not in set(FlowRole):
            return data  # the field validation says what is wrong
        role = FlowRole(data["role"])
        if data.get("soc_point") is not None and role is not FlowRole.BATTERY:
            raise ValueError("soc_point is for role battery only")
        filled = {"power_point": _FLOW_POWER_DEFAULTS[role]}
        if role is FlowRole.BATTERY:
            filled["soc_point"] = "soc_pct"
        return {**filled, **{k: v for k, v in data.items() if v is not None}}


class SunSpecConfig(_Frozen):
    """SunSpec auto-discovery: the gateway finds the device's models at connect and
    publishes their points as ``m<model>_<point>_<unit>`` (``m103_w``, ``m704_wmaxlimpct_pct``;
    see ``gridpilot devices scan``); writable points (704, 123 ...) take commands."""

    base: Literal["auto", 0, 40000, 50000] = "auto"
    """Address of the ``SunS`` marker; ``auto`` tries 40000, 50000, 0 (then 40001, 50001, 1)."""
    models: tuple[int, ...] | None = None
    """Publish only these model ids (default: every model found)."""
    points: tuple[PointName, ...] | None = None
    """Publish only these point names (default: every point the device implements)."""


class DeviceConfig(_Frozen):
    """A field device."""

    id: Identifier
    name: str = ""
    profile: Identifier | None = None
    """Name of a device-library profile (``gridpilot devices list``): its points, or those
    listed under ``points`` (each a profile point's name, with fields to override and ``as``
    to rename it, or a whole point of your own), and its defaults (e.g. ``max_gap``)."""
    protocol: DeviceProtocol = DeviceProtocol.MODBUS_TCP
    host: str | None = None
    """``modbus_tcp``/``modbus_rtu_tcp``: the device's or the converter's address."""
    port: int = Field(default=502, ge=1, le=65535)
    bus: Identifier | None = None
    """``modbus_rtu``: id of the ``serial_buses`` entry the unit is wired to."""
    unit_id: int = Field(default=1, ge=0, le=255)
    """Modbus unit (slave) address; on RTU lines 1..247."""
    poll_interval: timedelta = timedelta(seconds=1)
    timeout: timedelta = timedelta(milliseconds=500)
    """Per request attempt. Keep timeout × (retries + 1) within the poll interval, so a
    silent device costs one interval and is reported offline in time."""
    retries: int = Field(default=1, ge=0, le=10)
    """Extra attempts of a failed request within one poll (with backoff)."""
    max_gap: int = Field(default=8, ge=0, le=100)
    """Unused registers a merged read may span to save a request."""
    poll_classes: PollClassesConfig | None = None
    """This device's poll-class intervals; unset: the gateway's ``poll_classes``."""
    max_outstanding: int = Field(default=1, ge=1, le=8)
    """``modbus_tcp`` only: requests of one poll in flight at once, each on its own TCP
    connection. Raise it only for a device that accepts that many clients (many allow 1-4);
    a serial bus always carries one request at a time."""
    sunspec: SunSpecConfig | None = None
    """Discover the register map from the device's SunSpec models instead of ``points``."""
    flow: FlowConfig | None = None
    """Its part in the site's power flow (grid, pv, battery), for the dashboard."""
    points: tuple[PointConfig, ...] = ()
    """The register map; required unless ``sunspec`` is set."""
    signing_key_env: str | None = None
    """``mqtt`` devices: environment variable holding the key the device signs its telemetry
    with (see ``ingest.require_signatures``)."""
    signing_key_file: Path | None = None
    """``mqtt`` devices: file holding that key (mode 0600 or stricter)."""

    @field_validator("poll_interval", "timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be greater than zero")
        return value

    @model_validator(mode="before")
    @classmethod
    def _expand_profile(cls, data: object) -> object:
        """A device with ``profile`` gets its points from the library. Expanding is
        idempotent (the loader expands first, to report problems at their lines)."""
        if not isinstance(data, dict) or data.get("profile") is None:
            return data
        # Imported here: the library validates its points with this module's PointConfig.
        from gridpilot.config.profiles import expand_device  # noqa: PLC0415

        expansion = expand_device(data)
        if expansion.problems:
            raise ValueError("; ".join(problem.message for problem in expansion.problems))
        return expansion.device

    @model_validator(mode="after")
    def _check_host(self) -> Self:
        # Cross-point checks (duplicates, overlaps, missing addresses) live in
        # gridpilot.config.semantic so that each error can name its own line.
        protocol = self.protocol
        tcp = protocol in (DeviceProtocol.MODBUS_TCP, DeviceProtocol.MODBUS_RTU_TCP)
        if tcp and self.host is None:
            raise ValueError(f"a {protocol} device needs host")
        if protocol is DeviceProtocol.MODBUS_RTU:
            if self.bus is None:
                raise ValueError("a modbus_rtu device needs bus (the id of a serial_buses entry)")
            if self.host is not None:
                raise ValueError("a modbus_rtu device is on a serial bus: give bus, not host")
        elif self.bus is not None:
            raise ValueError(f"bus is for modbus_rtu devices, not {protocol}")
        rtu = protocol in (DeviceProtocol.MODBUS_RTU, DeviceProtocol.MODBUS_RTU_TCP)
        if self.max_outstanding > 1 and protocol is not DeviceProtocol.MODBUS_TCP:
            raise ValueError(
                f"max_outstanding is for modbus_tcp devices; a {protocol} unit shares a line "
                "that carries one request at a time: remove max_outstanding"
            )
        if rtu and not 1 <= self.unit_id <= 247:
            raise ValueError(
                f"unit_id {self.unit_id}: RTU units are 1..247 (0 is broadcast, which no "
                "unit answers)"
            )
        return self

    @model_validator(mode="after")
    def _points_or_sunspec(self) -> Self:
        if self.sunspec is None and not self.points:
            raise ValueError(
                "a device needs points (its register map), a profile, or sunspec: {} to "
                "discover a SunSpec device's models"
            )
        if self.sunspec is not None and not self.protocol.is_modbus:
            raise ValueError("sunspec discovery is for Modbus devices, not mqtt")
        if self.protocol.is_modbus and (self.signing_key_env or self.signing_key_file):
            raise ValueError(
                "signing_key_* is for mqtt devices; the gateway signs a Modbus device's "
                "telemetry with broker.signing_key_*"
            )
        return self

    def point(self, name: str) -> PointConfig | None:
        for p in self.points:
            if p.point == name:
                return p
        return None


class ApiTlsConfig(_Frozen):
    """HTTPS: PEM certificate (chain) and private key. The key file must be mode 0600."""

    cert_file: Path
    key_file: Path


class ApiConfig(_Frozen):
    """The HTTP API: REST, GraphQL, live stream, dashboard (issue 5).

    Relative paths are relative to the site file's directory (the data directory in the demo).
    """

    host: str = "127.0.0.1"
    """Beyond loopback only with ``tls``: tokens must not cross a network in clear text."""
    port: int = Field(default=8080, ge=0, le=65535)
    tls: ApiTlsConfig | None = None
    """When set, the API serves HTTPS only (TLS 1.3) and refuses plain HTTP."""
    tokens_file: Path = Path("api-tokens.json")
    """Token hashes and roles (``gridpilot token create``); mode 0600."""
    audit_file: Path = Path("api-audit.jsonl")
    """Every command and change made through the API; mode 0600, rotated."""
    audit_max_bytes: int = Field(default=10_000_000, ge=10_000)
    allowed_hosts: tuple[str, ...] = ()
    """``Host`` names accepted besides the loopback ones (e.g. ``ems.plant.example``)."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from a browser page of theirs; none by default."""
    rate_limit_per_minute: float = Field(default=600.0, gt=0)
    """Requests per minute per token, after a burst of ``rate_limit_burst``."""
    rate_limit_burst: int = Field(default=120, ge=1)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    """Larger request bodies are refused with 413."""
    history_max_rows: int = Field(default=100_000, ge=100, le=1_000_000)
    """Most rows one history request returns (a day of 1-second samples is 86,400; a leap
    year of 15-minute buckets 35,136); beyond it the API says which ``every`` to use."""
    command_timeout: timedelta = timedelta(seconds=5)
    """How long a command or controller request waits for its result."""
    stream_clients: int = Field(default=100, ge=1)
    """At most this many live-stream clients (SSE, GraphQL subscriptions) at once."""

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in origins:
            parts = urlsplit(origin)
            if origin == "*" or parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(
                    f"{origin!r} is not an origin: list each one as scheme://host[:port], "
                    "e.g. 'https://grafana.plant.example' ('*' is not allowed: tokens "
                    "would be usable from any page)"
                )
            if parts.path not in ("", "/") or parts.query:
                raise ValueError(f"{origin!r}: an origin has no path or query")
        return tuple(o.rstrip("/") for o in origins)


def _subnet(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    try:
        # strict: "10.0.1.5/24" is refused, it almost always means a typo in the prefix.
        return ipaddress.ip_network(str(value), strict=True)
    except ValueError as exc:
        raise ValueError(
            f"{value!r} is not a subnet: write it as address/prefix with the host bits zero, "
            "e.g. 10.20.0.0/24 or fd00:20::/64"
        ) from exc


Subnet = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_subnet)]


class NetworkConfig(_Frozen):
    """Who may reach this host, for ``gridpilot deploy firewall`` (an nftables ruleset that
    drops everything else)."""

    sensor_subnets: tuple[Subnet, ...] = ()
    """Where devices and gateways publish from: only these reach the MQTT ports."""
    management_subnets: tuple[Subnet, ...] = ()
    """Operators' networks: only these reach the API and SSH."""
    mqtt_ports: tuple[int, ...] = (1883, 8883)
    """Ports of the broker on this host (plain and TLS listeners)."""
    ssh_port: int | None = Field(default=22, ge=1, le=65535)
    """``null``: no SSH rule (the host is managed by console only)."""

    @field_validator("mqtt_ports")
    @classmethod
    def _ports(cls, ports: tuple[int, ...]) -> tuple[int, ...]:
        for port in ports:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is not in 1..65535")
        return ports


def _point_ref(value: str) -> str:
    PointRef.parse(value)
    return value


PointRefText = Annotated[str, AfterValidator(_point_ref)]
"""``"device.point"``, e.g. ``battery.active_power_setpoint_w``."""


class PointLimitConfig(_Frozen):
    """The safety envelope of one point the controller writes."""

    point: PointRefText
    min: float = -math.inf
    max: float = math.inf
    """Defaults to the point's ``valid_range``; set tighter to keep controllers inside."""
    ramp_per_s: float | None = Field(default=None, gt=0)
    """Largest change per second between targets (unit of the point per second)."""
    idle: float | None = None
    """Commanded once when no controller wants the point any more (e.g. battery 0 W)."""
    deadband: float = Field(default=0.0, ge=0)
    """A new target closer than this to the last one sent is not sent again (until
    ``resend_after``)."""

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class BatteryWindowConfig(_Frozen):
    """Whatever a controller asks, no discharge at or below ``soc_min_pct`` and no charge at
    or above ``soc_max_pct``; with the SoC unknown or older than ``max_age``, 0 W."""

    setpoint: PointRefText
    soc: PointRefText
    soc_min_pct: float = Field(default=10.0, ge=0, le=100)
    soc_max_pct: float = Field(default=90.0, ge=0, le=100)
    max_age: timedelta = timedelta(seconds=30)

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.soc_min_pct >= self.soc_max_pct:
            raise ValueError("soc_min_pct must be below soc_max_pct")
        return self


class FailSafeConfig(_Frozen):
    """When any input is older than ``max_age`` (or was never seen), hold ``set``."""

    name: Identifier
    inputs: tuple[PointRefText, ...] = Field(min_length=1)
    max_age: timedelta = timedelta(seconds=10)
    set: dict[PointRefText, float] = Field(min_length=1)
    """Point -> value held while the inputs are stale, e.g.
    ``battery.active_power_setpoint_w: 0``."""


class ControlConfig(_Frozen):
    """The control engine (issue 4). Without this section there is no controller service."""

    id: Identifier = "controller"
    """Device id of the controller on the bus: its metrics are ``{site}/{id}/telemetry``,
    its status ``{site}/{id}/state``, operator requests ``{site}/{id}/request``."""
    cycle: timedelta = timedelta(seconds=1)
    command_ttl: timedelta = timedelta(seconds=10)
    """Expiry of each command: one delivered later than this is not applied by the gateway."""
    resend_after: timedelta = timedelta(seconds=30)
    """An unchanged target is sent again after this long (a device that rebooted gets it)."""
    dry_run: bool = False
    """Decide and record, but send no command."""
    journal: Path | None = Path("control-journal.jsonl")
    """JSON-lines record of operator actions, fail-safes, errors and dry-run decisions;
    relative to the configuration file; ``null`` records only on the bus."""
    journal_max_bytes: int = Field(default=10_000_000, ge=10_000)
    """The journal is rotated (one ``.1`` kept) beyond this size."""
    limits: tuple[PointLimitConfig, ...] = ()
    batteries: tuple[BatteryWindowConfig, ...] = ()
    fail_safes: tuple[FailSafeConfig, ...] = ()
    tariff: Tariff | None = None
    """The site's tariff; given to every controller whose own ``tariff`` is not set."""
    peak_shaving: PeakShavingParams | None = None
    hvac: tuple[HvacParams, ...] = ()
    """The zones whose cooling is planned."""
    hvac_planning: Literal["joint", "per_zone"] = "joint"
    """``joint``: two or more zones are planned in one LP (one ``hvac_group_planner``
    controller), so that their chillers share the room under the billed demand;
    ``per_zone``: one planner per zone, each taking the others' load as forecast."""
    pv_export: PvExportParams | None = None
    vfd: tuple[VfdParams, ...] = ()
    grid_operator: GridOperatorParams | None = None
    """The utility's controls (IEEE 2030.5, ``{site}/grid/controls``) at grid-operator
    priority: which points enforce them."""
    volt_var: VoltVarParams | None = None
    """IEEE 1547 volt-var on one inverter (by var setpoints, or written into its SunSpec 705)."""
    volt_watt: VoltWattParams | None = None
    """IEEE 1547 volt-watt on one inverter: its active power limit from its voltage."""
    freq_droop: FreqDroopParams | None = None
    """IEEE 1547 frequency droop on one inverter: its active power limit from the frequency."""
    constant_pf: ConstantPfParams | None = None
    """IEEE 1547 constant power factor on one inverter (704 PFWInj, or var setpoints)."""
    watt_var: WattVarParams | None = None
    """IEEE 1547 watt-var on one inverter: var setpoints from its active power."""
    enter_service: EnterServiceParams | None = None
    """IEEE 1547 enter service after a trip: the inverter held at 0 % for the delay, then
    ramped."""
    workers: int | None = Field(default=None, ge=0, le=64)
    """Worker processes for the zone planners' LP solves and model identifications, so that
    they never hold up the event loop (a day's LP takes 0.1-1 s of CPU); ``null`` = two, or
    one on a one-core machine; 0 = solve inline in the cycle (tests, tiny sites)."""
    worker_timeout: timedelta = timedelta(seconds=60)
    """A solve or identification running longer is stopped (its worker replaced) and the
    zones fall back to their thermostats until the next one succeeds."""
    worker_queue: int = Field(default=8, ge=1, le=1000)
    """Jobs running or waiting for a worker at most; more are refused (the zone falls back)."""

    @field_validator("cycle", "command_ttl", "resend_after", "worker_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be greater than zero")
        return value

    @model_validator(mode="after")
    def _one_reactive_mode_per_inverter(self) -> Self:
        # IEEE 1547 runs one reactive power mode at a time; two functions commanding the
        # same inverter's vars would silently fight (the first listed wins each cycle).
        seen: dict[str, str] = {}
        for name, section in (
            ("volt_var", self.volt_var),
            ("watt_var", self.watt_var),
            ("constant_pf", self.constant_pf),
        ):
            if section is None:
                continue
            point = section.var_setpoint
            device = point.device if point is not None else section.device
            if device is None:
                continue
            if device in seen:
                raise ValueError(
                    f"{seen[device]} and {name} both set the reactive power of {device}: "
                    "IEEE 1547 runs one reactive power mode at a time, keep one of them"
                )
            seen[device] = name
        return self


_SPARKPLUG_ID = r"^[^/+#]{1,255}$"
"""Sparkplug group, edge node and device ids: any text without MQTT separators/wildcards."""


class SparkplugDeviceConfig(_Frozen):
    """Which GridPilot device a Sparkplug B edge node (or a device behind it) is."""

    edge_node: str = Field(pattern=_SPARKPLUG_ID)
    """The Sparkplug edge node id (``spBv1.0/{group}/NBIRTH/{edge_node}``)."""
    device: str | None = Field(default=None, pattern=_SPARKPLUG_ID)
    """The Sparkplug device id (``.../DBIRTH/{edge_node}/{device}``); absent: the edge
    node's own metrics (NBIRTH/NDATA)."""
    id: Identifier
    """The GridPilot device id its metrics are stored under."""
    points: dict[str, PointName] = {}
    """Metric name -> point name, where the derived name is not the one wanted (see the
    README, "Sparkplug B devices")."""


class SparkplugConfig(_Frozen):
    """Sparkplug B ingest: ingest subscribes to ``spBv1.0/{group}/#`` as a host application."""

    group: str = Field(pattern=_SPARKPLUG_ID)
    """The Sparkplug group id whose edge nodes belong to this site."""
    devices: tuple[SparkplugDeviceConfig, ...] = ()
    auto_devices: bool = False
    """Also store nodes/devices not listed in ``devices``, as ``<edge_node>`` and
    ``<edge_node>-<device>`` (lower-cased, other characters as ``_``)."""
    rebirth_interval: timedelta = timedelta(seconds=5)
    """Least time between two rebirth requests (NCMD ``Node Control/Rebirth``) to one edge
    node; data of the node is ignored until its new NBIRTH."""
    host_id: str | None = Field(default=None, pattern=_SPARKPLUG_ID)
    """Announce ingest as this Sparkplug host application: retained
    ``spBv1.0/STATE/{host_id}`` online while it runs (offline as its will), for edge nodes
    that wait for their primary host before they publish."""
    republish: bool = False
    """Also publish the stored values of the devices listed in ``devices`` as GridPilot
    telemetry (``gridpilot/v1/{site}/{device}/telemetry``), so the controller, the live API
    stream and Home Assistant see them like any device's. Ingest does not store that copy
    again."""

    @model_validator(mode="after")
    def _unique(self) -> Self:
        seen: set[tuple[str, str | None]] = set()
        for d in self.devices:
            key = (d.edge_node, d.device)
            if key in seen:
                raise ValueError(
                    f"edge node {d.edge_node!r}"
                    + (f" device {d.device!r}" if d.device else "")
                    + " is mapped twice"
                )
            seen.add(key)
        return self

    def mapping(self, edge_node: str, device: str | None) -> SparkplugDeviceConfig | None:
        for d in self.devices:
            if d.edge_node == edge_node and d.device == device:
                return d
        return None


class HomeAssistantConfig(_Frozen):
    """Home Assistant MQTT discovery of the site's points (published with the gateway)."""

    enabled: bool = False
    discovery_prefix: str = Field(default="homeassistant", pattern=r"^[^/+#]+(/[^/+#]+)*$")
    """Home Assistant's ``discovery_prefix`` (its MQTT integration's setting)."""


class GridPilotConfig(_Frozen):
    """A whole site file."""

    site: SiteConfig
    broker: BrokerConfig = BrokerConfig()
    storage: StorageConfig = StorageConfig()
    ingest: IngestConfig = IngestConfig()
    gateway: GatewayConfig = GatewayConfig()
    api: ApiConfig = ApiConfig()
    network: NetworkConfig = NetworkConfig()
    control: ControlConfig | None = None
    sparkplug: SparkplugConfig | None = None
    """Sparkplug B edge nodes whose metrics ingest stores."""
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    ieee2030_5: CsipClientConfig | None = None
    """This site as an IEEE 2030.5 (CSIP) client of its utility (``gridpilot run ieee2030_5``)."""
    serial_buses: tuple[SerialBusConfig, ...] = ()
    """Serial lines of ``modbus_rtu`` devices."""
    devices: tuple[DeviceConfig, ...] = ()

    def serial_bus(self, bus_id: str) -> SerialBusConfig | None:
        for b in self.serial_buses:
            if b.id == bus_id:
                return b
        return None

    def device(self, device_id: str) -> DeviceConfig | None:
        for d in self.devices:
            if d.id == device_id:
                return d
        return None
