"""Mirror builders: the XML they produce, decoded again through xmlsafe, carries the 2030.5
codes (roleFlags, uom, flowDirection, dataQualifier, powerOfTenMultiplier, intervalLength)
and the site's values; window_values reads the window's mean / last value from a real
SQLite storage."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy_schema.server.schema.sep2.metering_mirror import (
    MirrorMeterReadingListRequest,
    MirrorUsagePointRequest,
)

from gridpilot.config.ieee2030_5 import CsipClientConfig
from gridpilot.config.models import RetentionConfig
from gridpilot.ieee2030_5.mirror import (
    DER_CHANNELS,
    SITE_CHANNELS,
    Aggregate,
    MirrorRole,
    MirrorSpec,
    ReadingChannel,
    channels_for,
    encode_value,
    mirror_meter_readings,
    mirror_mrid,
    mirror_usage_point,
    specs_from_config,
    window_values,
)
from gridpilot.ieee2030_5.xmlsafe import parse_resource, serialize
from gridpilot.model import Sample
from gridpilot.storage import SqliteStorage

LFDI = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
SITE = MirrorSpec("site", MirrorRole.SITE, "grid_meter", SITE_CHANNELS)
PV = MirrorSpec("pv_inverter", MirrorRole.DER, "pv_inverter", DER_CHANNELS)


def _roundtrip_mup(spec: MirrorSpec, interval_s: int = 60) -> MirrorUsagePointRequest:
    xml = serialize(mirror_usage_point(spec, device_lfdi=LFDI.lower(), interval_s=interval_s))
    return parse_resource(xml, MirrorUsagePointRequest, where="test")


@pytest.mark.parametrize(
    ("spec", "role_flags"),
    [pytest.param(SITE, "03", id="site"), pytest.param(PV, "49", id="der")],
)
def test_mirror_usage_point_role_flags_and_identity(spec: MirrorSpec, role_flags: str) -> None:
    mup = _roundtrip_mup(spec)
    assert mup.roleFlags == role_flags
    assert int(mup.serviceCategoryKind) == 0  # electricity
    assert mup.status == 1
    assert mup.deviceLFDI == LFDI  # upper-case hex, as the certificate's LFDI
    assert mup.mRID == mirror_mrid(LFDI, spec)
    assert len(mup.mRID) == 32
    assert mup.mirrorMeterReadings is not None
    assert len(mup.mirrorMeterReadings) == len(spec.channels)
    # Every channel has its own stable mRID and a ReadingType, but no readings yet.
    assert len({m.mRID for m in mup.mirrorMeterReadings}) == len(spec.channels)
    assert all(m.readingType is not None and m.reading is None for m in mup.mirrorMeterReadings)


def test_mirror_mrids_are_stable_and_distinct_per_device() -> None:
    assert mirror_mrid(LFDI, SITE) == mirror_mrid(LFDI.lower(), SITE)
    assert mirror_mrid(LFDI, SITE) != mirror_mrid("0" * 40, SITE)
    assert mirror_mrid(LFDI, SITE) != mirror_mrid(LFDI, PV)


# (point, uom, flowDirection, dataQualifier, powerOfTenMultiplier, accumulationBehaviour)
SITE_CODES = [
    ("active_power_w", 38, 1, 2, 0, 12),
    ("reactive_power_var", 63, 1, 2, 0, 12),
    ("voltage_l1_v", 29, None, 2, -1, 12),
    ("frequency_hz", 33, None, 2, -2, 12),
    ("energy_import_wh", 72, 1, None, 0, 9),
    ("energy_export_wh", 72, 19, None, 0, 9),
]
DER_CODES = [
    ("ac_power_w", 38, 19, 2, 0, 12),
    ("ac_voltage_v", 29, None, 2, -1, 12),
    ("ac_frequency_hz", 33, None, 2, -2, 12),
    ("energy_total_wh", 72, 19, None, 0, 9),
]


@pytest.mark.parametrize(
    ("spec", "codes"),
    [pytest.param(SITE, SITE_CODES, id="site"), pytest.param(PV, DER_CODES, id="der")],
)
def test_reading_types_carry_the_2030_5_codes(
    spec: MirrorSpec, codes: list[tuple[str, int, int | None, int | None, int, int]]
) -> None:
    mup = _roundtrip_mup(spec, interval_s=300)
    assert mup.mirrorMeterReadings is not None
    decoded = []
    for channel, mmr in zip(spec.channels, mup.mirrorMeterReadings, strict=True):
        rt = mmr.readingType
        assert rt is not None
        assert rt.intervalLength == 300  # the server's postRate
        decoded.append(
            (
                channel.point,
                int(rt.uom) if rt.uom is not None else None,
                None if rt.flowDirection is None else int(rt.flowDirection),
                None if rt.dataQualifier is None else int(rt.dataQualifier),
                rt.powerOfTenMultiplier,
                None if rt.accumulationBehaviour is None else int(rt.accumulationBehaviour),
            )
        )
    assert decoded == codes


def test_meter_readings_carry_scaled_values_and_the_window() -> None:
    values = {
        "active_power_w": -4250.4,  # exporting 4.25 kW
        "reactive_power_var": 1200.6,
        "voltage_l1_v": 231.44,
        "frequency_hz": 49.987,
        "energy_import_wh": 918273645.0,
        "energy_export_wh": None,  # no sample in the window: left out, not sent as 0
    }
    built = mirror_meter_readings(
        SITE, values, device_lfdi=LFDI, window_start=1_795_000_000, interval_s=60
    )
    decoded = parse_resource(serialize(built), MirrorMeterReadingListRequest, where="test")
    assert decoded.mirrorMeterReadings is not None
    by_point = {}
    for channel in SITE.channels:
        for mmr in decoded.mirrorMeterReadings:
            if mmr.mRID == mirror_mrid(LFDI, SITE, channel):
                by_point[channel.point] = mmr
    assert set(by_point) == set(values) - {"energy_export_wh"}
    raw = {}
    for point, mmr in by_point.items():
        assert mmr.reading is not None
        assert mmr.reading.timePeriod is not None
        assert (mmr.reading.timePeriod.start, mmr.reading.timePeriod.duration) == (
            1_795_000_000,
            60,
        )
        assert mmr.readingType is not None  # repeated with every post
        raw[point] = mmr.reading.value
    assert raw == {
        "active_power_w": -4250,
        "reactive_power_var": 1201,
        "voltage_l1_v": 2314,  # tenths of a volt (powerOfTenMultiplier -1)
        "frequency_hz": 4999,  # hundredths of a hertz (-2)
        "energy_import_wh": 918273645,
    }


def test_encode_value_sign_range_and_non_finite() -> None:
    export_positive = ReadingChannel("export_w", SITE_CHANNELS[0].uom, "x", sign=-1)
    assert encode_value(1500.0, export_positive) == -1500
    with pytest.raises(ValueError, match="does not fit a Reading"):
        encode_value(2.0**48, SITE_CHANNELS[0])
    with pytest.raises(ValueError, match="cannot send nan"):
        encode_value(float("nan"), SITE_CHANNELS[0])
    with pytest.raises(ValueError, match="sign must be 1 or -1"):
        ReadingChannel("x_w", SITE_CHANNELS[0].uom, "x", sign=2)
    assert (
        mirror_meter_readings(
            SITE, {"active_power_w": float("inf")}, device_lfdi=LFDI, window_start=0, interval_s=1
        ).mirrorMeterReadings
        == []
    )


FOREVER = RetentionConfig(raw=None, rollup_1m=None, rollup_15m=None, rollup_1h=None)


async def test_window_values_reads_the_mean_and_last_of_the_window(tmp_path: Path) -> None:
    end_ms = 1_795_000_060_000
    samples = [
        # one sample before the window: not counted
        Sample("s1", "grid_meter", "active_power_w", end_ms - 61_000, 99999.0),
        *(
            Sample("s1", "grid_meter", "active_power_w", end_ms - 60_000 + i * 10_000, v)
            for i, v in enumerate([1000.0, 2000.0, 3000.0, -1000.0, 0.0, 1000.0])
        ),
        # at end_ms: belongs to the next window
        Sample("s1", "grid_meter", "active_power_w", end_ms, 50000.0),
        Sample("s1", "grid_meter", "energy_import_wh", end_ms - 50_000, 100.0),
        Sample("s1", "grid_meter", "energy_import_wh", end_ms - 5_000, 130.0),
        Sample("s1", "grid_meter", "voltage_l1_v", end_ms - 30_000, 230.0),
        Sample("s1", "grid_meter", "voltage_l1_v", end_ms - 20_000, 232.0),
        Sample("s1", "other", "frequency_hz", end_ms - 20_000, 50.0),  # another device
    ]
    async with SqliteStorage(tmp_path / "db.sqlite", FOREVER) as storage:
        await storage.write(samples)
        values = await window_values(storage, "s1", SITE, end_ms=end_ms, window_s=60)
    assert values == {
        "active_power_w": pytest.approx(1000.0),
        "reactive_power_var": None,
        "voltage_l1_v": pytest.approx(231.0),
        "frequency_hz": None,
        "energy_import_wh": 130.0,
        "energy_export_wh": None,
    }
    assert SITE.channels[4].aggregate is Aggregate.LAST


def test_specs_from_the_site_file_section() -> None:
    section = CsipClientConfig.model_validate(
        {
            "server": "https://127.0.0.1:8443",
            "cert_file": "c.pem",
            "key_file": "c.key",
            "ca_file": "ca.pem",
            "site_meter": {
                "device": "meter",
                "points": {"w": "p_w", "var": "q_var", "a": "i_a", "pf": "pf", "wh": "e_wh"},
            },
            "der_mirrors": [{"device": "battery"}],  # power only, by default
        }
    )
    site, battery = specs_from_config(section)
    assert (site.name, site.role, site.device) == ("site:meter", MirrorRole.SITE, "meter")
    assert [
        (c.point, int(c.uom), c.flow_direction, c.power_of_ten, c.aggregate) for c in site.channels
    ] == [
        ("p_w", 38, 1, 0, Aggregate.MEAN),
        ("q_var", 63, 1, 0, Aggregate.MEAN),
        ("i_a", 5, None, -1, Aggregate.MEAN),
        ("pf", 65, None, -3, Aggregate.MEAN),
        ("e_wh", 72, 1, 0, Aggregate.LAST),
    ]
    assert (battery.role, battery.device) == (MirrorRole.DER, "battery")
    assert [(c.point, int(c.uom), c.flow_direction) for c in battery.channels] == [
        ("active_power_w", 38, 19)
    ]
    assert _roundtrip_mup(battery).roleFlags == "49"
    with pytest.raises(ValueError, match="mirror quantity 'kw'"):
        channels_for(MirrorRole.SITE, {"kw": "p_kw"})  # type: ignore[dict-item]
