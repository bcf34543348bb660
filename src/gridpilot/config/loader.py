"""Loading a site file: YAML -> validated, frozen ``GridPilotConfig``.

Every problem is reported at once, each with the file, line and dotted field path, so a
user can fix a file in one pass:

    examples/building.yaml:42: devices[1].points[3].type: Input should be 'int16', ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gridpilot.config import semantic
from gridpilot.config.models import GridPilotConfig
from gridpilot.config.profiles import expand_device

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a configuration file."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ConfigError(Exception):
    """The configuration cannot be used; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        summary = "\n".join(f"  {issue}" for issue in issues)
        super().__init__(f"{len(issues)} problem(s) in the configuration:\n{summary}")


def format_loc(loc: Loc) -> str:
    """``("devices", 1, "points", 3, "type")`` -> ``devices[1].points[3].type``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _LineIndex:
    """Maps a data path to the 1-based line where it is written."""

    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {}
        self.duplicates: list[tuple[Loc, int]] = []

    def build(self, node: yaml.Node, loc: Loc = ()) -> None:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                child = (*loc, key)
                if key in seen:
                    self.duplicates.append((child, key_node.start_mark.line + 1))
                seen.add(key)
                # Point at the key: that is the line a user reads for "unknown field".
                self.lines[child] = key_node.start_mark.line + 1
                self.build(value_node, child)
                self.lines[child] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.build(item, (*loc, index))

    def line_of(self, loc: Loc) -> int | None:
        # Missing fields are not in the file: fall back to the nearest enclosing entry.
        for cut in range(len(loc), -1, -1):
            line = self.lines.get(loc[:cut])
            if line is not None:
                return line
        return None


@dataclass(slots=True)
class _Profiles:
    """The site data with every ``profile:`` device expanded, and how to find in the file
    what was said about an expanded point."""

    data: Any
    issues: list[tuple[Loc, str]]
    """Problems of the expansion (unknown profile or point), at their place in the file."""
    origins: dict[Loc, Loc]
    """``("devices", i, "points", j)`` of an expanded point -> where it is written."""
    failed: set[int]
    """Devices whose expansion failed (their issue is already in ``issues``)."""

    def original(self, loc: Loc) -> Loc:
        origin = self.origins.get(loc[:4])
        return loc if origin is None else (*origin, *loc[4:])


def _expand_profiles(data: Any) -> _Profiles:
    expanded = _Profiles(data, [], {}, set())
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(devices, list):
        return expanded
    out: list[Any] = []
    for i, device in enumerate(devices):
        if not isinstance(device, dict) or device.get("profile") is None:
            out.append(device)
            continue
        expansion = expand_device(device)
        if expansion.problems:
            expanded.failed.add(i)
            expanded.issues += [(("devices", i, *p.loc), p.message) for p in expansion.problems]
            # Its points are references into a profile, not points: no checks of their own.
            out.append({key: value for key, value in device.items() if key != "points"})
            continue
        for j, origin in enumerate(expansion.origins):
            expanded.origins[("devices", i, "points", j)] = ("devices", i, *origin)
        out.append(expansion.device)
    expanded.data = {**data, "devices": out}
    return expanded


def _pydantic_issues(
    file: str, error: ValidationError, index: _LineIndex, profiles: _Profiles
) -> list[ConfigIssue]:
    issues = []
    for item in error.errors(include_url=False):
        loc: Loc = tuple(part for part in item["loc"] if not str(part).startswith("function-"))
        if len(loc) == 2 and loc[0] == "devices" and loc[1] in profiles.failed:
            continue  # the device's profile problem, already reported at its line
        loc = profiles.original(loc)
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = f"unknown field {loc[-1]!r} (check its spelling and indentation)"
        elif item["type"] == "missing":
            message = f"required field {loc[-1]!r} is missing"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        issues.append(ConfigIssue(file, index.line_of(loc), format_loc(loc), message))
    return issues


def validate_config_text(text: str, file: str = "<config>") -> GridPilotConfig:
    """Parse and validate YAML text; raise ConfigError listing every problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue(file, line, "", f"not valid YAML: {problem}")]) from exc
    if data is None:
        raise ConfigError(
            [ConfigIssue(file, 1, "", "the file is empty; start with 'site: {id: ...}'")]
        )
    index = _LineIndex()
    if node is not None:
        index.build(node)
    issues = [
        ConfigIssue(file, line, format_loc(loc), f"key {loc[-1]!r} appears twice in this mapping")
        for loc, line in index.duplicates
    ]
    profiles = _expand_profiles(data)
    issues += [
        ConfigIssue(file, index.line_of(loc), format_loc(loc), message)
        for loc, message in profiles.issues
    ]
    for finding in semantic.check(profiles.data):
        loc = profiles.original(finding.loc)
        issues.append(ConfigIssue(file, index.line_of(loc), format_loc(loc), finding.message))
    config: GridPilotConfig | None = None
    try:
        config = GridPilotConfig.model_validate(profiles.data)
    except ValidationError as exc:
        issues += _pydantic_issues(file, exc, index, profiles)
    if issues:
        issues.sort(key=lambda issue: (issue.line or 0, issue.field))
        raise ConfigError(issues)
    if config is None:  # pragma: no cover - pydantic either returns a model or raises
        raise ConfigError([ConfigIssue(file, None, "", "validation produced no configuration")])
    return config


def load_config(path: Path | str) -> GridPilotConfig:
    """Load a site file. Relative paths inside it (storage.path) stay relative to it:
    callers resolve them against ``path.parent``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [
                ConfigIssue(
                    str(path),
                    None,
                    "",
                    "file not found; check the path (try examples/building.yaml)",
                )
            ]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [ConfigIssue(str(path), None, "", f"cannot read the file: {exc}")]
        ) from exc
    return validate_config_text(text, str(path))
