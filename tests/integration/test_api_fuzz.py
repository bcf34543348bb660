"""Property-based fuzzing of the whole REST API from its own OpenAPI document.

Schemathesis (its CLI, as a user would run it) generates valid and invalid requests for every
operation and checks each response: no 5xx, status codes, content types, headers and bodies
as the document declares them. It runs against the real stack: the simulated site, the
gateway polling it, the controller and the API service over Mosquitto, with an admin token
so every route is reachable (a viewer's 403s are shown in test_api_auth.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from gridpilot.api.service import ApiService
from gridpilot.api.tokens import Role
from gridpilot.bus.client import BrokerAddress
from gridpilot.config import validate_config_text
from gridpilot.control.service import ControllerService
from gridpilot.gateway.service import GatewayService
from gridpilot.sim.site import SimulatedSite
from gridpilot.storage import open_storage
from tests.integration.test_control_service import WEDNESDAY_NOON, site_file

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("GRIDPILOT_FUZZ_EXAMPLES", "25"))
SETTINGS = """
# A request can fit the schema and still be refused by what only the site file knows: a
# value outside the point's valid range, a point the controller does not write, a point the
# controller drives (409). The API answers those with 4xx and a reason; anything 5xx, or a
# response outside the document, is still a failure.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
"""


def _schemathesis() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("schemathesis is not installed: run ./scripts/bootstrap test")
    return found


@pytest.mark.timeout(600)
async def test_no_server_error_and_no_response_outside_the_schema(
    mosquitto: BrokerAddress, tmp_path: Path
) -> None:
    site_id = f"fuzz-{uuid.uuid4().hex[:10]}"
    async with SimulatedSite(speed=1.0, start=WEDNESDAY_NOON, tick_s=0.05) as site:
        path = site_file(site, site_id, mosquitto, tmp_path)
        text = path.read_text() + (
            # Fuzzing is many requests a second from one token; short waits keep it quick.
            "api: {rate_limit_per_minute: 1000000, rate_limit_burst: 100000, command_timeout: 2}\n"
        )
        config = validate_config_text(text)
        async with (
            open_storage(config.storage, tmp_path) as storage,
            GatewayService(config, mosquitto),
            ControllerService(config, mosquitto, [], base_dir=tmp_path),
            ApiService(config, mosquitto, storage, base_dir=tmp_path, port=0) as api,
        ):
            token = api.tokens.create(Role.ADMIN, "fuzzer", created_by="test")[1]
            settings = tmp_path / "schemathesis.toml"
            settings.write_text(SETTINGS)
            process = await asyncio.create_subprocess_exec(
                _schemathesis(), "--config-file", str(settings),
                "run", f"{api.url}/api/v1/openapi.json",
                "--header", f"Authorization: Bearer {token}",
                "--checks", "all",
                # Revoking its own token would lock the fuzzer out for the rest of the run.
                "--exclude-path", "/api/v1/tokens/{token_id}",
                "--max-examples", str(EXAMPLES),
                "--seed", "20261126",
                "--request-timeout", "10",
                "--workers", "1",
                "--no-color",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                cwd=tmp_path,
                env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
            )  # fmt: skip
            output, _ = await asyncio.wait_for(process.communicate(), 540)
    report = output.decode(errors="replace")
    assert process.returncode == 0, report[-6000:]
    assert "passed" in report
