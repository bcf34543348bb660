"""``gridpilot config check`` as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from gridpilot.cli.main import cli

from .test_config import BAD, GOOD


def test_check_ok(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(GOOD)
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "OK (site hq, 1 devices, 3 points)" in result.output


def test_check_reports_each_problem_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(BAD)
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    for line_no, field in [
        (6, "devices[0].colour"),
        (12, "devices[0].points[1].address"),
        (14, "devices[0].points[2].point"),
        (16, "devices[0].points[3]"),
        (20, "devices[0].points[4].scale"),
    ]:
        assert any(line.startswith(f"{path}:{line_no}: {field}: ") for line in lines), lines
    assert lines[-1] == f"{path}: 5 problem(s)"


def test_check_json(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(BAD)
    result = CliRunner().invoke(cli, ["config", "check", "--json", str(path)])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert {issue["line"] for issue in report["issues"]} == {6, 12, 14, 16, 20}


def test_run_refuses_an_api_beyond_loopback_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(
        "site: {id: x}\napi: {host: 0.0.0.0, port: 0}\nbroker: {embedded_port: 0}\n"
        f"storage: {{path: {tmp_path / 'x.db'}}}\n"
    )
    result = CliRunner().invoke(cli, ["run", "all", str(path)])
    assert result.exit_code == 1
    assert "api.tls is not set: tokens would cross the network in clear text" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_run_controller_without_a_control_section_says_what_to_add(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(
        f"site: {{id: x}}\nbroker: {{embedded_port: 0}}\nstorage: {{path: {tmp_path / 'x.db'}}}\n"
    )
    result = CliRunner().invoke(cli, ["run", "controller", str(path)])
    assert result.exit_code == 1
    assert "no 'control' section" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_control_commands_without_a_control_section(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("site: {id: x}\n")
    for args in (["status"], ["dry-run", "on"], ["override", "a.b_w", "1"], ["journal"]):
        result = CliRunner().invoke(cli, ["control", *args, "-c", str(path)])
        assert result.exit_code == 2, args
        assert "control" in result.stderr


def test_token_create_list_and_revoke(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site: {id: x}\napi: {tokens_file: etc/tokens.json}\n")
    runner = CliRunner()
    created = runner.invoke(
        cli, ["token", "create", "--role", "operator", "--name", "ops", "-c", str(site)]
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("gpt_")
    stored = (tmp_path / "etc" / "tokens.json").read_text()  # relative to the site file
    assert token not in stored
    token_id = token.split("_")[1]
    listed = runner.invoke(cli, ["token", "list", "-c", str(site)])
    assert f"{token_id}  operator  active" in listed.stdout
    assert runner.invoke(cli, ["token", "revoke", token_id, "-c", str(site)]).exit_code == 0
    assert "revoked" in runner.invoke(cli, ["token", "list", "-c", str(site)]).stdout
    unknown = runner.invoke(cli, ["token", "revoke", "deadbeef", "-c", str(site)])
    assert unknown.exit_code != 0
    assert "gridpilot token list" in unknown.stderr
