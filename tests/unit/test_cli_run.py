"""``gridpilot run``'s scale-out options are refused where they mean nothing, before any
service starts (the site file is not even read)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gridpilot.cli.main import cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "gateway", "site.yaml", "--port", "8081"], "--port is the API's"),
        (["run", "ingest", "site.yaml", "--port", "8081"], "--port is the API's"),
        (["run", "api", "site.yaml", "--instance", "1"], "--instance is for ingest processes"),
        (["run", "ingest", "site.yaml", "--instance", "a b"], "--instance 'a b': use 1-32"),
        (["run", "ingest", "site.yaml", "--instance", "x" * 33], "use 1-32 letters"),
    ],
)
def test_scale_out_options_are_refused_where_they_do_not_apply(
    tmp_path: Path, args: list[str], message: str
) -> None:
    args = [str(tmp_path / a) if a == "site.yaml" else a for a in args]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert message in result.output


def test_port_out_of_range_is_refused_by_the_option_itself() -> None:
    result = CliRunner().invoke(cli, ["run", "api", "site.yaml", "--port", "70000"])
    assert result.exit_code == 2
    assert "70000 is not in the range 0<=x<=65535" in result.output
