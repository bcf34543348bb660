"""Putting a curve into a SunSpec DER curve model (705 volt-var, 706 volt-watt, ...), or a
control into 711 (frequency droop, the same sequence with ``Ctl``/``AdptCtlReq``): pure.

The SunSpec DER information model stores curves in numbered slots; curve 1 is the active one
and read-only, the others are writable. A client writes its curve into a writable slot,
requests its adoption (``AdptCrvReq`` = the slot) and enables the function (``Ena`` = 1).
:func:`curve_step` decides, from the device's telemetry alone, which of those steps is due
and which setpoint requests it takes:

``wait``    the slot's points are not in the telemetry yet (not polled, or a device with
            fewer slots or points than the curve needs): nothing is written, since the
            gateway would refuse an unknown point;
``write``   the slot does not hold the curve: write it (and ``AdptCrvReq`` = 0, "no
            request", so that the adoption that follows is a changed target -- the engine
            resends an unchanged one only after ``resend_after``);
``adopt``   the slot holds it, curve 1 does not: ``AdptCrvReq`` = the slot;
``enable``  curve 1 holds it: ``Ena`` = 1;
``active``  ... and the function is enabled.

A device that loses the curve (reboot, another client) falls back to ``write`` by itself.
Point names are GridPilot's SunSpec names (``m705_crv_2_pt_1_v_pct``), see
:func:`gridpilot.fieldbus.sunspec.point_name`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gridpilot.control.base import PointRef, Priority, SetpointRequest, Snapshot

ENABLED = 1.0
ADOPT_FAILED = 2.0  # AdptCrvRslt
TOLERANCE = 0.051
"""The curve registers hold 0.1 % steps (SF -1): a read-back within this is the value
that was written."""

STEPS = {
    "wait": "waiting for the curve registers in the telemetry",
    "write": "writing the curve",
    "adopt": "curve written, requesting its adoption",
    "enable": "curve adopted, enabling the function",
    "active": "the inverter follows the curve",
}
STEP_NUMBERS = {"wait": -1, "write": 0, "adopt": 1, "enable": 2, "active": 3}


@dataclass(frozen=True, slots=True)
class CurveTarget:
    """Which curve goes where: ``values`` are the curve's points by name without the
    ``m<model>_crv_<n>_`` prefix (``actpt_count``, ``pt_1_v_pct`` ...)."""

    device: str
    model: int
    slot: int
    values: Mapping[str, float]
    function: str
    """For the events: ``volt-var``, ``volt-watt``."""
    group: str = "crv"
    """The repeating group: ``crv`` (705/706 curves, ``AdptCrvReq``) or ``ctl`` (711
    frequency-droop controls, ``AdptCtlReq``)."""
    tolerance: float = TOLERANCE
    """A read-back within this is the value written (half the registers' resolution)."""


@dataclass(frozen=True, slots=True)
class CurveStep:
    step: str
    requests: tuple[SetpointRequest, ...]
    events: tuple[str, ...]


def curve_step(
    snapshot: Snapshot,
    target: CurveTarget,
    previous_step: str,
    *,
    max_age_s: float,
    priority: Priority,
    source: str,
) -> CurveStep:
    """The step due now and its requests; events on a change of step (see the module doc)."""
    device, model, slot, group = target.device, target.model, target.slot, target.group
    word = "control" if group == "ctl" else "curve"

    def ref(name: str) -> PointRef:
        return PointRef(device, f"m{model}_{name}")

    def holds(curve: int) -> bool:
        for name, value in target.values.items():
            got = snapshot.value(ref(f"{group}_{curve}_{name}"), max_age_s)
            if got is None or abs(got - value) > target.tolerance:
                return False
        return True

    events: list[str] = []
    absent = [n for n in target.values if snapshot.reading(ref(f"{group}_{slot}_{n}")) is None]
    if absent:
        if previous_step != "wait":
            more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
            events.append(
                f"{target.function} on {device}: waiting for its {model} {word} {slot} in the "
                f"telemetry (missing {ref(f'{group}_{slot}_{absent[0]}').point}{more}; a device "
                f"with fewer stored {word}s or points cannot take this {word})"
            )
        return CurveStep("wait", (), tuple(events))
    requests: list[SetpointRequest] = []

    def request(name: str, value: float, reason: str) -> None:
        requests.append(SetpointRequest(ref(name), value, priority, source, reason))

    adopt = f"adpt{group}req_count"
    if not holds(1):
        for name, value in target.values.items():
            request(f"{group}_{slot}_{name}", value, f"{target.function} {word} into {word} {slot}")
        if not holds(slot):
            request(adopt, 0.0, f"no adoption while the {word} is written")
            step = "write"
        else:
            request(adopt, float(slot), f"adopt the {target.function} {word}")
            step = "adopt"
            result = snapshot.value(ref(f"adpt{group}rslt_state"), max_age_s)
            if result == ADOPT_FAILED and previous_step == "adopt":
                events.append(
                    f"{target.function}: {device} refused to adopt {word} {slot} "
                    f"(Adpt{group.capitalize()}Rslt FAILED); "
                    + ("check its settings" if group == "ctl" else "check its NPt and the curve")
                )
    else:
        request("ena_state", ENABLED, f"{target.function} {word} adopted: enable")
        enabled = snapshot.value(ref("ena_state"), max_age_s) == ENABLED
        step = "active" if enabled else "enable"
    if step != previous_step:
        events.append(f"{target.function} on {device} (SunSpec {model}): {STEPS[step]}")
    return CurveStep(step, tuple(requests), tuple(events))
