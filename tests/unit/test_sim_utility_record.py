"""The test utility server's record stays bounded: the demo runs the server for as long as
the demo runs, and its 2030.5 client PUTs DERStatus and DERAvailability every few seconds.
Found by the soak (benchmarks/soak): the list of DER reports grew by ~8 MB a simulated day."""

from __future__ import annotations

from gridpilot.sim.utility_server import (
    MAX_RECORDED,
    DerReport,
    DERStatus,
    MirrorRecord,
    ResponseRecord,
    ServerRecord,
)

EXTRA = 25


def test_der_reports_keep_the_newest() -> None:
    record = ServerRecord()
    for i in range(MAX_RECORDED + EXTRA):
        record.add_der_report(
            DerReport(
                kind="DERStatus",
                path="/edev/1/der/1/dstat",
                lfdi="AB" * 20,
                received_at=float(i),
                document=DERStatus(readingTime=i),
            )
        )
    assert len(record.der_reports) == MAX_RECORDED
    # The oldest went; the rest are in arrival order.
    assert record.der_reports[0].received_at == EXTRA
    assert record.der_reports[-1].received_at == MAX_RECORDED + EXTRA - 1
    assert isinstance(record.der_reports, list)  # tests slice it and compare it with lists


def test_responses_and_mirror_posts_keep_the_newest() -> None:
    record = ServerRecord()
    for i in range(MAX_RECORDED + EXTRA):
        record.add_response(
            ResponseRecord(
                subject="E1",
                status=1,
                created=i,
                end_device_lfdi="AB" * 20,
                lfdi="AB" * 20,
                received_at=float(i),
                href=f"/rsp/{i}",
            )
        )
        record.add_mirror(
            MirrorRecord(
                mup="/mup/1",
                mup_mrid="M1",
                role_flags=0,
                device_lfdi="AB" * 20,
                lfdi="AB" * 20,
                received_at=float(i),
                readings=(),
            )
        )
    assert len(record.responses) == MAX_RECORDED
    assert len(record.mirrors) == MAX_RECORDED
    assert record.responses[0].href == f"/rsp/{EXTRA}"
    assert len(record.responses_for("e1")) == MAX_RECORDED
    assert record.mirrors[0].received_at == EXTRA


def test_adding_wakes_a_waiter() -> None:
    record = ServerRecord()
    record._changed.clear()
    record.add_response(
        ResponseRecord(
            subject="E1",
            status=1,
            created=0,
            end_device_lfdi="AB" * 20,
            lfdi="AB" * 20,
            received_at=0.0,
            href="/rsp/1",
        )
    )
    assert record._changed.is_set()
