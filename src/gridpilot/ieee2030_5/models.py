# Field names are the 2030.5 element names (mixedCase), as in envoy-schema.
# ruff: noqa: N815
"""The typed IEEE 2030.5 resources GridPilot reads and writes.

Everything on the wire goes through these pydantic-xml models (PyPI ``envoy-schema``); no
XML is built by hand. envoy-schema names its classes from a server's point of view
(``DERControlResponse`` is the DERControl *resource* a server sends); the aliases below use
the 2030.5 resource names instead, so client code reads like the standard.

envoy-schema has no DERCurve model (Envoy does not serve curves); ``DERCurve`` and
``DERCurveList`` below follow IEEE 2030.5-2018's schema in envoy-schema's style.
"""

from __future__ import annotations

from enum import IntEnum

from envoy_schema.server.schema.sep2.base import BaseXmlModelWithNS, nsmap
from envoy_schema.server.schema.sep2.der import (
    DER,
    DefaultDERControl,
    DERAvailability,
    DERCapability,
    DERControlBase,
    DERControlType,
    DERSettings,
    DERStatus,
    DERType,
    FreqDroopType,
)
from envoy_schema.server.schema.sep2.der import DERControlListResponse as DERControlList
from envoy_schema.server.schema.sep2.der import DERControlResponse as DERControl
from envoy_schema.server.schema.sep2.der import DERListResponse as DERList
from envoy_schema.server.schema.sep2.der import DERProgramListResponse as DERProgramList
from envoy_schema.server.schema.sep2.der import DERProgramResponse as DERProgram
from envoy_schema.server.schema.sep2.der_control_types import (
    ActivePower,
    FixedVar,
    PowerFactorWithExcitation,
    ReactivePower,
)
from envoy_schema.server.schema.sep2.device_capability import (
    DeviceCapabilityResponse as DeviceCapability,
)
from envoy_schema.server.schema.sep2.end_device import EndDeviceListResponse as EndDeviceList
from envoy_schema.server.schema.sep2.end_device import EndDeviceRequest
from envoy_schema.server.schema.sep2.end_device import EndDeviceResponse as EndDevice
from envoy_schema.server.schema.sep2.end_device import RegistrationResponse as Registration
from envoy_schema.server.schema.sep2.event import EventStatus, EventStatusType
from envoy_schema.server.schema.sep2.function_set_assignments import (
    FunctionSetAssignmentsListResponse as FunctionSetAssignmentsList,
)
from envoy_schema.server.schema.sep2.function_set_assignments import (
    FunctionSetAssignmentsResponse as FunctionSetAssignments,
)
from envoy_schema.server.schema.sep2.identification import (
    IdentifiedObject,
    Link,
    ListLink,
    SubscribableList,
)
from envoy_schema.server.schema.sep2.response import DERControlResponse, Response, ResponseType
from envoy_schema.server.schema.sep2.time import TimeResponse as Time
from envoy_schema.server.schema.sep2.types import DateTimeIntervalType, DERUnitRefType
from pydantic_xml import attr, element

__all__ = [
    "DER",
    "NAMESPACE",
    "ActivePower",
    "CurveData",
    "DERAvailability",
    "DERCapability",
    "DERControl",
    "DERControlBase",
    "DERControlList",
    "DERControlResponse",
    "DERControlType",
    "DERCurve",
    "DERCurveList",
    "DERCurveType",
    "DERList",
    "DERProgram",
    "DERProgramList",
    "DERSettings",
    "DERStatus",
    "DERType",
    "DERUnitRefType",
    "DateTimeIntervalType",
    "DefaultDERControl",
    "DeviceCapability",
    "EndDevice",
    "EndDeviceList",
    "EndDeviceRequest",
    "EventStatus",
    "EventStatusType",
    "FixedVar",
    "FreqDroopType",
    "FunctionSetAssignments",
    "FunctionSetAssignmentsList",
    "Link",
    "ListLink",
    "PowerFactorWithExcitation",
    "ReactivePower",
    "Registration",
    "Response",
    "ResponseType",
    "Time",
]

NAMESPACE = nsmap[""]
"""The IEEE 2030.5 XML namespace, ``urn:ieee:std:2030.5:ns``."""


class DERCurveType(IntEnum):
    """DERCurve.curveType: which DERControlBase mode a curve parameterises (2030.5 Table E)."""

    OP_MOD_FREQ_WATT = 0
    OP_MOD_HFRT_MAY_TRIP = 1
    OP_MOD_HFRT_MUST_TRIP = 2
    OP_MOD_HVRT_MAY_TRIP = 3
    OP_MOD_HVRT_MOMENTARY_CESSATION = 4
    OP_MOD_HVRT_MUST_TRIP = 5
    OP_MOD_LFRT_MAY_TRIP = 6
    OP_MOD_LFRT_MUST_TRIP = 7
    OP_MOD_LVRT_MAY_TRIP = 8
    OP_MOD_LVRT_MOMENTARY_CESSATION = 9
    OP_MOD_LVRT_MUST_TRIP = 10
    OP_MOD_VOLT_VAR = 11
    OP_MOD_VOLT_WATT = 12
    OP_MOD_WATT_PF = 13
    OP_MOD_WATT_VAR = 14


class CurveData(BaseXmlModelWithNS, tag="CurveData"):
    """One point of a DERCurve; the curve's x/yMultiplier scale ``xvalue``/``yvalue``."""

    excitation: bool | None = element(default=None)  # only for watt-PF curves
    xvalue: int = element()
    yvalue: int = element()


class DERCurve(IdentifiedObject, tag="DERCurve"):
    """A curve for a curve-based mode (volt-var, volt-watt, freq-watt, ride-through...).

    Points are ``xvalue × 10^xMultiplier`` against ``yvalue × 10^yMultiplier``; for volt-var
    and volt-watt x is percent of setVRef, y a percent of the quantity ``yRefType`` names.
    2030.5 allows 1 to 10 points.
    """

    autonomousVRefEnable: bool | None = element(default=None)
    autonomousVRefTimeConstant: int | None = element(default=None)  # seconds
    creationTime: int = element()
    CurveData_: list[CurveData] = element(tag="CurveData", min_length=1, max_length=10)
    curveType: DERCurveType = element()
    openLoopTms: int | None = element(default=None)  # hundredths of a second
    rampDecTms: int | None = element(default=None)
    rampIncTms: int | None = element(default=None)
    rampPT1Tms: int | None = element(default=None)
    vRef: int | None = element(default=None)  # percent of setVRef, hundredths
    xMultiplier: int = element()
    yMultiplier: int = element()
    yRefType: DERUnitRefType = element()


class DERCurveList(SubscribableList, tag="DERCurveList"):
    """The curves a DERProgram offers; DERControls link to them by href."""

    pollRate: int | None = attr(default=None)
    DERCurve_: list[DERCurve] | None = element(tag="DERCurve", default=None)
