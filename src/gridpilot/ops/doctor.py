"""``gridpilot doctor CONFIG``: the troubleshooting matrix (ARCHITECTURE.md) as checks.

Each check measures one thing and hands the figures to a rule of
``gridpilot.ops.doctor_rules``, which gives a verdict (``ok``/``warn``/``fail``/``skipped``),
a one-line finding and what to do next:

==============  ============================================================================
check           what is measured
==============  ============================================================================
broker          TCP connect, then MQTT CONNECT/CONNACK with the site's credentials
broker_tls      for ``mqtts://``: TLS handshake, certificate verification, expiry
broker_queues   a local Mosquitto's ``max_queued_messages``/``max_queued_bytes``/
                ``max_inflight_messages`` against the site's message rate
storage         SQLite: write + fsync probes in the database directory, free space;
                PostgreSQL/InfluxDB: connect and time a trivial query
serial_bus      the port exists, and who holds it (like ``fuser -v``)
device          TCP connect, then one Modbus read of its first point with its own timeout:
                timed out, refused or the Modbus exception it answered
device_errors   CRC/framing and timeout rates from the device's retained state
data_gaps       stored samples of the last hour against the poll interval
clock           local clock vs the database server's, or vs the newest stamps made elsewhere
permissions     site directory 0700, secrets and data files 0600
open_files      ``RLIMIT_NOFILE`` against the descriptors the site needs
==============  ============================================================================

Checks run concurrently, each under ``timeout_s``; a check that does not finish in time is
reported as such, and blocking calls (fsync, libpq) run in daemon threads, so the doctor
never hangs on a dead disk or server.

JSON report (``--json``), schema ``gridpilot.doctor/1``::

    {"schema": "gridpilot.doctor/1", "site": "demo", "config": "/abs/site.yaml",
     "started": "2026-11-26T12:00:00.000Z", "duration_s": 1.23,
     "verdict": "ok|warn|fail", "exit_code": 0,
     "counts": {"ok": 20, "warn": 1, "fail": 0, "skipped": 2},
     "checks": [{"check": "device", "subject": "grid_meter", "verdict": "ok",
                 "finding": "...", "fix": null, "duration_s": 0.004, "details": {...}}]}

``check`` and ``subject`` identify a line; ``details`` holds the figures (its keys depend
on the check). Fields are only ever added within a schema version.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import itertools
import logging
import os
import resource
import shutil
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from gridpilot.api.state_cache import DeviceStateCache, EffectiveStatus
from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.bus.errors import BusError, BusRefusedError, BusTimeoutError
from gridpilot.bus.tls import client_ssl_context, describe_tls_failure
from gridpilot.config.models import (
    DeviceConfig,
    DeviceProtocol,
    GridPilotConfig,
    SerialBusConfig,
    site_path,
)
from gridpilot.config.secrets import SecretError
from gridpilot.fieldbus.errors import FieldbusError
from gridpilot.fieldbus.planner import ReadBlock
from gridpilot.fieldbus.serial_port import describe_holders, port_holders
from gridpilot.fieldbus.sunspec import SunSpecError
from gridpilot.fieldbus.sunspec_io import find_base, holding_reader
from gridpilot.gateway.health import hint_for
from gridpilot.gateway.points import polled_specs
from gridpilot.gateway.service import ModbusConnector
from gridpilot.model import SeriesKey, parse_timestamp_ms, to_rfc3339
from gridpilot.model.time import now_ms as wall_now_ms
from gridpilot.net import is_loopback_host
from gridpilot.ops.doctor_rules import (
    CheckResult,
    ClockEvidence,
    Finding,
    Verdict,
    fd_budget,
    find_gaps,
    is_service_command,
    judge_clock,
    judge_error_rates,
    judge_gaps,
    judge_mode,
    judge_open_files,
    judge_queue_limits,
    judge_storage_probe,
    parse_mosquitto_conf,
    parse_proc_limits,
    site_message_rate,
    worst,
)
from gridpilot.ops.gaps import gap_series
from gridpilot.storage import open_storage
from gridpilot.storage.base import Storage, StorageError

__all__ = ["SCHEMA", "DoctorReport", "run_doctor"]

log = logging.getLogger(__name__)

SCHEMA: Final = "gridpilot.doctor/1"
DEFAULT_TIMEOUT_S: Final = 10.0
_STATE_WAIT_S: Final = 2.0  # retained states arrive right after SUBACK; wait this long at most
_PROBES: Final = 3  # latency probes per storage
_PROBE_BYTES: Final = 4096
_GAP_WINDOW_MS: Final = 3_600_000
_CERT_WARN_DAYS: Final = 30
_MOSQUITTO_ETC: Final = Path("/etc/mosquitto/mosquitto.conf")

_T = TypeVar("_T")


# ------------------------------------------------------------------ report


@dataclass(slots=True)
class DoctorReport:
    """What ``run_doctor`` found; ``exit_code`` is 1 when any check failed."""

    site: str
    config_path: Path
    started_ms: int
    duration_s: float
    results: list[CheckResult] = field(default_factory=list)

    @property
    def verdict(self) -> Verdict:
        overall = worst(r.verdict for r in self.results)
        return Verdict.OK if overall is Verdict.SKIPPED else overall

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict is Verdict.FAIL else 0

    def counts(self) -> dict[str, int]:
        return {v.value: sum(r.verdict is v for r in self.results) for v in Verdict}

    def as_json(self) -> dict[str, Any]:
        """The machine-readable report (schema ``gridpilot.doctor/1``, module docstring)."""
        return {
            "schema": SCHEMA,
            "site": self.site,
            "config": str(self.config_path),
            "started": to_rfc3339(self.started_ms),
            "duration_s": round(self.duration_s, 3),
            "verdict": self.verdict.value,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "checks": [
                {
                    "check": r.check,
                    "subject": r.subject,
                    "verdict": r.verdict.value,
                    "finding": r.finding,
                    "fix": r.fix,
                    "duration_s": round(r.duration_s, 3),
                    "details": dict(r.details),
                }
                for r in self.results
            ],
        }

    def render_text(self) -> str:
        """One line per check with its verdict, then what to do about each problem."""
        labels = {
            Verdict.OK: "ok",
            Verdict.SKIPPED: "skip",
            Verdict.WARN: "WARN",
            Verdict.FAIL: "FAIL",
        }
        lines = [
            f"gridpilot doctor: site {self.site} ({self.config_path}), "
            f"{len(self.results)} checks in {self.duration_s:.1f} s"
        ]
        for r in self.results:
            lines.append(f"{labels[r.verdict]:<5} {r.check:<13} {r.subject}: {r.finding}")
        fixes = [r for r in self.results if r.fix and r.verdict in (Verdict.FAIL, Verdict.WARN)]
        fixes.sort(key=lambda r: -r.verdict.rank)
        if fixes:
            lines.append("")
            lines.append("What to do next:")
            for r in fixes:
                lines.append(f"  {labels[r.verdict]} {r.check} {r.subject}: {r.fix}")
        c = self.counts()
        lines.append("")
        lines.append(
            f"{c['fail']} failed, {c['warn']} warning(s), {c['ok']} ok, {c['skipped']} skipped: "
            + {
                Verdict.OK: "healthy",
                Verdict.WARN: "working, with warnings",
                Verdict.FAIL: "something is broken (see above)",
            }.get(self.verdict, "")
        )
        return "\n".join(lines)


# ------------------------------------------------------------------ running


async def run_doctor(
    config: GridPilotConfig,
    config_path: Path,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    proc: Path = Path("/proc"),
) -> DoctorReport:
    """Run every check of the site in ``config`` (loaded from ``config_path``, absolute)
    concurrently, each within ``timeout_s``. Never raises for what it finds."""
    started = wall_now_ms()
    clock_start = time.monotonic()
    if not config_path.is_absolute():
        raise ValueError(f"config_path must be absolute, not {config_path}")
    base_dir = config_path.parent
    broker_task = asyncio.create_task(_broker_checks(config, base_dir, timeout_s))
    queues_task = asyncio.create_task(
        _guard("broker_queues", _broker_label(config), _queue_limits(config, proc), timeout_s)
    )
    storage_task = asyncio.create_task(_storage_checks(config, base_dir, timeout_s))
    devices_task = asyncio.create_task(_device_checks(config, config_path, timeout_s, proc))
    # Files and /proc are local, but a stat on a dead network filesystem can hang too.
    files_task = asyncio.create_task(
        _guard(
            "permissions",
            str(base_dir),
            _in_thread(lambda: _permissions(config, config_path)),
            timeout_s,
        )
    )
    services_task = asyncio.create_task(
        _in_thread(lambda: _service_open_files(config, config_path, proc))
    )
    broker, queues, storage, devices, files = await asyncio.gather(
        broker_task, queues_task, storage_task, devices_task, files_task
    )
    try:
        async with asyncio.timeout(timeout_s):
            services = await services_task
    except TimeoutError:
        services = []
    clock = CheckResult.of(
        "clock",
        "this host",
        judge_clock([*storage.clock, *broker.clock], config.ingest.max_future_skew.total_seconds()),
    )
    results = [
        *broker.results[:2],
        queues,
        *storage.results[:1],
        *devices,
        *broker.results[2:],
        *storage.results[1:],
        clock,
        files,
        CheckResult.of("open_files", "this shell", _open_files(config)),
        *(CheckResult.of("open_files", subject, finding) for subject, finding in services),
    ]
    return DoctorReport(
        config.site.id, config_path, started, time.monotonic() - clock_start, results
    )


async def _guard(
    check: str,
    subject: str,
    work: Awaitable[Finding],
    timeout_s: float,
    *,
    on_timeout: Verdict = Verdict.FAIL,
    timeout_fix: str | None = None,
) -> CheckResult:
    """Run one check within ``timeout_s``; a timeout or an unexpected error becomes its
    finding instead of ending the report."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            finding = await work
    except TimeoutError:
        finding = Finding(
            on_timeout,
            f"did not finish within {timeout_s:g} s",
            timeout_fix
            or "something hangs there (a dead host, disk or server); raise "
            "--timeout to wait longer",
        )
    except Exception as exc:  # one broken check must not take the report down
        log.debug("doctor check %s %s failed", check, subject, exc_info=True)
        finding = Finding(
            Verdict.FAIL,
            f"the check itself failed: {type(exc).__name__}: {exc}",
            "run 'gridpilot -vv doctor ...' for the traceback and report it",
        )
    return CheckResult.of(check, subject, finding, time.monotonic() - start)


async def _in_thread(fn: Callable[[], _T]) -> _T:
    """``fn()`` in a daemon thread: unlike the default executor, a thread stuck in a
    syscall (fsync on a dead disk, a libpq connect) neither blocks the loop nor the exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if future.done():
            return  # the caller gave up (timeout)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]  # None only with an error

    def work() -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001  # handed to the awaiting task as is
            outcome: tuple[_T | None, BaseException | None] = (None, exc)
        else:
            outcome = (result, None)
        # A closed loop (RuntimeError): nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=work, name="gridpilot-doctor", daemon=True).start()
    return await future


async def _tcp_connect(host: str, port: int, timeout_s: float) -> tuple[str, str]:
    """(kind, text) of a TCP connect: ``ok``, ``refused``, ``timeout``, ``unresolved`` or
    ``unreachable``, with a sentence for the finding."""
    where = f"{host}:{port}"
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return "timeout", (
            f"timed out: no TCP answer from {where} within {timeout_s:g} s (host down, "
            "a firewall dropping packets, or a wrong address)"
        )
    except ConnectionRefusedError:
        return "refused", f"refused: nothing listens on {where} (connection refused)"
    except socket.gaierror as exc:
        return "unresolved", f"cannot resolve {host!r}: {exc.strerror}"
    except OSError as exc:
        return "unreachable", f"cannot reach {where}: {exc.strerror or exc}"
    writer.close()
    try:
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        pass
    return "ok", f"TCP connect to {where}"


# ------------------------------------------------------------------ broker


@dataclass(slots=True)
class _BrokerOutcome:
    results: list[CheckResult]
    """broker, broker_tls, then one device_errors per polled device."""
    clock: list[ClockEvidence]


def _broker_label(config: GridPilotConfig) -> str:
    broker = config.broker
    return broker.url or f"embedded broker on 127.0.0.1:{broker.embedded_port}"


async def _broker_checks(
    config: GridPilotConfig, base_dir: Path, timeout_s: float
) -> _BrokerOutcome:
    label = _broker_label(config)
    states: DeviceStateCache | None = None
    clock: list[ClockEvidence] = []
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s + _STATE_WAIT_S):
            broker, tls, states = await _probe_broker(config, base_dir, timeout_s)
    except TimeoutError:
        broker = Finding(
            Verdict.FAIL,
            f"the broker accepts TCP but the MQTT session did not settle within {timeout_s:g} s",
            "check the broker's log (journalctl -u mosquitto) and its load; raise --timeout "
            "for a slow link",
        )
        tls = Finding(Verdict.SKIPPED, "the broker check did not finish")
    elapsed = time.monotonic() - start
    results = [
        CheckResult.of("broker", label, broker, elapsed),
        CheckResult.of("broker_tls", label, tls),
    ]
    polled = [d for d in config.devices if d.protocol.is_modbus]
    for device in polled:
        if states is None:
            finding = Finding(
                Verdict.SKIPPED,
                "the broker cannot be read: the error counters are in the device states there",
            )
        else:
            state = states.get(device.id)
            stale = state is not None and states.status(device.id) is EffectiveStatus.UNKNOWN
            finding = judge_error_rates(device.id, state, stale)
        results.append(CheckResult.of("device_errors", device.id, finding))
    if states is not None:
        clock.extend(_state_clock(states, polled))
    return _BrokerOutcome(results, clock)


def _state_clock(states: DeviceStateCache, devices: Sequence[DeviceConfig]) -> list[ClockEvidence]:
    """The newest device state's stamp (made by the gateway's clock) against ours."""
    stamps: list[int] = []
    for device in devices:
        state = states.get(device.id)
        if state is None or states.status(device.id) is EffectiveStatus.UNKNOWN:
            continue
        try:
            stamps.append(parse_timestamp_ms(state.get("ts")))
        except ValueError:
            continue
    if not stamps:
        return []
    offset_s = (max(stamps) - wall_now_ms()) / 1000
    return [ClockEvidence("gateway (newest device state)", offset_s, ahead_only=True)]


async def _probe_broker(
    config: GridPilotConfig, base_dir: Path, timeout_s: float
) -> tuple[Finding, Finding, DeviceStateCache | None]:
    broker = config.broker
    embedded = broker.url is None
    host, port = broker.host, broker.port
    try:
        address = (
            BrokerAddress(host, port)
            if embedded
            else BrokerAddress.from_config(broker, base_dir=base_dir)
        )
    except BusRefusedError as exc:
        return (
            Finding(
                Verdict.FAIL,
                f"the broker settings cannot be used: {exc}",
                "fix what the message names (the permissions check lists the modes of "
                "secret files); the services refuse to start until then",
            ),
            Finding(Verdict.SKIPPED, "no usable credentials or TLS files to connect with"),
            None,
        )
    tls_skipped = Finding(
        Verdict.SKIPPED,
        "plain MQTT on loopback (TLS is for brokers across a network)"
        if is_loopback_host(host)
        else "the broker does not use TLS",
    )
    if not address.tls and not is_loopback_host(host):
        tls_skipped = Finding(
            Verdict.WARN,
            f"plain MQTT to {host}: passwords and telemetry cross the network in clear text",
            "use a TLS listener: broker.url mqtts://HOST:8883 (see deploy/mosquitto/)",
        )
    kind, text = await _tcp_connect(host, port, timeout_s)
    if kind != "ok":
        if embedded:
            return (
                Finding(
                    Verdict.WARN,
                    f"the embedded broker is not running ({text}); it runs only inside "
                    "'gridpilot run' and 'gridpilot demo', and takes a free port when "
                    f"{port} is taken",
                    "start the services ('gridpilot run all CONFIG'); for production set "
                    "broker.url to a Mosquitto (deploy/mosquitto/gridpilot.conf)",
                ),
                tls_skipped,
                None,
            )
        return (
            Finding(
                Verdict.FAIL,
                text,
                f"start the broker ('systemctl start mosquitto'; 'ss -ltnp' lists what "
                f"listens on :{port}) or correct broker.url in the site file; from another "
                "host also check firewalls (gridpilot deploy firewall)",
                {"tcp": kind},
            ),
            Finding(Verdict.SKIPPED, "the broker cannot be reached"),
            None,
        )
    tls = (
        await _tls_handshake(host, port, address.ssl_context, timeout_s)
        if address.tls
        else tls_skipped
    )
    if tls.verdict is Verdict.FAIL:
        return (
            Finding(
                Verdict.FAIL,
                f"TCP connects to {host}:{port}, but TLS fails (see broker_tls)",
                tls.fix,
            ),
            tls,
            None,
        )
    mqtt, states = await _mqtt_session(config, address, timeout_s)
    return mqtt, tls, states


async def _tls_handshake(
    host: str, port: int, context: ssl.SSLContext | None, timeout_s: float
) -> Finding:
    """The handshake the bus client makes, with its context (``broker.tls``: CA, client
    certificate, oldest version), and what the broker's certificate says."""
    context = context or client_ssl_context(None)
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host
            )
    except ssl.SSLCertVerificationError as exc:
        return Finding(
            Verdict.FAIL,
            f"certificate of {host}:{port} not trusted: {exc.verify_message}",
            describe_tls_failure(exc),
            {"verify_code": exc.verify_code},
        )
    except ssl.SSLError as exc:
        return Finding(
            Verdict.FAIL,
            f"TLS handshake with {host}:{port} failed: {exc.reason or exc}",
            describe_tls_failure(exc)
            or f"check that port {port} is the broker's TLS listener (certfile/keyfile in "
            "mosquitto.conf)",
        )
    except TimeoutError:
        return Finding(
            Verdict.FAIL,
            f"no TLS handshake with {host}:{port} within {timeout_s:g} s",
            "the port may be a plain MQTT listener: use mqtt:// for it, or the TLS port",
        )
    except OSError as exc:
        return Finding(Verdict.FAIL, f"TLS connection to {host}:{port} failed: {exc}", None)
    # With TLS 1.3 the broker judges our certificate after the handshake: its alert (e.g.
    # "certificate required") arrives on the first read. An MQTT broker sends nothing
    # before CONNECT, so a quiet moment means it accepted us.
    try:
        async with asyncio.timeout(min(0.5, timeout_s)):
            await reader.read(1)
    except ssl.SSLError as exc:
        writer.close()
        return Finding(
            Verdict.FAIL,
            f"{host}:{port} refused this client after the handshake: {exc.reason or exc}",
            describe_tls_failure(exc) or "check broker.tls.cert_file and key_file",
        )
    except (TimeoutError, OSError):
        pass
    ssl_object = writer.get_extra_info("ssl_object")
    cert = writer.get_extra_info("peercert") or {}
    writer.close()
    version = ssl_object.version() if ssl_object is not None else "?"
    cipher = ssl_object.cipher()[0] if ssl_object is not None and ssl_object.cipher() else "?"
    not_after = cert.get("notAfter")
    details: dict[str, Any] = {"version": version, "cipher": cipher, "not_after": not_after}
    text = f"{version} {cipher}, certificate verified"
    if isinstance(not_after, str):
        expires = ssl.cert_time_to_seconds(not_after)
        days = (expires - time.time()) / 86400
        details["days_left"] = round(days, 1)
        text += f", valid for {days:.0f} more days"
        if days < _CERT_WARN_DAYS:
            return Finding(
                Verdict.WARN,
                text,
                "renew the broker's certificate before it expires (every client will "
                "refuse it then)",
                details,
            )
    return Finding(Verdict.OK, text, None, details)


async def _mqtt_session(
    config: GridPilotConfig, address: BrokerAddress, timeout_s: float
) -> tuple[Finding, DeviceStateCache | None]:
    """CONNECT/CONNACK with the site's credentials, then the retained device states."""
    client_id = f"{config.broker.client_id_prefix}-doctor-{os.getpid()}"
    start = time.monotonic()
    bus = BusClient(
        address,
        client_id,
        connect_timeout_s=timeout_s,
        backoff_initial_s=timeout_s,  # one attempt is what we judge; no retry storm
        close_timeout_s=0.5,
    )
    async with bus:
        try:
            # Entering waited for the first attempt to settle: its outcome is known now
            # (a short wait covers the hand-over); retries would only repeat it.
            await bus.wait_connected(timeout=0.5)
        except BusRefusedError as exc:
            return (
                Finding(
                    Verdict.FAIL,
                    f"the broker refused the login: {exc}",
                    "check broker.username and the password (broker.password_env or "
                    "password_file) against the broker's password file "
                    "(mosquitto_passwd), and its ACL",
                ),
                None,
            )
        except BusTimeoutError as exc:
            cause = f" ({exc.__cause__})" if exc.__cause__ else ""
            return (
                Finding(
                    Verdict.FAIL,
                    f"TCP connects, but no MQTT session within {timeout_s:g} s{cause}",
                    "check that the port is an MQTT listener (a TLS port needs mqtts://) and "
                    "the broker's log (journalctl -u mosquitto)",
                ),
                None,
            )
        connack_ms = (time.monotonic() - start) * 1000
        version = bus.mqtt_version
        spoken = "5" if version is not None and version.value == 5 else "3.1.1"
        finding = Finding(
            Verdict.OK,
            f"MQTT {spoken} session in {connack_ms:.0f} ms"
            + (f" as {address.username}" if address.username else ""),
            None,
            {"connack_ms": round(connack_ms, 1), "mqtt_version": spoken},
        )
        states = DeviceStateCache.for_config(config)
        try:
            await _collect_states(bus, states, config)
        except BusError as exc:
            return (
                Finding(
                    Verdict.WARN,
                    f"{finding.finding}, but the device states cannot be read: {exc}",
                    "allow this user to subscribe to gridpilot/v1/SITE/+/state in the ACL",
                ),
                None,
            )
    return finding, states


async def _collect_states(
    bus: BusClient, states: DeviceStateCache, config: GridPilotConfig
) -> None:
    """Take the retained states of the site; they arrive right after the SUBACK, so this
    waits until every polled device and the gateway have one, or ``_STATE_WAIT_S``."""
    expected = {d.id for d in config.devices if d.protocol.is_modbus} | {config.gateway.id}
    await bus.subscribe(states.topic_filter, qos=1)
    try:
        async with asyncio.timeout(_STATE_WAIT_S):
            async for message in bus.messages():
                states.apply(message.topic, message.payload)
                if all(states.get(d) is not None for d in expected):
                    return
    except TimeoutError:
        return


async def _queue_limits(config: GridPilotConfig, proc: Path) -> Finding:
    broker = config.broker
    if broker.url is None:
        return Finding(
            Verdict.SKIPPED,
            "the embedded demo broker has no queue settings; production sites use Mosquitto "
            "with deploy/mosquitto/gridpilot.conf",
        )
    host = broker.host
    local = is_loopback_host(host) or host in {socket.gethostname(), socket.getfqdn()}
    if not local:
        return Finding(
            Verdict.SKIPPED,
            f"the broker runs on {host}: its configuration cannot be read from here "
            "(run 'gridpilot doctor' on that host, or compare its mosquitto.conf with "
            "deploy/mosquitto/gridpilot.conf)",
        )
    looked: list[str] = []
    # dict.fromkeys: the system broker runs from the file in /etc, listed once.
    for path in dict.fromkeys([*_mosquitto_processes_configs(proc), _MOSQUITTO_ETC]):
        texts = await _in_thread(lambda p=path: _read_mosquitto_conf(p))  # type: ignore[misc]
        if texts is None:
            looked.append(f"{path} (not readable)")
            continue
        limits = parse_mosquitto_conf(texts)
        if broker.port not in limits.listeners:
            looked.append(f"{path} (listens on {', '.join(map(str, limits.listeners))})")
            continue
        return judge_queue_limits(limits, site_message_rate(config))
    return Finding(
        Verdict.SKIPPED,
        f"no readable Mosquitto configuration with a listener on port {broker.port}"
        + (f" (looked at: {_some(looked)})" if looked else "")
        + "; is the broker another MQTT server?",
    )


def _some(items: Sequence[str], shown: int = 3) -> str:
    more = len(items) - shown
    return "; ".join(items[:shown]) + (f"; and {more} more" if more > 0 else "")


def _mosquitto_processes_configs(proc: Path) -> list[Path]:
    """The ``-c FILE`` of every running ``mosquitto`` (relative to its working directory)."""
    found: list[Path] = []
    try:
        entries = list(proc.iterdir())
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or os.path.basename(argv[0].decode(errors="replace")) != "mosquitto":
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        for flag, value in itertools.pairwise(args):
            if flag in ("-c", "--config-file"):
                path = Path(value)
                if not path.is_absolute():
                    try:
                        path = Path(os.readlink(entry / "cwd")) / path
                    except OSError:
                        continue
                found.append(path)
    return found


def _read_mosquitto_conf(path: Path) -> dict[str, str] | None:
    """The file and the ``*.conf`` of its ``include_dir`` lines, in Mosquitto's order."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    texts = {str(path): text}
    for line in text.splitlines():
        key, _, rest = line.strip().partition(" ")
        if key == "include_dir" and rest.strip():
            directory = Path(rest.strip())
            try:
                included = sorted(directory.glob("*.conf"))
            except OSError:
                continue
            for file in included:
                try:
                    texts[str(file)] = file.read_text(encoding="utf-8", errors="replace")
                except OSError:
                    continue
    return texts


# ------------------------------------------------------------------ storage


@dataclass(slots=True)
class _StorageOutcome:
    results: list[CheckResult]
    """storage, then one data_gaps per device."""
    clock: list[ClockEvidence]


async def _storage_checks(
    config: GridPilotConfig, base_dir: Path, timeout_s: float
) -> _StorageOutcome:
    clock: list[ClockEvidence] = []
    subject = _storage_label(config, base_dir)
    probe = await _guard("storage", subject, _probe_storage(config, base_dir, clock), timeout_s)
    results = [probe]
    usable = probe.verdict is not Verdict.FAIL
    database = site_path(base_dir, config.storage.path.expanduser())
    if config.storage.backend == "sqlite" and not database.exists():
        usable = False
        reason = "no database yet (ingest has not stored anything)"
    else:
        reason = "the storage cannot be read (see the storage check)"
    if not usable:
        results.extend(
            CheckResult.of("data_gaps", d.id, Finding(Verdict.SKIPPED, reason))
            for d in config.devices
        )
        return _StorageOutcome(results, clock)
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            gaps = await _data_gaps(config, base_dir, clock)
    except TimeoutError:
        gaps = {
            d.id: Finding(
                Verdict.WARN,
                f"reading the last hour did not finish within {timeout_s:g} s",
                "the storage is slow to answer (see the storage check); raise --timeout",
            )
            for d in config.devices
        }
    except StorageError as exc:
        gaps = {
            d.id: Finding(Verdict.FAIL, f"cannot read the stored data: {exc}", None)
            for d in config.devices
        }
    elapsed = time.monotonic() - start
    results.extend(
        CheckResult.of("data_gaps", d.id, gaps[d.id], elapsed / max(1, len(config.devices)))
        for d in config.devices
    )
    return _StorageOutcome(results, clock)


def _storage_label(config: GridPilotConfig, base_dir: Path) -> str:
    storage = config.storage
    if storage.backend == "postgresql":
        pg = storage.postgresql
        return "postgresql " + (pg.dsn if pg.dsn else f"{pg.host}:{pg.port}/{pg.dbname}")
    if storage.backend == "influxdb":
        return f"influxdb {storage.influxdb.url} database {storage.influxdb.database}"
    return f"sqlite {site_path(base_dir, storage.path.expanduser())}"


async def _probe_storage(
    config: GridPilotConfig, base_dir: Path, clock: list[ClockEvidence]
) -> Finding:
    backend = config.storage.backend
    if backend == "postgresql":
        return await _probe_postgres(config, base_dir, clock)
    if backend == "influxdb":
        return await _probe_influx(config, base_dir, clock)
    return await _probe_sqlite(site_path(base_dir, config.storage.path.expanduser()))


async def _probe_sqlite(path: Path) -> Finding:
    directory = path.parent
    if not directory.is_dir():
        return Finding(
            Verdict.WARN,
            f"the database directory {directory} does not exist yet",
            f"create it for the services' user: install -d -m 700 {directory} (ingest "
            "creates it when it may)",
        )

    def probe() -> tuple[list[float], int, int, bool | None]:
        target = directory / f".gridpilot-doctor-{os.getpid()}.probe"
        block = os.urandom(_PROBE_BYTES)
        latencies: list[float] = []
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                for _ in range(_PROBES):
                    start = time.perf_counter()
                    os.pwrite(fd, block, 0)
                    os.fsync(fd)
                    latencies.append(time.perf_counter() - start)
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
        usage = shutil.disk_usage(directory)
        usable = os.access(path, os.R_OK | os.W_OK) if path.exists() else None
        return latencies, usage.free, usage.total, usable

    try:
        latencies, free, total, usable = await _in_thread(probe)
    except PermissionError:
        return Finding(
            Verdict.FAIL,
            f"cannot write in {directory}: permission denied",
            f"let the services' user write there (chown gridpilot: {directory}), or run the "
            "doctor as that user (sudo -u gridpilot gridpilot doctor ...)",
        )
    except OSError as exc:
        return Finding(
            Verdict.FAIL,
            f"cannot write in {directory}: {exc.strerror or exc}",
            "a full disk ('df -h') or a read-only filesystem ('mount'); free space or "
            "remount it read-write",
        )
    finding = judge_storage_probe(f"write+fsync in {directory}", latencies, free, total)
    if usable is False:
        return Finding(
            Verdict.FAIL,
            f"{finding.finding}; but the database {path} is not readable and writable by this user",
            "chown it to the services' user, or run the doctor as that user",
            finding.details,
        )
    if usable is None:
        return Finding(
            worst((finding.verdict, Verdict.WARN)),
            f"{finding.finding}; no database at {path} yet",
            finding.fix or "start ingest ('gridpilot run ingest CONFIG') to create it",
            finding.details,
        )
    return finding


async def _probe_postgres(
    config: GridPilotConfig, base_dir: Path, clock: list[ClockEvidence]
) -> Finding:
    try:
        import psycopg  # noqa: PLC0415 - optional extra

        from gridpilot.storage.postgres import Target  # noqa: PLC0415
    except ImportError:
        return Finding(
            Verdict.FAIL,
            "storage.backend is postgresql but psycopg is not installed",
            "pip install 'gridpilot[postgresql]'",
        )
    try:
        target = Target.from_config(config.storage.postgresql, base_dir)
    except (StorageError, SecretError) as exc:
        return Finding(Verdict.FAIL, str(exc), "see the permissions check")

    def probe() -> tuple[list[float], float, float]:
        conn = target.connect()
        try:
            latencies = []
            server_s = local_s = 0.0
            for _ in range(_PROBES):
                start = time.time()
                tick = time.perf_counter()
                row = conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
                latencies.append(time.perf_counter() - tick)
                if row is not None:
                    server_s = float(row[0])
                    local_s = (start + time.time()) / 2
            return latencies, server_s, local_s
        finally:
            conn.close()

    try:
        latencies, server_s, local_s = await _in_thread(probe)
    except StorageError as exc:
        return Finding(Verdict.FAIL, str(exc), None)
    except psycopg.Error as exc:
        return Finding(Verdict.FAIL, f"{target.describe}: {exc}", None)
    if server_s:
        clock.append(ClockEvidence("PostgreSQL server", server_s - local_s))
    return judge_storage_probe(f"{target.describe}, SELECT", latencies)


async def _probe_influx(
    config: GridPilotConfig, base_dir: Path, clock: list[ClockEvidence]
) -> Finding:
    try:
        import httpx  # noqa: PLC0415 - optional extra

        from gridpilot.storage.influx import InfluxStorage  # noqa: PLC0415
    except ImportError:
        return Finding(
            Verdict.FAIL,
            "storage.backend is influxdb but httpx is not installed",
            "pip install 'gridpilot[influxdb]'",
        )
    influx = config.storage.influxdb
    try:
        storage = InfluxStorage.from_config(influx, config.storage.retention, base_dir)
    except StorageError as exc:
        return Finding(Verdict.FAIL, str(exc), "see the permissions check")
    latencies: list[float] = []
    clock_offset: float | None = None
    timeout = httpx.Timeout(influx.timeout.total_seconds())
    async with httpx.AsyncClient(base_url=influx.url, timeout=timeout, trust_env=False) as http:
        for _ in range(_PROBES):
            start = time.time()
            tick = time.perf_counter()
            try:
                response = await http.get("/ping")
            except httpx.HTTPError as exc:
                return Finding(
                    Verdict.FAIL,
                    f"InfluxDB at {influx.url} does not answer: {exc or type(exc).__name__}",
                    "check that influxd runs ('systemctl status influxdb') and that "
                    f"storage.influxdb.url is right (try: curl -i {influx.url}/ping)",
                )
            latencies.append(time.perf_counter() - tick)
            date = response.headers.get("date")
            if date:
                server = email.utils.parsedate_to_datetime(date).timestamp()
                # The header has whole seconds: compare with the middle of that second.
                clock_offset = server + 0.5 - (start + time.time()) / 2
        if clock_offset is not None:
            clock.append(ClockEvidence("InfluxDB server (HTTP Date, 1 s resolution)", clock_offset))
    tick = time.perf_counter()
    try:
        async with storage:  # /ping, CREATE DATABASE when configured, a one-row query
            pass
    except StorageError as exc:
        return Finding(Verdict.FAIL, str(exc), None)
    query_s = time.perf_counter() - tick
    finding = judge_storage_probe(f"InfluxDB {influx.url}, /ping", latencies)
    return Finding(
        finding.verdict,
        f"{finding.finding}; database {influx.database!r} opened and queried in "
        f"{query_s * 1000:.0f} ms",
        finding.fix,
        {**finding.details, "open_query_ms": round(query_s * 1000, 1)},
    )


async def _data_gaps(
    config: GridPilotConfig, base_dir: Path, clock: list[ClockEvidence]
) -> dict[str, Finding]:
    site = config.site.id
    async with open_storage(config.storage, base_dir) as storage:
        now = wall_now_ms()
        stored = await storage.series(site)
        latest = await storage.latest(site)
        if latest:
            newest = max(v.ts_ms for v in latest)
            clock.append(
                ClockEvidence(
                    "newest stored sample (stamped by its publisher)",
                    (newest - now) / 1000,
                    ahead_only=True,
                )
            )
        points: dict[str, list[str]] = {}
        for key in stored:
            points.setdefault(key.device, []).append(key.point)
        findings = await asyncio.gather(
            *(_device_gaps(storage, config, d, points.get(d.id, []), now) for d in config.devices)
        )
    return {d.id: f for d, f in zip(config.devices, findings, strict=True)}


async def _device_gaps(
    storage: Storage, config: GridPilotConfig, device: DeviceConfig, stored: list[str], now: int
) -> Finding:
    """Gaps of one device, judged on one of its series: the stored point polled most often
    (they share its telemetry messages, so one series shows the device's gaps)."""
    if not stored:
        return Finding(
            Verdict.FAIL,
            f"nothing of {device.id} was ever stored",
            "check the device check above, that the gateway runs and polls it ('gridpilot "
            "tail' shows its telemetry) and that ingest runs",
        )
    chosen = gap_series(config, device, stored)
    assert chosen is not None  # noqa: S101 -- stored is not empty
    point, interval_ms = chosen
    window_start = now - _GAP_WINDOW_MS
    lookback = int(3 * (interval_ms or 60_000))
    rows = await storage.history(
        SeriesKey(config.site.id, device.id, point), window_start - lookback, now + 1
    )
    stamps = [r.ts_ms for r in rows]
    if interval_ms is None:
        # An MQTT device publishes at its own pace: judge against its usual spacing.
        spacings = [b - a for a, b in itertools.pairwise(stamps) if b > a]
        if len(spacings) < 3:
            return Finding(
                Verdict.SKIPPED,
                f"{len(stamps)} samples of {point} in the last hour: too few to tell its pace",
            )
        interval_ms = float(statistics.median(spacings))
    summary = find_gaps(
        stamps,
        interval_ms=interval_ms,
        window_start_ms=window_start,
        now_ms=now,
        latency_ms=int(config.storage.flush_interval.total_seconds() * 1000) + 2000,
        data_before_window=any(t < window_start for t in stamps),
    )
    return judge_gaps(device.id, point, summary, _clock_text)


def _clock_text(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# ------------------------------------------------------------------ devices


async def _device_checks(
    config: GridPilotConfig, config_path: Path, timeout_s: float, proc: Path
) -> list[CheckResult]:
    results: list[CheckResult] = []
    bus_blocked: dict[str, str] = {}
    used_buses = {d.bus for d in config.devices if d.protocol is DeviceProtocol.MODBUS_RTU}
    for bus in config.serial_buses:
        if bus.id not in used_buses:
            continue
        start = time.monotonic()
        finding, blocked = await _in_thread(
            lambda b=bus: _serial_bus(b, config_path, proc)  # type: ignore[misc]
        )
        if blocked is not None:
            bus_blocked[bus.id] = blocked
        results.append(
            CheckResult.of(
                "serial_bus", f"{bus.id} ({bus.port})", finding, time.monotonic() - start
            )
        )
    connector = ModbusConnector(config)
    probes = []
    for device in config.devices:
        if not device.protocol.is_modbus:
            probes.append(
                _constant(
                    Finding(
                        Verdict.SKIPPED,
                        "an MQTT device publishes by itself: nothing to poll (see data_gaps)",
                    )
                )
            )
        elif device.bus is not None and device.bus in bus_blocked:
            probes.append(_constant(Finding(Verdict.SKIPPED, bus_blocked[device.bus])))
        else:
            probes.append(_probe_device(device, connector))
    guarded = await asyncio.gather(
        *(
            _guard(
                "device",
                device.id,
                probe,
                timeout_s,
                timeout_fix=_probe_timeout_fix(device),
            )
            for device, probe in zip(config.devices, probes, strict=True)
        )
    )
    return [*results, *guarded]


def _probe_timeout_fix(device: DeviceConfig) -> str:
    if device.protocol in (DeviceProtocol.MODBUS_RTU, DeviceProtocol.MODBUS_RTU_TCP):
        # Units of one line are probed one after the other, like the gateway polls them.
        return (
            "the units of this line are probed one at a time: silent units ahead of it use "
            "up the time (see their lines); raise --timeout, or " + hint_for("timeout")
        )
    return hint_for("timeout")


async def _constant(finding: Finding) -> Finding:
    return finding


def _serial_bus(bus: SerialBusConfig, config_path: Path, proc: Path) -> tuple[Finding, str | None]:
    """The port of a serial bus: present, and free or held by whom. The second value says
    why its units are not probed (None: probe them)."""
    port = bus.port
    if not os.path.exists(port):
        return (
            Finding(
                Verdict.FAIL,
                f"no such serial port {port}",
                hint_for("port"),
            ),
            f"its bus {bus.id} has no port {port} (see serial_bus)",
        )
    own = os.getpid()
    holders = [h for h in port_holders(port, proc) if h.pid != own]
    services = {pid for pid, _command in _service_processes(proc, config_path)}
    ours = [h for h in holders if h.pid in services]
    others = [h for h in holders if h not in ours]
    details = {"holders": [{"pid": h.pid, "command": h.command} for h in holders]}
    if others:
        pids = " ".join(str(h.pid) for h in others)
        return (
            Finding(
                Verdict.FAIL,
                f"busy: {describe_holders(port, others)}",
                f"stop that process ('kill {pids}', or stop the service that runs it) or "
                f"give bus {bus.id} another port; 'fuser -v {port}' shows the same",
                details,
            ),
            f"its bus {bus.id} is held by another process (see serial_bus)",
        )
    if ours:
        return (
            Finding(
                Verdict.OK,
                f"in use by GridPilot ({', '.join(str(h) for h in ours)}); its units are not "
                "probed from here: their health is in device_errors",
                None,
                details,
            ),
            f"the gateway holds bus {bus.id}: see device_errors for this unit",
        )
    if not os.access(port, os.R_OK | os.W_OK):
        return (
            Finding(
                Verdict.FAIL,
                f"{port} is not readable and writable by this user",
                hint_for("port"),
            ),
            f"bus {bus.id} cannot be opened by this user (see serial_bus)",
        )
    return Finding(Verdict.OK, f"{port} is free; its units are probed below", None, details), None


async def _probe_device(device: DeviceConfig, connector: ModbusConnector) -> Finding:
    """TCP connect (for TCP devices), then one read with the device's timeout and retries."""
    budget_s = device.timeout.total_seconds() * (device.retries + 1)
    where = ""
    if device.protocol in (DeviceProtocol.MODBUS_TCP, DeviceProtocol.MODBUS_RTU_TCP):
        assert device.host is not None  # noqa: S101  # the config requires it
        where = f"{device.host}:{device.port} "
        kind, text = await _tcp_connect(device.host, device.port, budget_s)
        if kind != "ok":
            hint = hint_for("refused" if kind == "refused" else "timeout")
            if kind in ("unresolved", "unreachable"):
                hint = (
                    f"check the device's host in the site file and the network route to it; {hint}"
                )
            return Finding(Verdict.FAIL, text, hint, {"tcp": kind})
    driver = connector(device)
    start = time.monotonic()
    try:
        if device.sunspec is not None:
            base = device.sunspec.base
            bases = None if base == "auto" else [int(base)]
            found = await find_base(holding_reader(driver.read_block), bases)
            what = f"SunS marker at {found}"
        else:
            specs = polled_specs(device)
            if not specs:
                return Finding(Verdict.SKIPPED, "no polled point with an address to read")
            spec = specs[0]
            block = ReadBlock(spec.table, spec.address, spec.register_count, (spec,))
            await driver.read_block(block)
            what = f"read of {spec.point} ({spec.table} {spec.address})"
    except FieldbusError as exc:
        kind = exc.kind
        label = {
            "timeout": "timed out",
            "refused": "refused",
            "disconnected": "disconnected",
            "busy": "busy",
        }.get(kind, "Modbus exception" if kind.startswith("exception_") else kind)
        # The driver's message names the device (host:port or bus, and unit) itself.
        return Finding(Verdict.FAIL, f"{label}: {exc}", hint_for(kind), {"kind": kind})
    except SunSpecError as exc:
        return Finding(
            Verdict.FAIL,
            f"{where}no SunSpec device: {exc}",
            "check unit_id and sunspec.base; 'gridpilot devices scan tcp://HOST:PORT' shows "
            "what answers",
        )
    finally:
        await driver.close()
    took = (time.monotonic() - start) * 1000
    return Finding(
        Verdict.OK,
        f"{where}answered the {what} in {took:.0f} ms",
        None,
        {"reply_ms": round(took, 1)},
    )


# ------------------------------------------------------------------ files and limits


def _permissions(config: GridPilotConfig, config_path: Path) -> Finding:
    base_dir = config_path.resolve().parent
    checks: list[tuple[Path, str, bool, bool]] = [(base_dir, "site directory", True, True)]
    # (path, what, directory, must exist)
    broker = config.broker
    secrets: list[tuple[Path | None, str]] = [
        (broker.password_file, "broker.password_file"),
        (broker.signing_key_file, "broker.signing_key_file"),
        (broker.tls.key_file if broker.tls is not None else None, "broker.tls.key_file"),
        *((d.signing_key_file, f"devices.{d.id}.signing_key_file") for d in config.devices),
    ]
    for secret, name in secrets:
        if secret is not None:
            # Relative to the site file, as the services read them.
            checks.append((site_path(base_dir, secret), f"secret {name}", False, True))
    storage = config.storage
    if storage.backend == "postgresql" and storage.postgresql.password_file is not None:
        checks.append(
            (
                site_path(base_dir, storage.postgresql.password_file.expanduser()),
                "secret storage.postgresql.password_file",
                False,
                True,
            )
        )
    if storage.backend == "influxdb":
        for name, file in (
            ("password_file", storage.influxdb.password_file),
            ("token_file", storage.influxdb.token_file),
        ):
            if file is not None:
                checks.append(
                    (site_path(base_dir, file), f"secret storage.influxdb.{name}", False, True)
                )
    if storage.backend == "sqlite":
        checks.append((site_path(base_dir, storage.path.expanduser()), "database", False, False))
    api = config.api
    if api.tls is not None:
        checks.append(
            (site_path(base_dir, api.tls.key_file), "secret api.tls.key_file", False, True)
        )
    checks.append((site_path(base_dir, api.tokens_file), "API token store", False, False))
    checks.append((site_path(base_dir, api.audit_file), "API audit log", False, False))
    findings: list[Finding] = []
    for path, what, directory, required in checks:
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            if required:
                findings.append(
                    Finding(
                        Verdict.FAIL,
                        f"{what} {path} does not exist",
                        f"create it (umask 077; printf '%s' SECRET > {path}) or correct the "
                        "site file",
                    )
                )
            continue
        except OSError as exc:
            findings.append(
                Finding(Verdict.FAIL, f"cannot read {what} {path}: {exc.strerror}", None)
            )
            continue
        finding = judge_mode(str(path), mode, what=what, directory=directory)
        if directory and finding.verdict is Verdict.FAIL:
            # An open directory exposes names, not contents: worth fixing, not a failure.
            finding = Finding(Verdict.WARN, finding.finding, finding.fix, finding.details)
        findings.append(finding)
    verdict = worst(f.verdict for f in findings)
    details = {"files": [dict(f.details) | {"verdict": f.verdict.value} for f in findings]}
    problems = [f for f in findings if f.verdict is not Verdict.OK]
    if not problems:
        return Finding(
            Verdict.OK,
            f"{len(findings)} checked, none open to group or others (site directory "
            f"{_mode_of(findings[0])})",
            None,
            details,
        )
    return Finding(
        verdict,
        "; ".join(p.finding for p in problems),
        "; ".join(p.fix for p in problems if p.fix),
        details,
    )


def _mode_of(finding: Finding) -> str:
    return str(finding.details.get("mode", "?"))


def _service_processes(proc: Path, config_path: Path) -> list[tuple[int, str]]:
    """(pid, command line) of the GridPilot services of this site file running on this
    host: ``gridpilot run ... CONFIG`` (the path as the process sees it, from its working
    directory) or ``gridpilot demo --data-dir DIR`` writing ``DIR/site.yaml``."""
    found: list[tuple[int, str]] = []
    own = os.getpid()
    try:
        entries = list(proc.iterdir())
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        if is_service_command(argv) and _names_site(entry, argv, config_path):
            found.append((int(entry.name), " ".join(argv)))
    return sorted(found)


def _names_site(entry: Path, argv: Sequence[str], config_path: Path) -> bool:
    try:
        cwd = Path(os.readlink(entry / "cwd"))
    except OSError:
        cwd = Path("/")
    for i, arg in enumerate(argv):
        candidate = cwd / arg
        if i > 0 and argv[i - 1] == "--data-dir":
            candidate = candidate / "site.yaml"
        if os.path.normpath(candidate) == str(config_path):
            return True
    return False


def _service_open_files(
    config: GridPilotConfig, config_path: Path, proc: Path
) -> list[tuple[str, Finding]]:
    """The open-file limit of each running GridPilot service, as the kernel applies it
    (``/proc/PID/limits``): what systemd's ``LimitNOFILE`` really gave it."""
    budget = fd_budget(config)
    findings: list[tuple[str, Finding]] = []
    for pid, command in _service_processes(proc, config_path):
        try:
            limits = parse_proc_limits((proc / str(pid) / "limits").read_text())
        except OSError:
            continue  # gone meanwhile, or another user's
        if limits is None:
            continue
        findings.append((f"process {pid} ({command})", judge_open_files(*limits, budget)))
    return findings


def _open_files(config: GridPilotConfig) -> Finding:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def shown(value: int) -> int:
        return -1 if value == resource.RLIM_INFINITY else value

    finding = judge_open_files(shown(soft), shown(hard), fd_budget(config))
    note = (
        " (the limit of this shell, which services started from it inherit; systemd units "
        "set their own LimitNOFILE)"
    )
    return Finding(finding.verdict, finding.finding + note, finding.fix, finding.details)
