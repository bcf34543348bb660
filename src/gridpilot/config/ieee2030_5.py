"""The site file's ``ieee2030_5:`` section: this site as an IEEE 2030.5 (CSIP) client.

Kept in its own module (``config.models`` imports it) so the section reads as one unit.
Paths are relative to the site file. Example::

    ieee2030_5:
      server: https://127.0.0.1:8443
      cert_file: pki/client.pem
      key_file: pki/client.key        # mode 0600 or stricter
      ca_file: pki/ca.pem
      pin: 123455                     # the registration PIN the utility gave (or pin_file)
      site_meter: {device: meter, points: {w: active_power_w, v: voltage_v}}
      der_mirrors: [{device: inverter, points: {w: active_power_w}}]
      der: {type: 83, max_w: 10000, max_va: 10000, max_var: 4400}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from gridpilot.model import is_valid_identifier

__all__ = [
    "MIRROR_QUANTITIES",
    "CsipClientConfig",
    "DerNameplateConfig",
    "MirrorSourceConfig",
    "Quantity",
]

Quantity = Literal["w", "var", "va", "v", "a", "hz", "pf", "wh"]
MIRROR_QUANTITIES: tuple[Quantity, ...] = ("w", "var", "va", "v", "a", "hz", "pf", "wh")
"""What a mirror can carry (2030.5 uom 38 W, 63 var, 61 VA, 29 V, 5 A, 33 Hz, 65 PF, 72 Wh)."""


def _identifier(value: str) -> str:
    if not is_valid_identifier(value):
        raise ValueError(f"{value!r} is not a valid device id")
    return value


def _power_only() -> dict[Quantity, str]:
    return {"w": "active_power_w"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class MirrorSourceConfig(_Frozen):
    """A device whose stored telemetry is mirrored to the utility (MirrorUsagePoint)."""

    device: Annotated[str, AfterValidator(_identifier)]
    points: dict[Quantity, str] = Field(default_factory=_power_only)
    """Quantity -> the device's point holding it (``w``: active power, positive = import at
    the site meter, = generation for a DER; ``wh``: an energy register)."""


class DerNameplateConfig(_Frozen):
    """What the client reports in DERCapability / DERSettings for the site's DER."""

    type: int = Field(default=83, ge=0, le=255)
    """2030.5 DERType: 4 PV, 80 storage, 83 PV and storage combined (default)."""
    max_w: float = Field(gt=0)
    """Rated (and set) maximum active power, W."""
    max_va: float | None = Field(default=None, gt=0)
    max_var: float | None = Field(default=None, gt=0)
    """Rated reactive power, var (IEEE 1547 Category B: 44 % of max_va)."""


class CsipClientConfig(_Frozen):
    """This site as an IEEE 2030.5 client of its utility's server."""

    server: str
    """Base URL of the utility server, ``https://host:port`` (TLS 1.2 CCM8 only)."""
    dcap_path: str = "/dcap"
    """Path of the DeviceCapability resource the walk starts from."""
    cert_file: Path
    """This device's PEM certificate (P-256); its hash is the LFDI."""
    key_file: Path
    """The certificate's private key; must be mode 0600 or stricter."""
    ca_file: Path
    """PEM of the CA that signed the server's certificate."""
    pin: int | None = Field(default=None, ge=0, le=999_999)
    """Registration PIN (six digits, the last a check digit) the Registration must match."""
    pin_env: str | None = None
    pin_file: Path | None = None
    """Or the PIN from an environment variable / a 0600 file."""
    site_meter: MirrorSourceConfig | None = None
    """The site's grid meter, mirrored with roleFlags 0x03 (premises aggregation point)."""
    der_mirrors: tuple[MirrorSourceConfig, ...] = ()
    """DER devices, each mirrored with roleFlags 0x49 (DER, submeter)."""
    der: DerNameplateConfig | None = None
    """Nameplate for DERCapability/DERSettings; absent: those PUTs are skipped."""
    supported_modes: tuple[str, ...] | None = None
    """Control modes this site follows (e.g. opModExpLimW); an event asking another is
    refused (Response 252). Absent: every mode the grid-operator controller receives."""
    poll_rate_s: float | None = Field(default=None, gt=0)
    """Poll every resource this often instead of its served pollRate (default 900 s)."""
    post_rate_s: float | None = Field(default=None, gt=0)
    """Post mirror readings this often instead of the server's postRate."""
    request_timeout_s: float = Field(default=10.0, gt=0, le=120)
    """Timeout of each HTTP request."""
    publish_interval_s: float = Field(default=60.0, gt=0, le=300)
    """grid/controls and the status are republished at least this often."""

    @field_validator("server")
    @classmethod
    def _https(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("give the server as https://host:port (2030.5 runs over TLS)")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError("give only https://host:port; the DeviceCapability path is dcap_path")
        return value.rstrip("/")

    @field_validator("dcap_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("dcap_path is a path on the server, starting with '/'")
        return value

    @model_validator(mode="after")
    def _one_pin_source(self) -> Self:
        given = [x is not None for x in (self.pin, self.pin_env, self.pin_file)]
        if sum(given) > 1:
            raise ValueError("give the registration PIN once: pin, pin_env or pin_file")
        for rate in (self.poll_rate_s, self.post_rate_s):
            if rate is not None and not math.isfinite(rate):
                raise ValueError("rates must be finite seconds")
        return self
