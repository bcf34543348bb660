"""Hostile and malformed 2030.5 documents are refused with a message naming the resource."""

from __future__ import annotations

import pytest

from gridpilot.ieee2030_5.models import (
    CurveData,
    DERControlBase,
    DERCurve,
    DERCurveList,
    DERCurveType,
    DERProgram,
    DERUnitRefType,
    Time,
)
from gridpilot.ieee2030_5.xmlsafe import MAX_DOCUMENT_BYTES, XmlRejected, parse_resource, serialize

NS = "urn:ieee:std:2030.5:ns"
WHERE = "GET https://127.0.0.1:8443/derp/1"

GOOD_PROGRAM = (
    f'<DERProgram xmlns="{NS}" href="/derp/1"><mRID>A1000000000000000000000000000001</mRID>'
    "<description>export limits</description>"
    '<DERControlListLink href="/derp/1/derc" all="3"/><primacy>1</primacy></DERProgram>'
).encode()


def test_good_document_parses() -> None:
    program = parse_resource(GOOD_PROGRAM, DERProgram, where=WHERE)
    assert program.primacy == 1
    assert program.DERControlListLink is not None
    assert program.DERControlListLink.href == "/derp/1/derc"


def _rejected(body: bytes, model: type = DERProgram) -> XmlRejected:
    with pytest.raises(XmlRejected) as info:
        parse_resource(body, model, where=WHERE)
    msg = str(info.value)
    # Every rejection names the resource and what to do.
    assert WHERE in msg
    assert "previous copy" in msg
    return info.value


def test_billion_laughs_is_refused_before_parsing() -> None:
    lol = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(
            f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
            for i in range(1, 10)
        )
        + f']><DERProgram xmlns="{NS}"><mRID>&lol9;</mRID><primacy>1</primacy></DERProgram>'
    ).encode()
    err = _rejected(lol)
    assert "DOCTYPE" in err.reason


def test_external_entity_is_refused() -> None:
    xxe = (
        '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        f'<DERProgram xmlns="{NS}"><mRID>A1</mRID><description>&x;</description>'
        "<primacy>1</primacy></DERProgram>"
    ).encode()
    err = _rejected(xxe)
    assert "entity" in err.reason


def test_entity_declaration_without_doctype_word_case_is_refused() -> None:
    # Lower-case spelling is not XML, but the scan is case-insensitive anyway.
    assert "ENTITY" in _rejected(b'<!entity x "y"><a/>').reason


def test_huge_payload_is_refused_by_size() -> None:
    padding = b"<description>" + b"x" * MAX_DOCUMENT_BYTES + b"</description>"
    body = GOOD_PROGRAM.replace(b"<description>export limits</description>", padding)
    err = _rejected(body)
    assert "limit" in err.reason
    assert str(MAX_DOCUMENT_BYTES) in err.reason


def test_wrong_namespace_is_refused() -> None:
    body = GOOD_PROGRAM.replace(NS.encode(), b"urn:example:not-2030.5")
    err = _rejected(body)
    assert "urn:example:not-2030.5" in err.reason
    assert NS in err.reason


def test_missing_namespace_is_refused() -> None:
    body = GOOD_PROGRAM.replace(f' xmlns="{NS}"'.encode(), b"")
    assert "no namespace" in _rejected(body).reason


def test_other_resource_type_is_refused() -> None:
    body = GOOD_PROGRAM.replace(b"DERProgram", b"DERControl")
    assert "expected <DERProgram>" in _rejected(body).reason


def test_missing_required_field_is_refused() -> None:
    body = GOOD_PROGRAM.replace(b"<primacy>1</primacy>", b"")
    err = _rejected(body)
    assert "primacy" in err.reason
    assert "missing" in err.reason


def test_wrong_type_is_refused() -> None:
    body = GOOD_PROGRAM.replace(b"<primacy>1</primacy>", b"<primacy>first</primacy>")
    err = _rejected(body)
    assert "primacy" in err.reason
    assert "first" in err.reason


def test_not_well_formed_and_not_utf8_and_empty() -> None:
    assert "well-formed" in _rejected(GOOD_PROGRAM[:-5]).reason
    assert "UTF-8" in _rejected(GOOD_PROGRAM.replace(b"export", b"\xff\xfe")).reason
    assert "empty" in _rejected(b"  ").reason


def test_child_in_wrong_namespace_counts_as_missing() -> None:
    body = GOOD_PROGRAM.replace(
        b"<primacy>1</primacy>", b'<primacy xmlns="urn:example:other">1</primacy>'
    )
    assert "primacy" in _rejected(body).reason


def test_curve_list_round_trip_and_point_count() -> None:
    curve = DERCurve(
        href="/derp/1/dc/1",
        mRID="C0000000000000000000000000000001",
        creationTime=1_800_000_000,
        CurveData_=[
            CurveData(xvalue=92, yvalue=44),
            CurveData(xvalue=98, yvalue=0),
            CurveData(xvalue=102, yvalue=0),
            CurveData(xvalue=108, yvalue=-44),
        ],
        curveType=DERCurveType.OP_MOD_VOLT_VAR,
        openLoopTms=500,
        xMultiplier=0,
        yMultiplier=0,
        yRefType=DERUnitRefType.PERC_SET_MAX_VAR,
    )
    listing = DERCurveList(href="/derp/1/dc", all_=1, results=1, DERCurve_=[curve])
    body = serialize(listing)
    back = parse_resource(body, DERCurveList, where="GET /derp/1/dc")
    assert back == listing
    no_points = body.replace(b"<CurveData><xvalue>92</xvalue><yvalue>44</yvalue></CurveData>", b"")
    three = parse_resource(no_points, DERCurveList, where="x").DERCurve_
    assert three is not None
    assert len(three[0].CurveData_) == 3
    # A curve with no points at all is refused (2030.5: 1..10 CurveData).
    stripped = body
    for x, y in ((92, 44), (98, 0), (102, 0), (108, -44)):
        stripped = stripped.replace(
            f"<CurveData><xvalue>{x}</xvalue><yvalue>{y}</yvalue></CurveData>".encode(), b""
        )
    with pytest.raises(XmlRejected, match="CurveData"):
        parse_resource(stripped, DERCurveList, where="GET /derp/1/dc")


def test_csip_aus_extension_elements_parse() -> None:
    body = (
        f'<DERControlBase xmlns="{NS}" xmlns:csipaus="https://csipaus.org/ns/v1.3">'
        "<opModConnect>true</opModConnect>"
        "<csipaus:opModExpLimW><multiplier>3</multiplier><value>5</value></csipaus:opModExpLimW>"
        "</DERControlBase>"
    ).encode()
    base = parse_resource(body, DERControlBase, where="x")
    assert base.opModConnect is True
    assert base.opModExpLimW is not None
    assert (base.opModExpLimW.value, base.opModExpLimW.multiplier) == (5, 3)


def test_time_resource_parses() -> None:
    body = (
        f'<Time xmlns="{NS}" href="/tm"><currentTime>1800000000</currentTime>'
        "<dstEndTime>0</dstEndTime><dstOffset>0</dstOffset><dstStartTime>0</dstStartTime>"
        "<quality>7</quality><tzOffset>0</tzOffset></Time>"
    ).encode()
    assert parse_resource(body, Time, where="GET /tm").currentTime == 1_800_000_000
