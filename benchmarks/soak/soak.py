"""Soak: the demo site (``gridpilot demo``, everything in one process) for simulated days at
accelerated time, with its memory and open file descriptors sampled every simulated hour.

    .venv/bin/python benchmarks/soak/soak.py --days 7 --rate 10 --json soak.json
    .venv/bin/python benchmarks/soak/soak.py --days 0.25 --rate 20          # a smoke run

Why libfaketime: ``demo --speed`` accelerates only the simulator's physics, while polling,
control cycles, timestamps and storage run on the wall clock. So the demo runs under
libfaketime (``LD_PRELOAD``, for its process only; the machine's clock is untouched) with
``FAKETIME="@<start> x<rate>"``: its wall clock starts at ``--start`` and it and the monotonic
clock run ``rate`` times faster, and so do the sleeps and the epoll timeouts asyncio waits
in. Every part of the process then lives through the simulated span: poll schedules, 1 s
control cycles, sample timestamps, rollups, day and month boundaries, the forecasters'
histories, the IEEE 2030.5 client's polling, every per-sample structure. The simulator
advances its building by the event loop's clock (monotonic, already accelerated), so the
matching ``--speed`` is 1, and ``--sim-start`` is the faked clock's start.

What it cannot speed up is the CPU: every simulated second still costs its polls, messages,
rows and cycle, so the rate is bounded by what the machine sustains, and timeouts (0.5 s per
Modbus request) shrink by the rate as well. Each sample therefore also records what the
process reports about keeping up: control-cycle overruns, poll ticks skipped, failed polls,
its CPU share.

Every simulated hour: RSS (VmRSS), peak RSS (VmHWM), open fds (/proc/PID/fd), threads, the
database's size and its WAL's, the process's CPU time, and from ``/metrics`` the control
cycles, overruns, polls, ticks skipped, samples written. At the end, from the database, the
samples stored in every simulated hour: a process that stalled cannot pass as flat, the run
fails if any hour stored less than half the median hour or ran no control cycle.

After the warm-up (default: the first simulated day, or a quarter of a shorter run), a
least-squares slope of RSS and fds against simulated time, per simulated day. Verdict
(``--check``, the default): fail if the fd slope exceeds 1 fd/day or the RSS slope exceeds
2 MB/day. 2 MB/day is a leak of ~23 bytes per control cycle (86,400 a day), ~0.2 bytes per
stored sample; one retained object per cycle, poll or sample is well above it.

Loopback only: the demo's broker, API, utility server and devices are on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HOUR_S = 3600.0
DAY_S = 86_400.0
RSS_LIMIT_MB_PER_DAY = 2.0
FD_LIMIT_PER_DAY = 1.0
# SQLite's page caches are bounded by configuration (storage/sqlite.py: 64 MiB for the
# writer, 16 MiB for each of 2 readers = 100.7 MB) and fill as the database grows; the
# rest (statements, schema, the gateway buffer's own small database) is a few MB.
SQLITE_LIMIT_MB = 128.0
PROBE_DIR = Path(__file__).resolve().parent / "probe"
PROBE_FILE = "soak-probe.json"
PROBE_PERIOD_S = 60.0  # simulated
DEFAULT_START = "2026-07-06T00:00:00"  # a Monday: the week runs Monday to Sunday
BANNER_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 120.0


def find_libfaketime() -> Path | None:
    """Debian's libfaketime, for the multiarch directory at hand."""
    return next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)


@dataclass
class Sample:
    """One simulated hour's look at the process."""

    sim_hour: float
    wall_s: float
    rss_mb: float
    """The demo's process and its children (worker processes), summed; so are fds."""
    hwm_mb: float
    """The demo's own process."""
    fds: int
    threads: int
    children: int
    db_mb: float
    wal_mb: float
    """The WAL: up to 64 MiB between checkpoints (storage.sqlite), then truncated."""
    cpu_s: float
    control_cycles: float | None
    control_overruns: float | None
    polls: float | None
    polls_failed: float | None
    ticks_skipped: float | None
    samples_written: float | None
    poll_jitter_p99_s: float | None
    """The worst device's p99 poll start delay since start, simulated seconds."""
    sqlite_mb: float | None
    """SQLite's own memory in the demo (the probe): page caches, statements."""
    py_blocks: int | None
    """Live blocks in Python's small-object allocator (the probe)."""
    malloc_in_use_mb: float | None
    """glibc malloc's bytes in use, all arenas and mmap'd blocks (the probe)."""
    malloc_free_mb: float | None
    """... and held free by malloc, not returned to the system."""
    load_1m: float


@dataclass
class Report:
    """What a soak run found; written as JSON."""

    start: str
    days: float
    rate: float
    warmup_hours: float
    machine: dict[str, Any]
    demo_options: list[str] = field(default_factory=list)
    """The options given to the demo beyond the clock (``--mqtt-keepalive``, and for a
    lighter site ``--poll-every``, ``--cycle``)."""
    wall_s: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    bin_minutes: float = 60.0
    stored_per_bin: list[int] = field(default_factory=list)
    """Samples stamped in each simulated ``bin_minutes`` (= --sample-minutes, at most 60)."""
    stored_per_hour: list[int] = field(default_factory=list)
    exit_code: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "load_at_start": os.getloadavg(),
    }


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def descendants(pid: int) -> list[int]:
    """The processes under ``pid`` (worker pools, a forkserver): their memory and fds count
    too, or a leak could hide in a child."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def kb_to_mb(text: str) -> float:
    return int(text.split(maxsplit=1)[0]) / 1024.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        # Fields after the command name (which may hold spaces): utime, stime are 14 and 15.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def file_mb(path: Path) -> float:
    try:
        return path.stat().st_size / 1e6
    except FileNotFoundError:
        return 0.0


JITTER_QUANTILE = "gridpilot_device_poll_jitter_quantile_seconds"
JITTER_P99 = "poll_jitter_p99_max_s"
_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([^ ]+)")


def scrape(url: str, token: str) -> dict[str, float]:
    """``/metrics`` summed over labels: name -> value."""
    # The demo's own API on 127.0.0.1, http: the URL it printed.
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        text = response.read().decode("utf-8")
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match is None:
            continue
        value = float(match.group(3))
        if not math.isfinite(value):
            continue
        name, labels = match.group(1), match.group(2) or ""
        if name == JITTER_QUANTILE:
            # A quantile does not add up across devices: the worst device's p99.
            if 'quantile="0.99"' in labels:
                totals[JITTER_P99] = max(totals.get(JITTER_P99, 0.0), value)
            continue
        totals[name] = totals.get(name, 0.0) + value
    return totals


def wait_for_banner(log: Path, process: subprocess.Popen[bytes]) -> tuple[str, str]:
    """The API's URL and the sign-in token, from what the demo prints once it is up."""
    deadline = time.monotonic() + BANNER_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text(encoding="utf-8", errors="replace")
        url = re.search(r"dashboard\s+(http://127\.0\.0\.1:\d+)/", text)
        token = re.search(r"sign in with\s+(\S+)", text)
        if url and token:
            return url.group(1), token.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"the demo did not come up:\n{log.read_text(errors='replace')[-3000:]}")


def slope_per_day(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y against x (simulated hours), per simulated day."""
    if len(points) < 2:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx * 24.0


def stored_per_bin(db: Path, start: datetime, bins: int, bin_minutes: float) -> list[int]:
    """Samples with a timestamp in each simulated bin (of ``bin_minutes``), from the database."""
    start_ms = int(start.timestamp() * 1000)
    width_ms = round(bin_minutes * 60_000)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        series = [row[0] for row in conn.execute("SELECT id FROM series")]
        counts = []
        for b in range(bins):
            lo = start_ms + b * width_ms
            total = 0
            # Per series: a range on the (series_id, ts_ms) key, not a scan of the table.
            for series_id in series:
                total += conn.execute(
                    "SELECT count(*) FROM samples WHERE series_id = ? AND ts_ms >= ? AND ts_ms < ?",
                    (series_id, lo, lo + width_ms),
                ).fetchone()[0]
            counts.append(total)
    conn.close()
    return counts


def _mb(value: float | None) -> float | None:
    return None if value is None else round(value / 1e6, 2)


def read_probe(path: Path) -> dict[str, Any]:
    """The probe's last figures (``probe/sitecustomize.py``); empty before its first write."""
    try:
        figures: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return figures


def take_sample(
    pid: int, sim_hour: float, wall_s: float, data_dir: Path, metrics_url: str, token: str
) -> Sample:
    probe = read_probe(data_dir / PROBE_FILE)
    sqlite_bytes = probe.get("sqlite_bytes")
    status = proc_status(pid)
    rss_mb = kb_to_mb(status["VmRSS"])
    fds = fd_count(pid)
    threads = int(status["Threads"])
    children = descendants(pid)
    for child in children:
        try:
            child_status = proc_status(child)
            rss_mb += kb_to_mb(child_status.get("VmRSS", "0 kB"))
            threads += int(child_status["Threads"])
            fds += fd_count(child)
        except (OSError, KeyError):  # it ended between the listing and the look
            continue
    try:
        m: dict[str, float] = scrape(metrics_url, token)
    except OSError as exc:  # a missed scrape is recorded as None, the /proc figures stand
        print(f"  /metrics at hour {sim_hour:g}: {exc}", file=sys.stderr)
        m = {}
    return Sample(
        sim_hour=round(sim_hour, 3),
        wall_s=round(wall_s, 1),
        rss_mb=round(rss_mb, 2),
        hwm_mb=round(kb_to_mb(status["VmHWM"]), 2),
        fds=fds,
        threads=threads,
        children=len(children),
        db_mb=round(file_mb(data_dir / "gridpilot.db"), 2),
        wal_mb=round(file_mb(data_dir / "gridpilot.db-wal"), 2),
        cpu_s=round(cpu_seconds(pid), 2),
        control_cycles=m.get("gridpilot_control_cycles_total"),
        control_overruns=m.get("gridpilot_control_cycle_overruns_total"),
        polls=m.get("gridpilot_device_polls_total"),
        polls_failed=m.get("gridpilot_device_polls_failed_total"),
        ticks_skipped=m.get("gridpilot_device_ticks_skipped_total"),
        samples_written=m.get("gridpilot_ingest_samples_written_total"),
        poll_jitter_p99_s=m.get(JITTER_P99),
        sqlite_mb=None if sqlite_bytes is None else round(sqlite_bytes / 1e6, 2),
        py_blocks=probe.get("py_blocks"),
        malloc_in_use_mb=_mb(probe.get("malloc_in_use_bytes")),
        malloc_free_mb=_mb(probe.get("malloc_free_bytes")),
        load_1m=round(os.getloadavg()[0], 2),
    )


def delta(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else later - earlier


def analyse(report: Report, check: bool) -> None:
    samples = report.samples
    after = [s for s in samples if s.sim_hour >= report.warmup_hours]
    summary: dict[str, Any] = {
        "hours_sampled": len(samples),
        "post_warmup_samples": len(after),
    }
    # RSS without SQLite's own memory: its page caches fill for hours as the database grows
    # (bounded, checked apart); what is left is Python's heap, threads, buffers.
    probed = [s for s in after if s.sqlite_mb is not None]
    if probed and len(probed) == len(after):
        summary |= {
            "sqlite_mb_slope_per_day": round(
                slope_per_day([(s.sim_hour, s.sqlite_mb or 0.0) for s in probed]), 3
            ),
            "rss_minus_sqlite_mb_slope_per_day": round(
                slope_per_day([(s.sim_hour, s.rss_mb - (s.sqlite_mb or 0.0)) for s in probed]), 3
            ),
            "sqlite_mb_max": max(s.sqlite_mb or 0.0 for s in probed),
        }
    mallocs = [s for s in after if s.malloc_in_use_mb is not None]
    if mallocs and len(mallocs) == len(after):
        summary |= {
            "malloc_in_use_mb_slope_per_day": round(
                slope_per_day([(s.sim_hour, s.malloc_in_use_mb or 0.0) for s in mallocs]), 3
            ),
            "malloc_free_mb_slope_per_day": round(
                slope_per_day([(s.sim_hour, s.malloc_free_mb or 0.0) for s in mallocs]), 3
            ),
        }
    blocks = [s for s in after if s.py_blocks is not None]
    if blocks and len(blocks) == len(after):
        summary |= {
            "py_blocks_slope_per_day": round(
                slope_per_day([(s.sim_hour, float(s.py_blocks or 0)) for s in blocks])
            ),
            "py_blocks_min": min(s.py_blocks or 0 for s in blocks),
            "py_blocks_max": max(s.py_blocks or 0 for s in blocks),
        }
    if after:
        summary |= {
            "rss_mb_slope_per_day": round(
                slope_per_day([(s.sim_hour, s.rss_mb) for s in after]), 3
            ),
            "fds_slope_per_day": round(slope_per_day([(s.sim_hour, s.fds) for s in after]), 3),
            "threads_slope_per_day": round(
                slope_per_day([(s.sim_hour, s.threads) for s in after]), 3
            ),
            "rss_mb_min": min(s.rss_mb for s in after),
            "rss_mb_max": max(s.rss_mb for s in after),
            "fds_min": min(s.fds for s in after),
            "fds_max": max(s.fds for s in after),
            "threads_min": min(s.threads for s in after),
            "threads_max": max(s.threads for s in after),
        }
    if samples:
        last, first = samples[-1], samples[0]
        summary |= {
            "hwm_mb": last.hwm_mb,
            "db_mb": last.db_mb,
            "cpu_share": round(
                (last.cpu_s - first.cpu_s) / max(last.wall_s - first.wall_s, 1e-9), 3
            ),
            "control_cycles": last.control_cycles,
            "control_overruns": last.control_overruns,
            "polls": last.polls,
            "polls_failed": last.polls_failed,
            "ticks_skipped": last.ticks_skipped,
            "samples_written": last.samples_written,
            "poll_jitter_p99_max_s": last.poll_jitter_p99_s,
        }
        if last.polls and last.ticks_skipped is not None and last.polls_failed is not None:
            # Keeping up: polls that failed (timeouts shrink by the rate too) and poll
            # ticks the gateway skipped because the previous poll overran.
            summary["polls_failed_share"] = round(last.polls_failed / last.polls, 4)
            summary["ticks_skipped_share"] = round(
                last.ticks_skipped / (last.polls + last.ticks_skipped), 4
            )
    stored = report.stored_per_hour
    if stored:
        summary |= {
            "stored_total": sum(report.stored_per_bin),
            "stored_per_hour_min": min(stored),
            "stored_per_hour_median": statistics.median(stored),
            "stored_per_hour_max": max(stored),
        }
    # Bins that started before the first look (start-up: imports, certificates, at the
    # rate's pace) are not judged, nor the last (what was in flight when the demo was
    # stopped); every other must have stored at least half the median.
    first_look = samples[0].sim_hour * 60.0 if samples else math.inf
    judged = [
        (b, n)
        for b, n in enumerate(report.stored_per_bin[:-1])
        if b * report.bin_minutes >= first_look
    ]
    if judged:
        median = statistics.median(n for _, n in judged)
        summary["stored_per_bin_median"] = median
        summary["stored_per_bin_min"] = min(n for _, n in judged)
        thin = [round(b * report.bin_minutes / 60.0, 2) for b, n in judged if n < median / 2]
        if thin:
            report.failures.append(
                f"stored < half the median in the {report.bin_minutes:g} simulated minutes "
                f"from hour {thin[:20]}"
            )
    idle = [
        s.sim_hour
        for prev, s in itertools.pairwise(samples)
        if (delta(s.control_cycles, prev.control_cycles) or 0) <= 0
    ]
    if idle:
        report.failures.append(f"no control cycle before simulated hours {idle[:20]}")
    if report.exit_code != 0:
        report.failures.append(f"the demo exited with {report.exit_code}")
    if check and after:
        if summary["fds_slope_per_day"] > FD_LIMIT_PER_DAY:
            report.failures.append(
                f"open fds grow {summary['fds_slope_per_day']}/day > {FD_LIMIT_PER_DAY}"
            )
        # With the probe's figures, the RSS rule applies to what is not SQLite's, and
        # SQLite's memory must stay within its caches' bound.
        rss_key = (
            "rss_minus_sqlite_mb_slope_per_day"
            if "rss_minus_sqlite_mb_slope_per_day" in summary
            else "rss_mb_slope_per_day"
        )
        if summary[rss_key] > RSS_LIMIT_MB_PER_DAY:
            report.failures.append(
                f"{rss_key} = {summary[rss_key]} > {RSS_LIMIT_MB_PER_DAY} MB/day"
            )
        if summary.get("sqlite_mb_max", 0.0) > SQLITE_LIMIT_MB:
            report.failures.append(
                f"SQLite's memory reached {summary['sqlite_mb_max']} MB > {SQLITE_LIMIT_MB}"
            )
    report.summary = summary


def print_table(report: Report) -> None:
    print(
        f"{'sim h':>6} {'wall s':>7} {'RSS MB':>7} {'HWM MB':>7} {'fds':>4} {'thr':>4} "
        f"{'db MB':>7} {'WAL MB':>6} {'SQLite':>6} {'malloc':>6} {'free':>5} {'kblocks':>7} "
        f"{'cycles/h':>8} "
        f"{'overrun':>7} {'skipped':>7} {'failed':>6} "
        f"{'stored':>8} {'load':>5}"
    )
    previous: Sample | None = None
    for s in report.samples:
        per_hour = (
            "" if cycles_per_hour(s, previous) is None else f"{cycles_per_hour(s, previous):.0f}"
        )
        hour = round(s.sim_hour)
        whole = abs(s.sim_hour - hour) < 0.05 and 0 < hour <= len(report.stored_per_hour)
        stored = report.stored_per_hour[hour - 1] if whole else ""
        print(
            f"{s.sim_hour:>6g} {s.wall_s:>7.0f} {s.rss_mb:>7.1f} {s.hwm_mb:>7.1f} {s.fds:>4} "
            f"{s.threads:>4} {s.db_mb:>7.1f} {s.wal_mb:>6.1f} {_num(s.sqlite_mb):>6} "
            f"{_num(s.malloc_in_use_mb):>6} {_num(s.malloc_free_mb):>5} "
            f"{_num(None if s.py_blocks is None else s.py_blocks / 1000):>7} {per_hour:>8} "
            f"{_num(s.control_overruns):>7} {_num(s.ticks_skipped):>7} "
            f"{_num(s.polls_failed):>6} {stored!s:>8} {s.load_1m:>5.2f}"
        )
        previous = s
    print(json.dumps(report.summary, indent=1))
    for failure in report.failures:
        print(f"FAIL: {failure}")
    print("PASS" if not report.failures else "FAILED")


def cycles_per_hour(sample: Sample, previous: Sample | None) -> float | None:
    if previous is None:
        return None
    cycles = delta(sample.control_cycles, previous.control_cycles)
    return None if cycles is None else cycles / max(sample.sim_hour - previous.sim_hour, 1e-9)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def run(args: argparse.Namespace) -> Report:
    faketime = find_libfaketime()
    if faketime is None:
        raise SystemExit("libfaketime is not installed (apt install libfaketime)")
    start = datetime.fromisoformat(args.start).replace(tzinfo=UTC)
    if not (60.0 % args.sample_minutes == 0 or args.sample_minutes % 60.0 == 0):
        raise SystemExit("--sample-minutes must divide an hour or be whole hours")
    total_hours = round(args.days * 24)
    if total_hours < 1:
        raise SystemExit("--days must cover at least one simulated hour")
    warmup = args.warmup_hours if args.warmup_hours is not None else min(24.0, total_hours / 4)
    report = Report(
        start=start.isoformat(),
        days=args.days,
        rate=args.rate,
        warmup_hours=warmup,
        machine=machine_info(),
        demo_options=lighter_site(args),
    )
    if args.data_dir is not None:
        args.data_dir.mkdir(parents=True, exist_ok=False)
        data_dir = args.data_dir
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="gridpilot-soak-"))
    log_path = data_dir / "demo.log"
    env = dict(os.environ)
    if args.src is not None:
        # Run a given source tree (e.g. an exported commit) rather than the installed one.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(args.src.resolve()), env.get("PYTHONPATH")) if p
        )
    # The probe (probe/sitecustomize.py) first on the path: Python imports it at start-up.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROBE_DIR), env.get("PYTHONPATH")) if p)
    env |= {
        "GRIDPILOT_SOAK_PROBE": str(data_dir / PROBE_FILE),
        "GRIDPILOT_SOAK_PROBE_PERIOD": f"{PROBE_PERIOD_S:g}",
        "LD_PRELOAD": str(faketime),
        "FAKETIME": f"@{start:%Y-%m-%d %H:%M:%S} x{args.rate:g}",
        "PYTHONUNBUFFERED": "1",
    }
    # The span plus an hour: the harness stops it; --duration is the backstop.
    duration_s = total_hours * HOUR_S + HOUR_S
    command = [
        sys.executable, "-m", "gridpilot", "demo", "--duration", f"{duration_s:g}",
        "--data-dir", str(data_dir), "--mqtt-port", "0", "--http-port", "0",
        "--speed", "1", "--sim-start", f"{start:%Y-%m-%dT%H:%M:%S}", *report.demo_options,
    ]  # fmt: skip
    print(f"data dir {data_dir}; FAKETIME={env['FAKETIME']}; {' '.join(command[1:])}", flush=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    launched = time.monotonic()
    try:
        api, token = wait_for_banner(log_path, process)
        metrics_url = f"{api}/metrics"
        step_wall = args.sample_minutes * 60.0 / args.rate
        steps = math.ceil(total_hours * 60.0 / args.sample_minutes)
        for step in range(steps + 1):
            # Step 0 is the first look after start-up; then every --sample-minutes.
            due = launched + step * step_wall
            time.sleep(max(0.0, due - time.monotonic()))
            if process.poll() is not None:
                report.failures.append(
                    f"the demo died before simulated hour {step * args.sample_minutes / 60:g}"
                )
                break
            wall = time.monotonic() - launched
            sample = take_sample(process.pid, wall * args.rate / HOUR_S, wall, data_dir,
                                 metrics_url, token)  # fmt: skip
            report.samples.append(sample)
            print(
                f"  h{sample.sim_hour:7.2f} RSS {sample.rss_mb:6.1f} MB fds {sample.fds} "
                f"threads {sample.threads} db {sample.db_mb:.1f} MB SQLite "
                f"{_num(sample.sqlite_mb)} MB malloc {_num(sample.malloc_in_use_mb)} MB "
                f"(+{_num(sample.malloc_free_mb)} free) kblocks "
                f"{_num(None if sample.py_blocks is None else sample.py_blocks / 1000)} cycles "
                f"{_num(sample.control_cycles)} overruns {_num(sample.control_overruns)} "
                f"skipped {_num(sample.ticks_skipped)} load {sample.load_1m}",
                flush=True,
            )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            report.exit_code = process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            report.exit_code = process.wait()
        report.wall_s = round(time.monotonic() - launched, 1)
    report.bin_minutes = min(args.sample_minutes, 60.0)
    per_hour = round(60.0 / report.bin_minutes)
    report.stored_per_bin = stored_per_bin(
        data_dir / "gridpilot.db", start, math.ceil(total_hours * per_hour), report.bin_minutes
    )
    report.stored_per_hour = [
        sum(report.stored_per_bin[h * per_hour : (h + 1) * per_hour]) for h in range(total_hours)
    ]
    report.machine["load_at_end"] = os.getloadavg()
    report.machine["demo_log_tail"] = log_path.read_text(errors="replace")[-1500:]
    if args.keep or args.data_dir is not None:
        print(f"kept {data_dir}")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
    analyse(report, args.check)
    return report


MQTT_KEEPALIVE_REAL_S = 30.0


def lighter_site(args: argparse.Namespace) -> list[str]:
    """The demo's options: its MQTT keep-alive stretched by the rate, so that it is 30 s of
    real time as in a demo at x1 (at x100 the demo's own 30 s is 0.3 s of real time, and a
    loop stall of half a second -- a checkpoint, a collection -- drops every connection);
    and, when asked, a lighter site: fewer polls and cycles per simulated second, so that a
    higher rate fits the CPU (the same code paths, less often)."""
    keepalive = min(3600, max(30, round(MQTT_KEEPALIVE_REAL_S * args.rate)))
    options: list[str] = ["--mqtt-keepalive", str(keepalive)]
    if args.poll_every is not None:
        options += ["--poll-every", f"{args.poll_every:g}"]
    if args.cycle is not None:
        options += ["--cycle", f"{args.cycle:g}"]
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=7.0, help="simulated days (default 7)")
    parser.add_argument(
        "--rate", type=float, default=10.0, help="simulated seconds per wall second (10)"
    )
    parser.add_argument("--start", default=DEFAULT_START, help="simulated start, UTC")
    parser.add_argument(
        "--warmup-hours", type=float, help="excluded from the slopes (24, or a quarter)"
    )
    parser.add_argument(
        "--sample-minutes", type=float, default=60.0, help="simulated minutes between looks (60)"
    )
    parser.add_argument(
        "--poll-every", type=float, help="demo --poll-every: poll each device at most this often"
    )
    parser.add_argument("--cycle", type=float, help="demo --cycle: the control cycle, s (1)")
    parser.add_argument("--src", type=Path, help="run gridpilot from this src directory")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument(
        "--data-dir", type=Path, help="a new directory for the demo's data, kept (default: temp)"
    )
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"fail on fds > {FD_LIMIT_PER_DAY}/day or RSS > {RSS_LIMIT_MB_PER_DAY} MB/day",
    )
    args = parser.parse_args(argv)
    report = run(args)
    print_table(report)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=1) + "\n", encoding="utf-8")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
