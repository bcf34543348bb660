"""Fuzzing of Modbus reply decoding and telemetry validation (issue 7, item 10).

Seeded random mutation of real samples, plus wholly random input, fed to the project's
pure decoding entry points. "No crash" means: only the exceptions each API documents for
bad input come out, and what comes back keeps its documented invariants. Anything else
(IndexError, KeyError, RecursionError, struct.error, a NaN where a value was promised, an
input that takes seconds) is a finding, printed with the input that caused it.

Targets:

* ``modbus`` -- the fieldbus decoding chain, one of three cases per input in turn:

  - RTU reply frames (``rtu_frame.check_reply``, ``reply_length``, ``request_length``,
    ``crc_ok``): mutated read/exception/echo replies and random bytes, asked for with the
    right or a random unit and function. Documented: no exception; a verdict. A frame judged
    ``complete`` for a register read goes on: its data bytes become words decoded by the
    codec (below), as the gateway does.
  - Register decoding (``codec.decode``) for every data type x word order x byte order, bit
    tables, bitfield bits, scales and offsets: words mutated towards edge values, the wrong
    count, out of 0..65535. Documented: ``DecodeError``; a float result is finite.
  - SunSpec (``sunspec.parse_header``, ``sunspec.decode_model``): the register images of the
    project's simulated inverter, meter and battery (``gridpilot.sim.sunspec_devices``),
    mutated (point words, ID, L, counts, truncation) and walked as a model chain the way
    discovery does. Documented: ``SunSpecError``.

* ``telemetry`` -- ``ingest.validation.validate``, the MQTT payload checker (and, on the same
  payload, ``bus.codec.decode_telemetry``, documented to raise ``PayloadError``): valid messages
  mutated at byte level (dictionary tokens such as ``NaN``, ``1e400``, ``[``, ``\\ud800``),
  generated JSON with wrong types, huge and non-finite numbers, deep nesting (to 1,100
  levels) and random bytes. Documented: no exception at all (every problem is a
  ``Rejection``); every sample is a finite float within its point's range.

    .venv/bin/python benchmarks/fuzz/fuzz.py                         # 1,000,000 per target
    .venv/bin/python benchmarks/fuzz/fuzz.py --target telemetry --inputs 20000 --seed 7
    .venv/bin/python benchmarks/fuzz/fuzz.py --json benchmarks/results/fuzz.json

Exit status 1 when a target had a finding. See README.md here and docs/reliability.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any

from gridpilot.bus.codec import decode_telemetry
from gridpilot.bus.errors import PayloadError
from gridpilot.fieldbus import rtu_frame
from gridpilot.fieldbus.codec import RegisterSpec, decode
from gridpilot.fieldbus.errors import DecodeError
from gridpilot.fieldbus.sunspec import (
    END_MODEL_ID,
    HEADER_LENGTH,
    MARKER,
    MAX_MODELS,
    SunSpecError,
    decode_model,
    parse_header,
)
from gridpilot.ingest.validation import ValidationRules, validate
from gridpilot.model import ByteOrder, DataType, Table, WordOrder

SLOW_S = 1.0
"""An input that takes longer than this is a finding (a device or a sender could stall the
gateway or ingest with it)."""
MAX_FINDINGS = 20
"""Findings kept per target (each with its input); the count goes on."""


class Finding(Exception):  # noqa: N818  # a result, not an error of this program
    """A documented invariant broken without an exception (e.g. a NaN value)."""


@dataclass
class Report:
    target: str
    seed: int
    inputs: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    """Per outcome: a verdict (``rtu:crc``), a documented exception (``raised:DecodeError``)
    or a finding (``FINDING:IndexError``)."""
    findings: list[dict[str, str]] = field(default_factory=list)
    finding_count: int = 0
    slowest_s: float = 0.0
    slowest_case: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "seed": self.seed,
            "inputs": self.inputs,
            "seconds": round(self.seconds, 2),
            "inputs_per_s": round(self.inputs / self.seconds) if self.seconds else None,
            "outcomes": dict(sorted(self.outcomes.items())),
            "finding_count": self.finding_count,
            "findings": self.findings,
            "slowest_input_ms": round(self.slowest_s * 1000, 2),
            "slowest_case": self.slowest_case,
        }


@dataclass
class Case:
    """The input being tried: kept so that a finding can be printed with it."""

    name: str = ""
    data: object = None


Step = Callable[[random.Random, Case], str]


# ------------------------------------------------------------------------------ mutation

EDGE_WORDS = (0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFE, 0xFFFF, 0x7F80, 0xFF80, 0x7FC0, 0x7FF0)
BAD_WORDS = (-1, 0x10000, 2**31, 2**64, -(2**63))


def mutate_bytes(rng: random.Random, data: bytes, tokens: Sequence[bytes] = ()) -> bytes:
    """One to four random edits: flip a bit, set a byte, insert, delete, truncate, duplicate
    a slice, or insert a dictionary token."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8 if tokens else 7)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[at % len(out)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[at % len(out)] = rng.randrange(256)
        elif op == 2:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and out:
            del out[at : at + rng.randint(1, 8)]
        elif op == 4:
            del out[at:]
        elif op == 5 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randint(1, 32)]
        elif op == 6 and out:
            out[at % len(out)] = rng.choice((0x00, 0xFF, 0x80, 0x7F))
        elif tokens:
            out[at:at] = rng.choice(tokens)
    return bytes(out)


def mutate_words(rng: random.Random, words: list[int], *, bad: bool) -> list[int]:
    out = list(words)
    for _ in range(rng.randint(1, 3)):
        if not out:
            break
        at = rng.randrange(len(out))
        op = rng.randrange(4 if bad else 3)
        if op == 0:
            out[at] = rng.choice(EDGE_WORDS)
        elif op == 1:
            out[at] = rng.randrange(0x10000)
        elif op == 2:
            out[at] ^= 1 << rng.randrange(16)
        else:
            out[at] = rng.choice(BAD_WORDS)
    return out


# ------------------------------------------------------------------------- modbus target

SCALES = (1.0, 0.1, 0.01, 0.001, 10.0, 1000.0, -1.0, 1e-9, 1e300, 0.5)
OFFSETS = (0.0, -273.15, 1e6, -1e308)


def register_specs() -> list[RegisterSpec]:
    """Every numeric type x word order x byte order x a few scales; text; bits."""
    specs: list[RegisterSpec] = []
    numeric = [t for t in DataType if t not in (DataType.STRING, DataType.BOOL)]
    for dtype, words, order, scale, offset in product(
        numeric, WordOrder, ByteOrder, SCALES, OFFSETS[:2]
    ):
        specs.append(
            RegisterSpec("p_w", Table.HOLDING, 100, dtype, word_order=words, byte_order=order,
                         scale=scale, offset=offset)
        )  # fmt: skip
    for dtype, offset in product(numeric, OFFSETS[2:]):
        specs.append(RegisterSpec("p_w", Table.INPUT, 100, dtype, scale=1e300, offset=offset))
    for length, order in product((1, 2, 8, 123), ByteOrder):
        specs.append(
            RegisterSpec("s_text", Table.HOLDING, 0, DataType.STRING, length, byte_order=order)
        )
    for bit, order in product((0, 7, 15), ByteOrder):
        specs.append(
            RegisterSpec("b_state", Table.HOLDING, 9, DataType.BITFIELD, bit=bit, byte_order=order)
        )
    for table in (Table.COIL, Table.DISCRETE):
        specs.append(RegisterSpec("c_state", table, 3, DataType.BOOL))
        specs.append(RegisterSpec("c_count", table, 3, DataType.UINT16))
    return specs


def sample_words(rng: random.Random, spec: RegisterSpec) -> list[int]:
    """Words a device could send for ``spec`` (then mutated)."""
    if spec.table.is_bit:
        return [rng.randrange(2)]
    if spec.dtype is DataType.STRING:
        text = rng.choice((b"GridPilot", b"SN-0042", "Zähler".encode(), b"\xff\xfe", b""))
        data = text[: spec.length * 2].ljust(spec.length * 2, b"\0")
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return [rng.randrange(0x10000) for _ in range(spec.register_count)]


def check_decoded(value: float | str) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Finding(f"decode returned {value}; documented: DecodeError for non-finite")
        return "decoded:number"
    if isinstance(value, str):
        return "decoded:text"
    raise Finding(f"decode returned a {type(value).__name__}: {value!r}")


def read_reply(rng: random.Random, unit: int, function: int) -> bytes:
    if function in (1, 2):
        count = rng.randint(0, 40)
        data = bytes(rng.randrange(256) for _ in range(count))
    else:
        count = 2 * rng.randint(0, 125)
        data = bytes(rng.choice((0, 0xFF, rng.randrange(256))) for _ in range(count))
    return rtu_frame.frame(unit, bytes([function, count]) + data)


def rtu_sample(rng: random.Random) -> tuple[bytes, int, int]:
    unit = rng.choice((1, 2, 17, 247, 0, 255))
    kind = rng.randrange(4)
    if kind == 0:
        function = rng.choice((3, 4, 1, 2))
        return read_reply(rng, unit, function), unit, function
    if kind == 1:
        function = rng.choice((3, 4, 6, 16))
        code = rng.choice((1, 2, 3, 4, 6, 11, 0, 255))
        return rtu_frame.frame(unit, bytes([function | 0x80, code])), unit, function
    if kind == 2:
        function = rng.choice((5, 6, 15, 16))
        body = bytes(rng.randrange(256) for _ in range(4))
        return rtu_frame.frame(unit, bytes([function]) + body), unit, function
    length = rng.choice((0, 1, 2, 3, 4, 5, 8, 64, 255, 256, 257, 300))
    return bytes(rng.randrange(256) for _ in range(length)), unit, rng.randrange(256)


def modbus_steps() -> Step:
    specs = register_specs()
    word_specs = [s for s in specs if not s.table.is_bit and s.dtype is not DataType.STRING]
    images = sunspec_images()

    def rtu(rng: random.Random, case: Case) -> str:
        data, unit, function = rtu_sample(rng)
        if rng.random() < 0.85:
            data = mutate_bytes(rng, data)
        if rng.random() < 0.1:
            unit, function = rng.randrange(256), rng.randrange(256)
        case.name, case.data = "rtu", (data.hex(), unit, function)
        rtu_frame.crc_ok(data)
        rtu_frame.request_length(data)
        length = rtu_frame.reply_length(data)
        check = rtu_frame.check_reply(data, unit, function)
        if check.status is rtu_frame.ReplyStatus.COMPLETE:
            if check.expected is None or check.expected > len(data) or length != check.expected:
                raise Finding(f"complete reply with expected={check.expected}, length={length}")
            if function in (3, 4) and not data[1] & 0x80:
                payload = data[3 : 3 + data[2]]
                words = [
                    int.from_bytes(payload[i : i + 2], "big") for i in range(0, len(payload) - 1, 2)
                ]
                spec = rng.choice(word_specs)
                for at in range(0, len(words), spec.register_count):
                    chunk = words[at : at + spec.register_count]
                    case.data = (data.hex(), unit, function, repr(spec), chunk)
                    with contextlib.suppress(DecodeError):
                        check_decoded(decode(spec, chunk))
        return f"rtu:{check.status.value}"

    def codec(rng: random.Random, case: Case) -> str:
        spec = rng.choice(specs)
        words = sample_words(rng, spec)
        roll = rng.random()
        if roll < 0.6:
            words = mutate_words(rng, words, bad=rng.random() < 0.2)
        elif roll < 0.7:
            words = words[: rng.randrange(len(words) + 1)] if words else [1, 2]
        elif roll < 0.75:
            words = [*words, rng.randrange(0x10000)]
        case.name, case.data = "codec", (repr(spec), words)
        return check_decoded(decode(spec, words))

    def sunspec(rng: random.Random, case: Case) -> str:
        base, image, models = rng.choice(images)
        if rng.random() < 0.05:
            # The whole chain, as discovery walks it (a device's worth: ~5 ms).
            words, start = list(image), 2
        else:
            # One model of the chain, headers included (most inputs: fast).
            start, end = rng.choice(models)
            words = [*image[start:end], END_MODEL_ID, 0]
        roll = rng.random()
        if roll < 0.5:
            words = mutate_words(rng, words, bad=False)
        elif roll < 0.8:
            # Aim at the headers (ID, L) and the counts: what the chain walk trusts.
            for _ in range(rng.randint(1, 3)):
                at = rng.randrange(len(words)) if rng.random() < 0.7 else rng.randrange(2)
                words[at] = rng.choice((*EDGE_WORDS, rng.randrange(1000), rng.randrange(200)))
        elif roll < 0.9:
            words = words[: rng.randrange(len(words) + 1)]
        else:
            words = [rng.choice((*EDGE_WORDS, rng.randrange(0x10000))) for _ in range(300)]
        case.name, case.data = "sunspec", (base + start, words)
        if start == 2:
            return walk_chain(base, words)
        return walk_chain(base + start, [*MARKER, *words])

    cases = (rtu, codec, sunspec)

    def step(rng: random.Random, case: Case) -> str:
        return rng.choice(cases)(rng, case)

    return step


def walk_chain(base: int, words: Sequence[int]) -> str:
    """Walk a model chain from just after the marker, as discovery does with reads."""
    at = 2
    models = 0
    while models < MAX_MODELS:
        header = parse_header(base + at, words[at : at + HEADER_LENGTH])
        if header is None:
            return "sunspec:chain_end"
        model_words = words[at : at + HEADER_LENGTH + header.length]
        model = decode_model(header, model_words)
        for point in model.points:
            value = point.value
            if isinstance(value, float) and not math.isfinite(value):
                raise Finding(f"model {model.id} point {point.path} = {value}")
        models += 1
        at += HEADER_LENGTH + header.length
    return "sunspec:too_many_models"


def sunspec_images() -> list[tuple[int, list[int], list[tuple[int, int]]]]:
    """The register image of each simulated SunSpec device, from its marker, with where
    each model of its chain starts and ends."""
    from gridpilot.sim.sunspec_devices import SUNSPEC_PLANS, SunSpecImage  # noqa: PLC0415

    images = []
    for plan in SUNSPEC_PLANS:
        image = SunSpecImage(plan)
        low, high = image.blocks[Table.HOLDING]
        words = image.read(Table.HOLDING, low, high - low)
        models: list[tuple[int, int]] = []
        at = 2
        while (header := parse_header(low + at, words[at : at + HEADER_LENGTH])) is not None:
            models.append((at, at + HEADER_LENGTH + header.length))
            at += HEADER_LENGTH + header.length
        images.append((low, words, models))
    return images


# ---------------------------------------------------------------------- telemetry target

SITE = "plant"
NOW_MS = 1_795_694_400_000  # 2026-11-26T12:00:00Z
RULES = ValidationRules(
    site=SITE,
    devices={
        "meter1": {
            "active_power_w": (-100_000.0, 100_000.0),
            "voltage_l1_v": (0.0, 400.0),
            "energy_import_wh": (0.0, math.inf),
            "frequency_hz": (45.0, 65.0),
        }
    },
    max_payload_bytes=65_536,
    max_future_skew_ms=300_000,
    open_devices=frozenset({"controller"}),
)
POINTS = ("active_power_w", "voltage_l1_v", "energy_import_wh", "frequency_hz", "soc_pct")
TOKENS = (
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"-0", b"0.0e-999", b"null",
    b"true", b"false", b"[", b"]", b"{", b"}", b'"', b",", b":", b"\\u0000", b"\\ud800",
    b"\xff", b"\xc3\x28", b"\x00", b"9" * 30, b"9" * 400, b"1" * 5000, b'"ts"', b'"values"',
    b'"seq"', b"-1", b"1.7976931348623157e308", b"5e-324", b'"2026-11-26T12:00:00Z"',
    b'"9999-12-31T23:59:59+23:59"', b'"0001-01-01T00:00:00-23:59"',
)  # fmt: skip


def weird_leaf(rng: random.Random) -> Any:
    return rng.choice((
        math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324, 10**rng.randint(1, 40),
        -(10**19), 2**63, 2**64, True, False, None, "", "230.5", "x" * rng.randint(0, 300),
        "\ud800", [], {}, [1.0], {"v": 1.0}, rng.uniform(-1e6, 1e6), rng.randint(-10**6, 10**6),
    ))  # fmt: skip


def nested(rng: random.Random, depth: int) -> Any:
    value: Any = weird_leaf(rng)
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"a": value}
    return value


def ts_value(rng: random.Random) -> Any:
    if rng.random() < 0.5:
        return rng.choice((NOW_MS, NOW_MS - rng.randrange(10**9), "2026-11-26T11:59:59.5Z"))
    return rng.choice((
        NOW_MS, NOW_MS - 1000, "2026-11-26T12:00:00.000Z", "2026-11-26T12:00:00+01:00",
        NOW_MS + 10**9, 1_795_694_400, -1, 0, 2**63, 10**30, 1.5e12, "2026-11-26 12:00:00",
        "2026-13-45T99:00:00Z", "", None, True, [NOW_MS], {"ms": NOW_MS}, math.nan,
        "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59",
    ))  # fmt: skip


def telemetry_document(rng: random.Random) -> Any:
    values: dict[str, Any] = {}
    for _ in range(rng.randint(0, 12)):
        name = rng.choice((*POINTS, "Bad Name", "x" * 200, "", "power", "a_w" * 30))
        if rng.random() < 0.6:
            values[name] = rng.uniform(-1e5, 1e5) if rng.random() < 0.5 else rng.randint(0, 400)
        elif rng.random() < 0.9:
            values[name] = weird_leaf(rng)
        else:
            values[name] = nested(rng, rng.choice((1, 10, 100, 500, 990, 1000, 1023, 1100)))
    doc: dict[str, Any] = {"ts": ts_value(rng), "values": values}
    if rng.random() < 0.5:
        doc["seq"] = rng.choice((0, 1842, -1, 2**64, 1.5, "7", None, True))
    roll = rng.random()
    if roll < 0.05:
        return [doc]
    if roll < 0.1:
        doc["values"] = rng.choice(([1, 2], "v", None, 3, nested(rng, 50)))
    elif roll < 0.13:
        del doc["values"]
    elif roll < 0.16:
        del doc["ts"]
    return doc


def dumps(doc: Any) -> bytes:
    """JSON text of ``doc`` (NaN and Infinity as the literals Python writes), without
    recursion: documents nest deeper than ``json.dumps`` (and the interpreter) goes."""
    out: list[str] = []
    stack: list[Any] = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, _Raw):
            out.append(item.text)
        elif isinstance(item, dict):
            out.append("{")
            stack.append(_Raw("}"))
            for index, (key, value) in enumerate(reversed(item.items())):
                stack.append(value)
                stack.append(_Raw(json.dumps(str(key)) + ":"))
                if index < len(item) - 1:
                    stack.append(_Raw(","))
        elif isinstance(item, list):
            out.append("[")
            stack.append(_Raw("]"))
            for index, value in enumerate(reversed(item)):
                stack.append(value)
                if index < len(item) - 1:
                    stack.append(_Raw(","))
        else:
            out.append(json.dumps(item))
    return "".join(out).encode()


@dataclass(frozen=True, slots=True)
class _Raw:
    text: str


def telemetry_step() -> Step:
    valid = [
        dumps({"ts": NOW_MS, "seq": 1, "values": {"active_power_w": 41250.0}}),
        dumps({"ts": "2026-11-26T12:00:00.000Z", "values": dict.fromkeys(POINTS, 1.0)}),
        dumps({"ts": NOW_MS - 5, "seq": 9, "values": {"voltage_l1_v": 230, "frequency_hz": 50}}),
    ]

    def step(rng: random.Random, case: Case) -> str:
        roll = rng.random()
        device = "meter1"
        if roll < 0.25:
            payload = mutate_bytes(rng, rng.choice(valid), TOKENS)
        elif roll < 0.8:
            payload = dumps(telemetry_document(rng))
            if rng.random() < 0.15:
                payload = mutate_bytes(rng, payload, TOKENS)
        elif roll < 0.9:
            payload = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        else:
            payload = dumps(telemetry_document(rng))
            device = rng.choice(("controller", "nobody", "", "meter1" * 50))
        site = SITE if rng.random() < 0.97 else rng.choice(("", "other", "x" * 500))
        case.name, case.data = "telemetry", (site, device, payload[:2000])
        outcome = validate(site, device, payload, NOW_MS, RULES)
        # The bus codec's strict decoding of the same payload (subscribers other than
        # ingest): documented to raise PayloadError for anything that is not telemetry.
        with contextlib.suppress(PayloadError):
            decode_telemetry(payload)
        for sample in outcome.samples:
            low, high = RULES.devices.get(device, {}).get(sample.point, (-math.inf, math.inf))
            value = sample.value
            if type(value) is not float or not math.isfinite(value) or not low <= value <= high:
                raise Finding(f"sample {sample!r} is not a finite float in [{low}, {high}]")
        if not outcome.rejections:
            return "accepted"
        return "rejected:" + ",".join(sorted({r.reason.value for r in outcome.rejections}))

    return step


# ---------------------------------------------------------------------------- the driver

TARGETS: dict[str, tuple[Callable[[], Step], tuple[type[BaseException], ...]]] = {
    # name: (build the step, exceptions the entry points document for bad input)
    "modbus": (modbus_steps, (DecodeError, SunSpecError)),
    "telemetry": (telemetry_step, ()),
}


def run_target(name: str, inputs: int, seed: int, *, progress: bool = False) -> Report:
    build, allowed = TARGETS[name]
    step = build()
    rng = random.Random(f"{name}:{seed}")
    report = Report(name, seed)
    case = Case()
    clock = time.perf_counter
    started = clock()
    for index in range(inputs):
        before = clock()
        try:
            outcome = step(rng, case)
        except allowed as exc:
            outcome = f"raised:{type(exc).__name__}"
        except Exception as exc:  # any other exception is what we look for
            outcome = f"FINDING:{type(exc).__name__}"
            record(report, case, index, exc)
        took = clock() - before
        if took > report.slowest_s:
            report.slowest_s, report.slowest_case = took, f"#{index} {case.name}"
            if took > SLOW_S:
                record(report, case, index, Finding(f"input took {took:.1f} s"))
                outcome = "FINDING:slow"
        report.outcomes[outcome] += 1
        if progress and index and index % 100_000 == 0:
            print(f"  {name}: {index:,} inputs, {clock() - started:.0f} s", file=sys.stderr)
    report.inputs = inputs
    report.seconds = clock() - started
    return report


def record(report: Report, case: Case, index: int, exc: BaseException) -> None:
    report.finding_count += 1
    if len(report.findings) < MAX_FINDINGS:
        report.findings.append({
            "input_index": str(index),
            "case": case.name,
            "error": f"{type(exc).__name__}: {str(exc)[:300]}",
            "where": "".join(traceback.format_tb(exc.__traceback__, limit=-2))[-600:],
            "input": repr(case.data)[:2000],
        })  # fmt: skip


def environment() -> dict[str, str]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except OSError:
        commit = "unknown"
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    parser.add_argument("--inputs", type=int, default=1_000_000, help="per target")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    names = list(TARGETS) if args.target == "all" else [args.target]
    # Before the run: the commit fuzzed is the one checked out when it started.
    env = environment()
    reports = [run_target(n, args.inputs, args.seed, progress=not args.quiet) for n in names]
    for report in reports:
        print(
            f"{report.target}: {report.inputs:,} inputs in {report.seconds:.1f} s "
            f"({report.inputs / max(report.seconds, 1e-9):,.0f}/s), seed {report.seed}, "
            f"findings {report.finding_count}, slowest input "
            f"{report.slowest_s * 1000:.1f} ms ({report.slowest_case})"
        )
        for outcome, count in sorted(report.outcomes.items(), key=lambda kv: -kv[1]):
            print(f"  {count:>9,}  {outcome}")
        for finding in report.findings:
            print(f"  FINDING {json.dumps(finding)}")
    if args.json:
        document = {"environment": env, "reports": [r.as_dict() for r in reports]}
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=2)
    return 1 if any(r.finding_count for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
