"""The doctor's verdicts: pure rules from measurements to findings."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from gridpilot.config.models import GridPilotConfig
from gridpilot.ops.doctor import DoctorReport
from gridpilot.ops.doctor_rules import (
    OPEN_FILES_WARN_BELOW,
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

POINT = {"point": "active_power_w", "address": 0, "type": "int32"}


def _config(**extra: Any) -> GridPilotConfig:
    devices = [
        {"id": f"meter_{i}", "host": "10.0.0.9", "port": 502 + i, "points": [POINT]}
        for i in range(3)
    ]
    return GridPilotConfig.model_validate(
        {"site": {"id": "s"}, "broker": {"url": "mqtt://127.0.0.1"}, "devices": devices, **extra}
    )


def test_worst_orders_the_verdicts() -> None:
    assert worst([]) is Verdict.OK
    assert worst([Verdict.OK, Verdict.SKIPPED]) is Verdict.SKIPPED
    assert worst([Verdict.WARN, Verdict.SKIPPED, Verdict.OK]) is Verdict.WARN
    assert worst([Verdict.WARN, Verdict.FAIL]) is Verdict.FAIL


# ------------------------------------------------------------------ open files


def test_the_descriptor_budget_counts_connections_clients_and_storage() -> None:
    budget = fd_budget(_config(api={"stream_clients": 10}))
    assert budget.devices == 3
    assert budget.broker == 3  # gateway, ingest, api: no control section
    assert budget.api == 10 + 64 + 1
    assert budget.storage == 9
    assert budget.total == 3 + 3 + 75 + 9 + 64
    # An embedded broker is both ends of every connection, plus its listener.
    embedded = fd_budget(GridPilotConfig.model_validate({"site": {"id": "s"}}))
    assert embedded.broker == 3 * 2 + 1


@pytest.mark.parametrize(
    ("soft", "verdict"),
    [(64, Verdict.FAIL), (1024, Verdict.WARN), (65536, Verdict.OK), (-1, Verdict.OK)],
)
def test_open_file_limit_verdicts(soft: int, verdict: Verdict) -> None:
    budget = fd_budget(_config())
    finding = judge_open_files(soft, 65536, budget)
    assert finding.verdict is verdict
    assert finding.details["soft"] == soft
    if verdict is Verdict.FAIL:
        assert f"below the {budget.total} descriptors" in finding.finding
        assert finding.fix is not None
        assert "LimitNOFILE=" in finding.fix
        assert "ulimit -n" in finding.fix
    if verdict is Verdict.WARN:
        assert str(OPEN_FILES_WARN_BELOW) in finding.finding


# ------------------------------------------------------------------ permissions


@pytest.mark.parametrize(
    ("mode", "directory", "verdict", "fix"),
    [
        (0o600, False, Verdict.OK, None),
        (0o400, False, Verdict.OK, None),
        (0o644, False, Verdict.FAIL, "chmod 600 /x"),
        (0o620, False, Verdict.FAIL, "chmod 600 /x"),
        (0o700, True, Verdict.OK, None),
        (0o755, True, Verdict.FAIL, "chmod 700 /x"),
    ],
)
def test_modes(mode: int, directory: bool, verdict: Verdict, fix: str | None) -> None:
    kind = stat.S_IFDIR if directory else stat.S_IFREG
    finding = judge_mode("/x", kind | mode, what="secret file", directory=directory)
    assert finding.verdict is verdict
    assert finding.details["mode"] == f"{mode:04o}"
    if fix is None:
        assert finding.fix is None
    else:
        assert finding.fix is not None
        assert finding.fix.startswith(fix)
    if mode == 0o644:
        assert "others may read it" in finding.finding
        assert finding.fix is not None
        assert "change it" in finding.fix  # a secret that was readable is spent
    if mode == 0o620:
        assert "others may write it" in finding.finding
    if mode == 0o755:
        assert "others may list or enter it" in finding.finding


# ------------------------------------------------------------------ queue limits


def test_mosquitto_settings_later_files_win_and_defaults_fill_in() -> None:
    limits = parse_mosquitto_conf(
        {
            "/etc/mosquitto/mosquitto.conf": "# max_queued_messages 5\nlistener 1883 127.0.0.1\n"
            "max_queued_messages 2000\n",
            "/etc/mosquitto/conf.d/x.conf": "max_queued_messages 3000\nport 8883\n",
        }
    )
    assert limits.listeners == (1883, 8883)
    assert limits.max_queued_messages == 3000
    assert limits.max_inflight_messages == 20  # Mosquitto's default
    assert limits.max_queued_bytes == 0
    assert limits.source == "/etc/mosquitto/mosquitto.conf, /etc/mosquitto/conf.d/x.conf"


def test_the_message_rate_counts_ticks_at_the_fastest_class_and_states() -> None:
    config = _config(gateway={"state_interval": 10})
    assert site_message_rate(config) == pytest.approx(3 * 1.0 + 4 / 10)
    fast = GridPilotConfig.model_validate(
        {
            "site": {"id": "s"},
            "devices": [
                {
                    "id": "m",
                    "host": "h",
                    "poll_interval": 2,
                    "points": [POINT | {"poll_class": "fast"}],
                },
                {"id": "sensor", "protocol": "mqtt", "points": [{"point": "x_w"}]},
            ],
        }
    )
    # 2 s / fast_divisor 5 = 0.4 s per tick; the MQTT device is not the gateway's.
    assert site_message_rate(fast) == pytest.approx(2.5 + 2 / 10)


@pytest.mark.parametrize(
    ("queued", "rate", "verdict"),
    [
        (1000, 30.0, Verdict.FAIL),  # Mosquitto's default: 33 s of a 30 msg/s site
        (1000, 1.0, Verdict.WARN),  # 17 minutes
        (1_000_000, 30.0, Verdict.OK),  # 9 hours
        (0, 30.0, Verdict.OK),  # no limit
    ],
)
def test_queue_limit_verdicts(queued: int, rate: float, verdict: Verdict) -> None:
    text = f"listener 1883\nmax_queued_messages {queued}\nmax_inflight_messages 1000\n"
    finding = judge_queue_limits(parse_mosquitto_conf({"m.conf": text}), rate)
    assert finding.verdict is verdict, finding
    if verdict is not Verdict.OK:
        assert "drops" in finding.finding
        assert finding.fix is not None
        assert "max_queued_messages" in finding.fix
        assert "m.conf" in finding.fix


def test_a_small_inflight_window_and_a_byte_bound_warn() -> None:
    text = "max_queued_messages 0\nmax_inflight_messages 20\n"
    finding = judge_queue_limits(parse_mosquitto_conf({"m.conf": text}), 5.0)
    assert finding.verdict is Verdict.WARN
    assert "max_inflight_messages 20" in finding.finding
    # 1 MiB at ~512 B a message holds ~410 s of 5 msg/s: under an hour.
    text = "max_queued_messages 0\nmax_queued_bytes 1048576\nmax_inflight_messages 1000\n"
    finding = judge_queue_limits(parse_mosquitto_conf({"m.conf": text}), 5.0)
    assert finding.verdict is Verdict.WARN
    assert finding.details["queue_holds_s"] == pytest.approx(409.6)


# ------------------------------------------------------------------ storage


def test_storage_verdicts_from_latency_and_free_space() -> None:
    gib = 1024**3
    ok = judge_storage_probe("x", [0.002, 0.003, 0.004], 50 * gib, 100 * gib)
    assert ok.verdict is Verdict.OK
    assert ok.details["median_latency_ms"] == 3.0
    assert judge_storage_probe("x", [0.2, 0.3, 0.2], 50 * gib, 100 * gib).verdict is Verdict.WARN
    slow = judge_storage_probe("x", [2.0, 3.0, 2.5])
    assert slow.verdict is Verdict.FAIL
    assert slow.fix is not None
    assert "iostat" in slow.fix
    full = judge_storage_probe("x", [0.001], 50 * 1024**2, 100 * gib)
    assert full.verdict is Verdict.FAIL
    assert full.fix is not None
    assert "retention" in full.fix
    tight = judge_storage_probe("x", [0.001], 4 * gib, 100 * gib)  # 4 % free
    assert tight.verdict is Verdict.WARN


# ------------------------------------------------------------------ error rates


def _state(polls: int, **attempts: int) -> dict[str, Any]:
    return {
        "status": "online",
        "ts": "2026-11-26T12:00:00.000Z",
        "counters": {"polls": polls, "attempt_errors": attempts},
    }


def test_error_rates_verdicts() -> None:
    assert judge_error_rates("m", _state(1000), stale=False).verdict is Verdict.OK
    crc = judge_error_rates("m", _state(1000, crc=150, short_reply=10), stale=False)
    assert crc.verdict is Verdict.FAIL
    assert crc.details["crc_errors"] == 160
    assert "16.00% CRC/framing errors" in crc.finding
    assert crc.fix is not None
    assert "termination" in crc.fix
    timeouts = judge_error_rates("m", _state(1000, timeout=20), stale=False)
    assert timeouts.verdict is Verdict.WARN
    assert timeouts.fix is not None
    assert "poll_interval" in timeouts.fix
    # One timeout in five polls is noise, not yet a failure.
    early = judge_error_rates("m", _state(5, timeout=1), stale=False)
    assert early.verdict is Verdict.WARN
    assert "only 5 polls" in early.finding
    stale = judge_error_rates("m", _state(1000), stale=True)
    assert "gateway is offline" in stale.finding
    missing = judge_error_rates("m", None, stale=False)
    assert missing.verdict is Verdict.WARN
    assert missing.fix is not None
    assert "start the gateway" in missing.fix
    assert judge_error_rates("m", {"status": "online"}, stale=False).verdict is Verdict.SKIPPED


# ------------------------------------------------------------------ gaps

S = 1000
NOW = 10_000 * S


def _fmt(ts_ms: int) -> str:
    return str(ts_ms // 1000)


def test_a_steady_series_has_no_gap() -> None:
    stamps = list(range(NOW - 3600 * S, NOW, S))
    summary = find_gaps(
        stamps,
        interval_ms=S,
        window_start_ms=NOW - 3600 * S,
        now_ms=NOW,
        latency_ms=2 * S,
        data_before_window=True,
    )
    assert summary.gaps == ()
    assert summary.samples == 3600
    assert summary.expected == 3600
    assert judge_gaps("m", "p", summary, _fmt).verdict is Verdict.OK


def test_a_missed_stretch_is_a_gap_but_one_late_poll_is_not() -> None:
    start = NOW - 3600 * S
    stamps = [t for t in range(start, NOW, S) if not start + 100 * S < t < start + 160 * S]
    stamps.remove(start + 500 * S)  # one poll missing: within the 2.5 interval threshold
    summary = find_gaps(
        stamps,
        interval_ms=S,
        window_start_ms=start,
        now_ms=NOW,
        latency_ms=2 * S,
        data_before_window=True,
    )
    assert summary.gaps == ((start + 100 * S, start + 160 * S),)
    assert summary.missing_ms == 60 * S
    finding = judge_gaps("m", "p", summary, _fmt)
    assert finding.verdict is Verdict.WARN
    assert finding.details["gaps"] == [
        {"start": str(start // 1000 + 100), "end": str(start // 1000 + 160), "seconds": 60.0}
    ]


def test_data_that_stopped_fails_and_a_new_device_has_no_leading_gap() -> None:
    start = NOW - 3600 * S
    stamps = list(range(NOW - 600 * S, NOW - 300 * S, S))
    summary = find_gaps(
        stamps,
        interval_ms=S,
        window_start_ms=start,
        now_ms=NOW,
        latency_ms=2 * S,
        data_before_window=False,
    )
    # The window starts at the first sample; the end is missing since the last.
    assert summary.window_start_ms == NOW - 600 * S
    assert summary.ongoing
    finding = judge_gaps("m", "p", summary, _fmt)
    assert finding.verdict is Verdict.FAIL
    assert finding.finding.startswith(f"no data from m since {(NOW - 301 * S) // 1000}")
    empty = find_gaps(
        [],
        interval_ms=S,
        window_start_ms=start,
        now_ms=NOW,
        latency_ms=0,
        data_before_window=False,
    )
    assert judge_gaps("m", "p", empty, _fmt).verdict is Verdict.FAIL


def test_a_fifth_of_the_window_missing_fails() -> None:
    start = NOW - 3600 * S
    stamps = [t for t in range(start, NOW, S) if not start < t < start + 800 * S]
    summary = find_gaps(
        stamps,
        interval_ms=S,
        window_start_ms=start,
        now_ms=NOW,
        latency_ms=2 * S,
        data_before_window=True,
    )
    assert not summary.ongoing
    assert judge_gaps("m", "p", summary, _fmt).verdict is Verdict.FAIL


# ------------------------------------------------------------------ clock


def test_clock_verdicts_and_what_was_compared() -> None:
    assert judge_clock([], 300).verdict is Verdict.SKIPPED
    close = judge_clock([ClockEvidence("PostgreSQL server", -0.4)], 300)
    assert close.verdict is Verdict.OK
    assert "PostgreSQL server: 0.400 s behind this host" in close.finding
    off = judge_clock([ClockEvidence("PostgreSQL server", 12.0)], 300)
    assert off.verdict is Verdict.WARN
    assert off.fix is not None
    assert "timedatectl" in off.fix
    far = judge_clock([ClockEvidence("gateway", 400.0, ahead_only=True)], 300)
    assert far.verdict is Verdict.FAIL
    assert "ingest rejects samples" in far.finding
    # A stamp that lags (delivery time) says nothing about a clock behind.
    lagging = judge_clock([ClockEvidence("newest stored sample", -900.0, ahead_only=True)], 300)
    assert lagging.verdict is Verdict.OK
    assert "not ahead" in lagging.finding


# ------------------------------------------------------------------ report


def test_the_report_exits_1_only_on_a_failure_and_renders_fixes() -> None:
    results = [
        CheckResult.of("broker", "mqtt://b", Finding(Verdict.OK, "session in 3 ms")),
        CheckResult.of("broker_tls", "mqtt://b", Finding(Verdict.SKIPPED, "plain")),
        CheckResult.of("clock", "this host", Finding(Verdict.WARN, "12 s", "sync it")),
    ]
    report = DoctorReport("s", Path("/site.yaml"), 0, 0.5, list(results))
    assert report.verdict is Verdict.WARN
    assert report.exit_code == 0
    report.results.append(
        CheckResult.of("device", "m", Finding(Verdict.FAIL, "refused: x", "check the port"))
    )
    assert report.exit_code == 1
    data = report.as_json()
    assert data["schema"] == "gridpilot.doctor/1"
    assert data["counts"] == {"ok": 1, "skipped": 1, "warn": 1, "fail": 1}
    assert data["checks"][3] == {
        "check": "device",
        "subject": "m",
        "verdict": "fail",
        "finding": "refused: x",
        "fix": "check the port",
        "duration_s": 0.0,
        "details": {},
    }
    lines = report.render_text().splitlines()
    assert lines[1].startswith("ok    broker        mqtt://b: session in 3 ms")
    assert lines[4].startswith("FAIL  device        m: refused: x")
    fixes = lines[lines.index("What to do next:") + 1 :]
    assert fixes[0] == "  FAIL device m: check the port"  # failures first
    assert fixes[1] == "  WARN clock this host: sync it"
    assert "1 failed, 1 warning(s), 1 ok, 1 skipped" in lines[-1]
    only_skipped = DoctorReport("s", Path("/x"), 0, 0.1, results[1:2])
    assert only_skipped.verdict is Verdict.OK


# ------------------------------------------------------------------ running services

LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1024                 524288               files
Max locked memory         8388608              8388608              bytes
"""


def test_proc_limits_give_the_open_file_limit() -> None:
    assert parse_proc_limits(LIMITS) == (1024, 524288)
    assert parse_proc_limits(LIMITS.replace("1024 ", "unlimited")) == (-1, 524288)
    assert parse_proc_limits("Max cpu time unlimited unlimited seconds\n") is None


@pytest.mark.parametrize(
    ("argv", "service"),
    [
        (["/usr/bin/gridpilot", "run", "gateway", "/etc/gridpilot/site.yaml"], True),
        (["/usr/bin/python3", "-m", "gridpilot", "run", "all", "site.yaml"], True),
        (["gridpilot", "demo", "--data-dir", "/srv/demo"], True),
        (["gridpilot", "doctor", "site.yaml"], False),
        (["/srv/gridpilot/.venv/bin/pytest", "-q"], False),
        (["python3", "-c", "gridpilot", "run"], False),
        (["vim", "gridpilot"], False),
    ],
)
def test_service_command_lines(argv: list[str], service: bool) -> None:
    assert is_service_command(argv) is service


def test_a_gap_finding_names_the_longest_gap() -> None:
    start = NOW - 3600 * S
    stamps = [t for t in range(start, NOW, S) if not start + 100 * S < t < start + 160 * S]
    summary = find_gaps(
        stamps,
        interval_ms=S,
        window_start_ms=start,
        now_ms=NOW,
        latency_ms=2 * S,
        data_before_window=True,
    )
    finding = judge_gaps("m", "p", summary, _fmt)
    assert f"longest 60 s, from {start // 1000 + 100} to {start // 1000 + 160}" in finding.finding
