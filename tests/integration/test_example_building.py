"""examples/building.yaml describes exactly the simulated building `gridpilot sim` serves."""

from __future__ import annotations

from pathlib import Path

import yaml

from gridpilot.config import load_config, validate_config_text
from gridpilot.sim.site import SimulatedSite

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "building.yaml"
SIM_BASE_PORT = 15020  # `gridpilot sim` default


async def test_example_matches_the_simulator_register_maps() -> None:
    example = load_config(EXAMPLE)
    async with SimulatedSite(base_port=0) as site:
        generated = validate_config_text(
            yaml.safe_dump({"site": {"id": "hq"}, "devices": site.site_config("hq")})
        )
    assert [d.id for d in example.devices] == [d.id for d in generated.devices]
    for index, (mine, sims) in enumerate(zip(example.devices, generated.devices, strict=True)):
        assert mine.port == SIM_BASE_PORT + index
        assert mine.unit_id == sims.unit_id
        assert mine.points == sims.points, mine.id
