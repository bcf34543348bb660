"""The verdicts of ``gridpilot doctor``: pure functions from measurements to findings.

Every rule here takes what the I/O side of the doctor (``gridpilot.ops.doctor``) measured
-- a file mode, an ``RLIMIT_NOFILE``, a broker's queue settings, the timestamps stored for a
device -- and returns a :class:`Finding`: a verdict, one line saying what was found, and
what to do next. Nothing here touches a socket, a file or a clock; ``now_ms`` is passed in.

Verdicts, from best to worst: ``ok`` < ``skipped`` < ``warn`` < ``fail``. Only ``fail``
makes the doctor exit non-zero; ``skipped`` says a check could not apply here, and why.
"""

from __future__ import annotations

import math
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from gridpilot.config.models import (
    DeviceProtocol,
    GridPilotConfig,
    PollClass,
)
from gridpilot.ops.gaps import GAP_MISSED_POLLS, GapSummary, class_interval_ms, find_gaps

__all__ = [
    "GAP_MISSED_POLLS",
    "OPEN_FILES_WARN_BELOW",
    "CheckResult",
    "ClockEvidence",
    "FdBudget",
    "Finding",
    "GapSummary",
    "MosquittoLimits",
    "Verdict",
    "class_interval_ms",
    "fd_budget",
    "find_gaps",
    "is_service_command",
    "judge_clock",
    "judge_error_rates",
    "judge_gaps",
    "judge_mode",
    "judge_open_files",
    "judge_queue_limits",
    "judge_storage_probe",
    "parse_mosquitto_conf",
    "parse_proc_limits",
    "site_message_rate",
    "worst",
]


class Verdict(StrEnum):
    OK = "ok"
    SKIPPED = "skipped"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK: Final = {Verdict.OK: 0, Verdict.SKIPPED: 1, Verdict.WARN: 2, Verdict.FAIL: 3}


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """The worst of ``verdicts`` (``ok`` for none)."""
    return max(verdicts, key=lambda v: v.rank, default=Verdict.OK)


@dataclass(frozen=True, slots=True)
class Finding:
    """What one rule concluded."""

    verdict: Verdict
    finding: str
    """One line: what was found (with the figures that decided it)."""
    fix: str | None = None
    """What to do next; None when there is nothing to do."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """Machine-readable figures behind the finding (JSON-serialisable)."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of the doctor's report: a check applied to one subject."""

    check: str
    """Stable id of the check (``broker``, ``device``, ``data_gaps`` ...)."""
    subject: str
    """What it was applied to: a device id, a file, the broker's URL."""
    verdict: Verdict
    finding: str
    fix: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    @classmethod
    def of(cls, check: str, subject: str, finding: Finding, duration_s: float = 0.0) -> CheckResult:
        return cls(
            check,
            subject,
            finding.verdict,
            finding.finding,
            finding.fix,
            finding.details,
            duration_s,
        )


# ------------------------------------------------------------------ open files

OPEN_FILES_WARN_BELOW: Final = 4096
"""Below this soft limit the doctor warns even when the site's estimate fits: the estimate
counts connections, and a burst of API clients or a reconnect storm needs headroom. The
systemd units set ``LimitNOFILE=65536``."""

_BASE_FDS: Final = 64  # interpreter, logs, epoll, pipes, event-loop self-pipe, libraries
_API_REQUESTS_FDS: Final = 64  # concurrent HTTP requests besides the live streams
_SQLITE_FILES_PER_CONNECTION: Final = 3  # database, -wal, -shm
_SQLITE_CONNECTIONS: Final = 3  # a writer and two readers per process
_SERVER_DB_CONNECTIONS: Final = 4  # PostgreSQL sessions / InfluxDB HTTP connections


@dataclass(frozen=True, slots=True)
class FdBudget:
    """Descriptors a site needs when all its services run in one process (``run all``)."""

    devices: int
    broker: int
    api: int
    storage: int
    base: int = _BASE_FDS

    @property
    def total(self) -> int:
        return self.devices + self.broker + self.api + self.storage + self.base

    def as_dict(self) -> dict[str, int]:
        return {
            "devices": self.devices,
            "broker": self.broker,
            "api": self.api,
            "storage": self.storage,
            "base": self.base,
            "total": self.total,
        }


def fd_budget(config: GridPilotConfig) -> FdBudget:
    """The descriptors ``config`` certainly needs: one socket per Modbus TCP connection
    (``max_outstanding`` each), one per RTU-over-TCP converter and per serial port, one
    broker connection per service (twice when the embedded broker runs in the same
    process: both ends are ours), the API's live-stream clients plus concurrent requests,
    and the storage's files or connections."""
    tcp = 0
    converters: set[tuple[str | None, int]] = set()
    serial_buses: set[str | None] = set()
    for device in config.devices:
        match device.protocol:
            case DeviceProtocol.MODBUS_TCP:
                tcp += device.max_outstanding
            case DeviceProtocol.MODBUS_RTU_TCP:
                converters.add((device.host, device.port))
            case DeviceProtocol.MODBUS_RTU:
                serial_buses.add(device.bus)
            case DeviceProtocol.MQTT:
                pass
    services = 3 + (config.control is not None)  # gateway, ingest, api (+ controller)
    broker = services * 2 + 1 if config.broker.url is None else services
    api = config.api.stream_clients + _API_REQUESTS_FDS + 1  # + the listening socket
    if config.storage.backend == "sqlite":
        storage = _SQLITE_FILES_PER_CONNECTION * _SQLITE_CONNECTIONS
    else:
        storage = _SERVER_DB_CONNECTIONS
    return FdBudget(tcp + len(converters) + len(serial_buses), broker, api, storage)


def judge_open_files(soft: int, hard: int, budget: FdBudget) -> Finding:
    """``RLIMIT_NOFILE`` (``soft``, ``hard``; ``resource.RLIM_INFINITY`` is -1) against
    what the site needs: below the need fails (services would die with EMFILE), below
    ``OPEN_FILES_WARN_BELOW`` warns."""
    details = {"soft": soft, "hard": hard, "needed": budget.as_dict()}
    unlimited = soft < 0
    shown = "unlimited" if unlimited else str(soft)
    raise_to = max(OPEN_FILES_WARN_BELOW * 16, budget.total)
    fix = (
        f"raise the limit to {raise_to}: under systemd set LimitNOFILE={raise_to} in the "
        "unit (deploy/systemd/ does); in a shell run 'ulimit -n "
        f"{min(raise_to, hard) if hard >= 0 else raise_to}' before starting GridPilot "
        "(beyond the hard limit: /etc/security/limits.conf, nofile)"
    )
    if not unlimited and soft < budget.total:
        return Finding(
            Verdict.FAIL,
            f"open-file limit {shown} is below the {budget.total} descriptors this site "
            f"needs ({budget.devices} device connections, {budget.broker} broker "
            f"connections, {budget.api} for API clients, {budget.storage} for storage, "
            f"{budget.base} base): services would fail with 'Too many open files'",
            fix,
            details,
        )
    if not unlimited and soft < OPEN_FILES_WARN_BELOW:
        return Finding(
            Verdict.WARN,
            f"open-file limit {shown} covers the {budget.total} descriptors this site needs, "
            f"but leaves little headroom (below {OPEN_FILES_WARN_BELOW})",
            fix,
            details,
        )
    return Finding(
        Verdict.OK,
        f"open-file limit {shown} (hard {'unlimited' if hard < 0 else hard}); the site needs "
        f"about {budget.total}",
        None,
        details,
    )


def parse_proc_limits(text: str) -> tuple[int, int] | None:
    """(soft, hard) of "Max open files" in a ``/proc/PID/limits`` text; -1 for unlimited."""
    for line in text.splitlines():
        if line.startswith("Max open files"):
            fields = line[len("Max open files") :].split()
            if len(fields) >= 2:
                return _limit(fields[0]), _limit(fields[1])
    return None


def _limit(text: str) -> int:
    return -1 if text == "unlimited" else int(text)


def is_service_command(argv: Sequence[str]) -> bool:
    """Whether a command line is a running GridPilot service: ``gridpilot run ...`` or
    ``gridpilot demo`` (also as ``python -m gridpilot``)."""
    for i, arg in enumerate(argv[:-1]):
        named = arg.rsplit("/", 1)[-1] == "gridpilot" and (i == 0 or argv[i - 1] != "-c")
        module = arg == "gridpilot" and i > 0 and argv[i - 1] == "-m"
        if (named or module) and argv[i + 1] in ("run", "demo"):
            return True
    return False


# ------------------------------------------------------------------ file permissions


def judge_mode(path: str, mode: int, *, what: str, directory: bool = False) -> Finding:
    """A secret, a data file or the site directory must not be open to group or others:
    files ``0600`` (or stricter), the directory ``0700``. ``mode`` is ``st_mode``."""
    bits = stat.S_IMODE(mode)
    wanted = "700" if directory else "600"
    details = {"path": path, "mode": f"{bits:04o}", "what": what}
    if bits & (stat.S_IRWXG | stat.S_IRWXO):
        readable = bool(bits & (stat.S_IRGRP | stat.S_IROTH))
        if directory:
            who = "others may list or enter it" if readable else "others may enter it"
        else:
            who = "others may read it" if readable else "others may write it"
        return Finding(
            Verdict.FAIL,
            f"{what} {path} has mode {bits:04o}: {who}",
            f"chmod {wanted} {path}"
            + (" (and treat the secret as seen: change it)" if "secret" in what else ""),
            details,
        )
    return Finding(Verdict.OK, f"{what} {path} is {bits:04o}", None, details)


# ------------------------------------------------------------------ broker queue limits

MOSQUITTO_DEFAULTS: Final[Mapping[str, int]] = {
    "max_queued_messages": 1000,
    "max_queued_bytes": 0,
    "max_inflight_messages": 20,
}
"""Mosquitto 2's defaults for the limits the doctor checks (0 means no limit)."""

_QUEUE_FAIL_BELOW_S: Final = 60.0
"""A queue shorter than this much of the site's telemetry loses data when ingest restarts."""
_QUEUE_WARN_BELOW_S: Final = 3600.0
"""A queue shorter than an hour of telemetry loses data in an ingest or storage outage
that an operator may well take that long to notice and fix."""
_INFLIGHT_WARN_BELOW: Final = 100
_TELEMETRY_BYTES: Final = 512
"""A generous size of one telemetry message (a few hundred bytes of JSON)."""


@dataclass(frozen=True, slots=True)
class MosquittoLimits:
    """The queue settings of a Mosquitto configuration (defaults filled in)."""

    source: str
    """The file(s) read."""
    listeners: tuple[int, ...]
    max_queued_messages: int
    max_queued_bytes: int
    max_inflight_messages: int


def parse_mosquitto_conf(texts: Mapping[str, str]) -> MosquittoLimits:
    """The limits set by Mosquitto configuration ``texts`` (file name -> content, in the
    order Mosquitto reads them; a later setting wins). ``listener PORT`` and ``port PORT``
    lines give the ports."""
    values = dict(MOSQUITTO_DEFAULTS)
    listeners: list[int] = []
    for text in texts.values():
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, _, rest = line.partition(" ")
            argument = rest.strip().split(" ", 1)[0] if rest.strip() else ""
            if key in values and argument.isdigit():
                values[key] = int(argument)
            elif key in ("listener", "port") and argument.isdigit():
                listeners.append(int(argument))
    return MosquittoLimits(
        ", ".join(texts),
        tuple(listeners) or (1883,),
        values["max_queued_messages"],
        values["max_queued_bytes"],
        values["max_inflight_messages"],
    )


def site_message_rate(config: GridPilotConfig) -> float:
    """Messages per second the gateway publishes for this site: a telemetry message per
    poll tick of each polled device (ticks at its fastest poll class) and the devices'
    periodic states. MQTT-native devices publish at their own, unknown rate: not counted."""
    rate = 0.0
    polled = 0
    for device in config.devices:
        if not device.protocol.is_modbus:
            continue
        polled += 1
        classes = {p.poll_class for p in device.points} or {PollClass.NORMAL}
        fastest = min(class_interval_ms(device, config.gateway.poll_classes, c) for c in classes)
        rate += 1000.0 / fastest
    rate += (polled + 1) / config.gateway.state_interval.total_seconds()
    return rate


def judge_queue_limits(limits: MosquittoLimits, messages_per_s: float) -> Finding:
    """Mosquitto drops QoS 1 messages for a subscriber beyond ``max_queued_messages``
    (silently): the queue must hold the telemetry of an ingest outage."""
    details: dict[str, Any] = {
        "source": limits.source,
        "max_queued_messages": limits.max_queued_messages,
        "max_queued_bytes": limits.max_queued_bytes,
        "max_inflight_messages": limits.max_inflight_messages,
        "site_messages_per_s": round(messages_per_s, 3),
    }
    problems: list[tuple[Verdict, str, str]] = []
    rate = max(messages_per_s, 1e-9)
    holds = []
    if limits.max_queued_messages > 0:
        holds.append(limits.max_queued_messages / rate)
    if limits.max_queued_bytes > 0:
        holds.append(limits.max_queued_bytes / (rate * _TELEMETRY_BYTES))
    hold_s = min(holds) if holds else math.inf
    details["queue_holds_s"] = None if math.isinf(hold_s) else round(hold_s, 1)
    size_to = math.ceil(rate * 24 * 3600)
    queue_fix = (
        f"in {limits.source} set max_queued_messages {max(size_to, 100_000)} (a day of this "
        f"site's ~{messages_per_s:.1f} messages/s) and max_queued_bytes to match (see "
        "deploy/mosquitto/gridpilot.conf), then restart Mosquitto"
    )
    if hold_s < _QUEUE_FAIL_BELOW_S:
        problems.append(
            (
                Verdict.FAIL,
                f"the broker queues at most {hold_s:.0f} s of this site's telemetry "
                f"(max_queued_messages {limits.max_queued_messages}, max_queued_bytes "
                f"{limits.max_queued_bytes}) for a subscriber that falls behind, then drops "
                "QoS 1 messages silently: an ingest restart loses data",
                queue_fix,
            )
        )
    elif hold_s < _QUEUE_WARN_BELOW_S:
        problems.append(
            (
                Verdict.WARN,
                f"the broker queues only {hold_s / 60:.0f} min of this site's telemetry for a "
                "subscriber that falls behind, then drops messages",
                queue_fix,
            )
        )
    inflight = limits.max_inflight_messages
    if 0 < inflight < _INFLIGHT_WARN_BELOW:
        problems.append(
            (
                Verdict.WARN,
                f"max_inflight_messages {inflight}: an MQTT 3.1.1 subscriber drains a backlog "
                f"at {inflight} messages per round trip",
                f"set max_inflight_messages 1000 in {limits.source} (GridPilot's own "
                "clients speak MQTT 5 and announce their Receive Maximum, which wins)",
            )
        )
    if not problems:
        shown = "no limit" if math.isinf(hold_s) else f"{hold_s / 3600:.1f} h"
        return Finding(
            Verdict.OK,
            f"queue holds {shown} of this site's telemetry (~{messages_per_s:.1f} msg/s); "
            f"max_inflight_messages {inflight or 'unlimited'} ({limits.source})",
            None,
            details,
        )
    verdict = worst(p[0] for p in problems)
    return Finding(
        verdict,
        "; ".join(p[1] for p in problems),
        "; ".join(p[2] for p in problems),
        details,
    )


# ------------------------------------------------------------------ storage

_MIB: Final = 1024 * 1024
STORAGE_FAIL_FREE_BYTES: Final = 100 * _MIB
"""Below this SQLite cannot be relied on to checkpoint its WAL or finish a batch."""
STORAGE_WARN_FREE_BYTES: Final = 1024 * _MIB
STORAGE_WARN_FREE_FRACTION: Final = 0.05
LATENCY_WARN_S: Final = 0.05
"""A durable write (write + fsync) slower than this is a slow or busy disk (an SSD takes
about 1-5 ms, a spinning disk 10-20 ms, an SD card can take 100 ms and more)."""
LATENCY_FAIL_S: Final = 1.0
"""Each ingest batch waits for one durable commit: at a second each, a busy site's buffer
fills faster than it drains."""


def judge_storage_probe(
    where: str,
    latencies_s: Sequence[float],
    free_bytes: int | None = None,
    total_bytes: int | None = None,
) -> Finding:
    """A storage that answered: its measured latencies (a durable write for SQLite, a
    trivial query for a server) and, for a local file, the free space of its disk."""
    median = sorted(latencies_s)[len(latencies_s) // 2] if latencies_s else 0.0
    details: dict[str, Any] = {
        "where": where,
        "latency_ms": [round(s * 1000, 3) for s in latencies_s],
        "median_latency_ms": round(median * 1000, 3),
    }
    parts = [f"{where}: median latency {median * 1000:.1f} ms over {len(latencies_s)} probes"]
    problems: list[tuple[Verdict, str]] = []
    if free_bytes is not None and total_bytes is not None and total_bytes > 0:
        details["free_bytes"] = free_bytes
        details["total_bytes"] = total_bytes
        fraction = free_bytes / total_bytes
        parts.append(f"{free_bytes / _MIB:,.0f} MiB free ({fraction:.0%})")
        free_fix = (
            "free space on that disk, lower storage.retention (raw samples are the largest "
            "level), or move storage.path to a larger disk"
        )
        if free_bytes < STORAGE_FAIL_FREE_BYTES:
            problems.append((Verdict.FAIL, free_fix))
        elif free_bytes < STORAGE_WARN_FREE_BYTES or fraction < STORAGE_WARN_FREE_FRACTION:
            problems.append((Verdict.WARN, free_fix))
    slow_fix = (
        "the disk is slow or busy (check 'iostat -x 1' for %util and await, and what else "
        "writes there); put the database on a faster disk, or for a server check its load"
    )
    if median > LATENCY_FAIL_S:
        problems.append((Verdict.FAIL, slow_fix))
    elif median > LATENCY_WARN_S:
        problems.append((Verdict.WARN, slow_fix))
    verdict = worst(p[0] for p in problems)
    fix = "; ".join(dict.fromkeys(p[1] for p in problems)) or None
    return Finding(verdict, ", ".join(parts), fix, details)


# ------------------------------------------------------------------ CRC and timeout rates

ERROR_RATE_WARN: Final = 0.01
ERROR_RATE_FAIL: Final = 0.10
ERROR_RATE_MIN_POLLS: Final = 20
"""Fewer polls than this give a rate too noisy to fail on (one timeout in 5 polls is 20 %):
at most a warning."""
_RATE_KINDS: Final = {
    "crc": "crc",
    "short_reply": "crc",  # a frame cut short is the same line trouble as a bad CRC
    "timeout": "timeout",
}


def judge_error_rates(device: str, state: Mapping[str, Any] | None, stale: bool) -> Finding:
    """CRC and timeout rates of a device from its retained ``state`` (the gateway's
    cumulative counters since it started): failed attempts of each kind per poll."""
    if state is None:
        return Finding(
            Verdict.WARN,
            f"no state of {device} on the broker: the gateway is not running or does not "
            "poll this device",
            "start the gateway (systemctl start gridpilot-gateway, or gridpilot run gateway "
            "CONFIG) with this site file",
        )
    counters = state.get("counters")
    if not isinstance(counters, Mapping):
        return Finding(Verdict.SKIPPED, f"the state of {device} carries no counters")
    polls = counters.get("polls")
    attempts = counters.get("attempt_errors")
    if not isinstance(polls, int) or not isinstance(attempts, Mapping):
        return Finding(Verdict.SKIPPED, f"the state of {device} carries no poll counters")
    by_kind = {"crc": 0, "timeout": 0}
    for kind, n in attempts.items():
        group = _RATE_KINDS.get(str(kind))
        if group is not None and isinstance(n, int):
            by_kind[group] += n
    since = state.get("ts")
    details: dict[str, Any] = {
        "polls": polls,
        "crc_errors": by_kind["crc"],
        "timeouts": by_kind["timeout"],
        "counted_until": since,
        "stale": stale,
    }
    if polls == 0:
        return Finding(Verdict.SKIPPED, f"{device} has not been polled yet", None, details)
    rates = {kind: n / polls for kind, n in by_kind.items()}
    details["crc_rate"] = round(rates["crc"], 6)
    details["timeout_rate"] = round(rates["timeout"], 6)
    summary = (
        f"{rates['crc']:.2%} CRC/framing errors and {rates['timeout']:.2%} timeouts per poll "
        f"over {polls} polls since the gateway started"
    )
    if stale:
        summary += " (the gateway is offline: these are its last counters)"
    fixes = {
        "crc": (
            "CRC/framing errors: check baud rate, parity and stop bits against the device, "
            "cable shielding and grounding, and 120 ohm termination at both ends of the "
            "RS-485 line"
        ),
        "timeout": (
            "timeouts: check the device's power and network path, its unit_id, and keep "
            "timeout x (retries + 1) within poll_interval; a busy device may need a longer "
            "poll_interval"
        ),
    }
    verdict = Verdict.OK
    fix_parts = []
    for kind, rate in rates.items():
        if rate >= ERROR_RATE_FAIL and polls >= ERROR_RATE_MIN_POLLS:
            verdict = worst((verdict, Verdict.FAIL))
            fix_parts.append(fixes[kind])
        elif rate >= ERROR_RATE_WARN:
            verdict = worst((verdict, Verdict.WARN))
            fix_parts.append(fixes[kind])
    if verdict is not Verdict.OK and polls < ERROR_RATE_MIN_POLLS:
        summary += f" (only {polls} polls yet: one slow answer weighs much; run again later)"
    return Finding(verdict, summary, "; ".join(fix_parts) or None, details)


# ------------------------------------------------------------------ data gaps

GAP_FAIL_FRACTION: Final = 0.2


def judge_gaps(device: str, point: str, summary: GapSummary, fmt: Callable[[int], str]) -> Finding:
    """Gaps of ``device`` (judged on its series ``point``) in the last hour: a device whose
    data stopped, or that misses a fifth of the window, fails; any gap warns. ``fmt`` turns
    epoch ms into text for the finding."""
    window_ms = max(1, summary.window_end_ms - summary.window_start_ms)
    details: dict[str, Any] = {
        "point": point,
        "window_start": fmt(summary.window_start_ms),
        "window_end": fmt(summary.window_end_ms),
        "interval_s": round(summary.interval_ms / 1000, 3),
        "samples": summary.samples,
        "expected_samples": summary.expected,
        "gaps": [
            {"start": fmt(a), "end": fmt(b), "seconds": round((b - a) / 1000, 3)}
            for a, b in summary.gaps
        ],
        "missing_s": round(summary.missing_ms / 1000, 3),
    }
    if summary.samples == 0:
        return Finding(
            Verdict.FAIL,
            f"no samples of {device} stored in the last hour",
            "check this device's reachability and state above; then that ingest runs "
            "(gridpilot run ingest) and the gateway publishes it ('gridpilot tail')",
            details,
        )
    span = f"{summary.samples} samples of {point} where ~{summary.expected} were due"
    since = "" if summary.data_before_window else f" (data since {fmt(summary.window_start_ms)})"
    if not summary.gaps:
        return Finding(Verdict.OK, f"no gaps in the last hour: {span}{since}", None, details)
    first, last = max(summary.gaps, key=lambda gap: gap[1] - gap[0])
    text = (
        f"{len(summary.gaps)} gap(s), {summary.missing_ms / 1000:.0f} s missing of "
        f"{window_ms / 1000:.0f} s (longest {(last - first) / 1000:.0f} s, from {fmt(first)} "
        f"to {fmt(last)}): {span}{since}"
    )
    fix = (
        "see the device's last_error and the gateway's log for the times of the gaps; "
        "offline spells point to the device or network, gaps on every device at once to "
        "the gateway, broker or ingest (check their logs: journalctl -u 'gridpilot-*')"
    )
    if summary.ongoing:
        return Finding(
            Verdict.FAIL,
            f"no data from {device} since {fmt(summary.gaps[-1][0])}; {text}",
            fix,
            details,
        )
    if summary.missing_ms >= GAP_FAIL_FRACTION * window_ms:
        return Finding(Verdict.FAIL, text, fix, details)
    return Finding(Verdict.WARN, text, fix, details)


# ------------------------------------------------------------------ clock skew

CLOCK_OK_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class ClockEvidence:
    """One comparison of the local clock with another: ``offset_s`` is how far the other
    clock is ahead of ours (negative: behind). ``ahead_only``: the evidence can show the
    other clock ahead but not behind (a sample's stamp lags by the delivery time)."""

    source: str
    offset_s: float
    ahead_only: bool = False


def judge_clock(evidence: Sequence[ClockEvidence], max_future_skew_s: float) -> Finding:
    """Skew between this host and the others GridPilot depends on. Within ``CLOCK_OK_S``
    is fine; beyond it warns; at or beyond ingest's ``max_future_skew`` fails (ingest
    rejects samples stamped that far ahead)."""
    if not evidence:
        return Finding(
            Verdict.SKIPPED,
            "nothing to compare the local clock with (no server time, no stored samples, "
            "no device states)",
        )
    details = {
        "comparisons": [
            {"source": e.source, "offset_s": round(e.offset_s, 3), "ahead_only": e.ahead_only}
            for e in evidence
        ]
    }
    judged = [(e, max(e.offset_s, 0.0) if e.ahead_only else e.offset_s) for e in evidence]
    worst_e, worst_off = max(judged, key=lambda pair: abs(pair[1]))
    described = "; ".join(f"{e.source}: {_offset_text(e)}" for e in evidence)
    fix = (
        "synchronise the clocks: 'timedatectl' shows whether NTP is active; enable it with "
        "'timedatectl set-ntp true' (or configure chrony) on this host and on "
        f"{worst_e.source.split(' ', 1)[0]}'s host"
    )
    if abs(worst_off) >= max_future_skew_s:
        return Finding(
            Verdict.FAIL,
            f"clocks differ by {abs(worst_off):.1f} s (ingest rejects samples more than "
            f"{max_future_skew_s:g} s ahead): {described}",
            fix,
            details,
        )
    if abs(worst_off) > CLOCK_OK_S:
        return Finding(
            Verdict.WARN, f"clocks differ by {abs(worst_off):.1f} s: {described}", fix, details
        )
    return Finding(Verdict.OK, described, None, details)


def _offset_text(evidence: ClockEvidence) -> str:
    offset = evidence.offset_s
    if evidence.ahead_only and offset <= 0:
        # A stamp made elsewhere and delivered since: older than now by the delivery time,
        # which hides a clock that is behind; only one ahead shows.
        return f"stamped {-offset:.3f} s before this host's now (not ahead)"
    if abs(offset) < 0.0005:
        return "same time"
    return f"{abs(offset):.3f} s {'ahead of' if offset > 0 else 'behind'} this host"
