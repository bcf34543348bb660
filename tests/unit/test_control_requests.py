"""Operator requests to the controller (parsing) and the control journal (a real file)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from gridpilot.control.base import PointRef
from gridpilot.control.journal import Journal
from gridpilot.control.requests import (
    Action,
    Reply,
    Request,
    RequestError,
    decode_reply,
    encode_reply,
    encode_request,
    parse_request,
)


def payload(**fields: object) -> bytes:
    return json.dumps({"id": "r1", "by": "alice", **fields}).encode()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            payload(action="override", point="battery.active_power_setpoint_w", value=-20000,
                    duration_s=1800, reason="test"),
            Request("r1", Action.OVERRIDE, "alice", "test", PointRef("battery",
                    "active_power_setpoint_w"), -20000.0, 1800.0),
        ),
        (payload(action="release", point="battery.soc_pct"),
         Request("r1", Action.RELEASE, "alice", point=PointRef("battery", "soc_pct"))),
        (payload(action="dry_run", enabled=True),
         Request("r1", Action.DRY_RUN, "alice", enabled=True)),
        (payload(action="disable", controller="peak_shaving"),
         Request("r1", Action.DISABLE, "alice", controller="peak_shaving")),
        (payload(action="status"), Request("r1", Action.STATUS, "alice")),
    ],
)  # fmt: skip
def test_valid_requests(raw: bytes, expected: Request) -> None:
    request = parse_request(raw)
    assert request == expected
    assert parse_request(encode_request(request)) == request


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"action": "status", "by": "a"}).encode(), "'id'"),
        (payload(action="reboot"), "'action' must be one of"),
        (json.dumps({"id": "r1", "action": "status"}).encode(), "'by'"),
        (payload(action="override", point="battery", value=1, duration_s=1), "DEVICE.POINT"),
        (payload(action="override", point="a.b_w", value="1", duration_s=1), "'value'"),
        (payload(action="override", point="a.b_w", value=True, duration_s=1), "'value'"),
        (payload(action="override", point="a.b_w", value=1, duration_s=0), "'duration_s'"),
        (payload(action="override", point="a.b_w", value=1, duration_s=30 * 86400), "'duration_s'"),
        (payload(action="dry_run", enabled="yes"), "'enabled'"),
        (payload(action="enable"), "'controller'"),
        (b"{" + b" " * 5000 + b"}", "over 4096"),
    ],
)  # fmt: skip
def test_invalid_requests_say_what_to_fix(raw: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message) as caught:
        parse_request(raw)
    if message not in ("not JSON", "JSON object", "'id'", "over 4096"):
        assert caught.value.request_id == "r1"  # the reply can name the request


def test_replies_round_trip() -> None:
    reply = Reply("r1", False, "no controller named 'x'")
    assert decode_reply(encode_reply(reply)) == reply
    with pytest.raises(TypeError):
        decode_reply(b'{"id": "r1"}')


def test_journal_appends_reads_back_and_rotates(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "sub" / "journal.jsonl", max_bytes=10_000)
    for k in range(300):
        journal.append([{"k": k, "message": "x" * 40}])
    path = tmp_path / "sub" / "journal.jsonl"
    rotated = tmp_path / "sub" / "journal.jsonl.1"
    assert rotated.exists()
    assert path.stat().st_size <= 10_000
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    entries = journal.read(limit=5)
    assert [e["k"] for e in entries] == [295, 296, 297, 298, 299]
    # a line cut by a crash mid-write is skipped, not fatal
    with path.open("ab") as f:
        f.write(b'{"k": 300, "mess')
    assert journal.read(limit=2)[-1]["k"] == 299
    assert Journal(tmp_path / "none.jsonl").read() == []
