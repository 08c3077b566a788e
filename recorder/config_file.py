"""Targets from a config file: the schedulers that one `recorder run --config FILE` records.

    [targets.pixverse-main]
    service = "pixverse"                 # required; one of recorder.services
    url = "https://…/scheduler/"         # optional: the service's default
    token_env = "USEAPI_TOKEN"           # or token_file = "/path"; one of the two
    interval = 10                        # seconds, optional, default 10
    timeout = 30                         # optional (default: --timeout, 20 s)
    capacity_interval = 60               # optional: how often to read /scheduler/available
    outcomes = true                      # optional: ask each vanished job's outcome (pixverse)
    outcome_rate = 30                    # optional: at most this many such requests a minute

The keys are a contract that users' files rely on. The whole file is checked, tokens read
included, before anything starts: the first problem is a ConfigError of one line that names the
file, the target and the key. No message ever repeats a token.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, time
from pathlib import Path
from typing import Any, NoReturn

from recorder import services
from recorder.client import check_url
from recorder.config import (
    DEFAULT_INTERVAL_S,
    DEFAULT_TIMEOUT_S,
    INTERVAL_RANGE_S,
    TIMEOUT_RANGE_S,
    ConfigError,
    token_from_env,
    token_from_file,
)
from recorder.outcomes import DEFAULT_RATE, RATE_RANGE, outcome_url
from recorder.secret import Secret
from recorder.services import Service
from recorder.urls import same_target_key

__all__ = ["CAPACITY_INTERVAL_S", "KEYS", "TargetConfig", "load_targets"]

KEYS = (
    "service",
    "url",
    "token_env",
    "token_file",
    "interval",
    "timeout",
    "capacity_interval",
    "outcomes",
    "outcome_rate",
)
# How often a service's /scheduler/available is read when the file does not say (0: never).
CAPACITY_INTERVAL_S = 60.0
_CAPACITY_RANGE_S = (1.0, 86400.0)
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Only an upper-case name is repeated in a message: a mixed-case "name" may be a token that
# was pasted into token_env by mistake.
_SHOWN_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_DECLARED_TWICE = re.compile(r"Cannot declare \('targets', '(.*)'\) twice (\(at .*\))")


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """One target of a config file, checked: everything its daemon needs."""

    name: str
    service: Service
    url: str
    token: Secret
    interval: float
    timeout: float
    capacity_interval: float
    outcomes: bool = False  # ask each vanished job's outcome (recorder.outcomes)
    outcome_rate: int = DEFAULT_RATE  # at most this many of those requests a minute


def load_targets(
    path: Path,
    *,
    environ: Mapping[str, str] = os.environ,
    insecure: bool = False,
    default_timeout: float = DEFAULT_TIMEOUT_S,
) -> list[TargetConfig]:
    """Every target of the config file at `path`, in the file's order; ConfigError if any is
    unusable. A relative token_file is found beside the config file."""
    tables = _target_tables(path, _read(path))
    targets = []
    for name, table in tables.items():
        where = _Where(path, name)
        targets.append(_target(where, table, environ, insecure, default_timeout))
    _check_distinct(path, targets)
    return targets


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read the config file {path}: {reason}") from None
    try:
        # utf-8-sig: editors on Windows start files with a byte order mark.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        twice = _DECLARED_TWICE.fullmatch(str(exc))
        if twice is not None:  # tomllib's own words are about tuples; say what it means
            message = f"target {twice[1]!r} is defined twice {twice[2]}"
            raise ConfigError(f"{path}: {message}") from None
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _target_tables(path: Path, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    unknown = [key for key in data if key != "targets"]
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key {_show(unknown[0])}: "
            "the file holds only [targets.NAME] tables"
        )
    tables = data.get("targets")
    if not isinstance(tables, dict) or not tables:
        got = "" if tables is None or tables == {} else f" (targets is {_kind(tables)})"
        raise ConfigError(
            f"{path}: no [targets.NAME] tables{got}: add one for each scheduler to record"
        )
    for name, table in tables.items():
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"{path}: target name {_show(name)}: use 1 to 64 letters, digits, '-', '_' or '.'"
            )
        if not isinstance(table, dict):
            raise ConfigError(
                f"{path}: [targets] {name}: must be a table, [targets.{name}], not {_kind(table)}"
            )
    return tables


@dataclass(frozen=True, slots=True)
class _Where:
    """Where a problem is: the file and the target, for the message."""

    path: Path
    name: str

    def fail(self, key: str, problem: str) -> NoReturn:
        """Raise the one-line ConfigError about `key` of this target."""
        raise ConfigError(f"{self.path}: [targets.{self.name}] {key}: {problem}")


def _target(
    where: _Where,
    table: dict[str, Any],
    environ: Mapping[str, str],
    insecure: bool,
    default_timeout: float,
) -> TargetConfig:
    for key in table:
        if key not in KEYS:
            where.fail(_show(key), f"unknown key; the keys are {', '.join(KEYS)}")
    service = _service(where, table)
    url = _url(where, table, service, insecure)
    token = _token(where, table, environ)
    interval = _seconds(where, table, "interval", DEFAULT_INTERVAL_S, INTERVAL_RANGE_S)
    timeout = _seconds(where, table, "timeout", default_timeout, TIMEOUT_RANGE_S)
    capacity = _capacity(where, table, service)
    outcomes, rate = _outcomes(where, table, service, url)
    return TargetConfig(
        where.name, service, url, token, interval, timeout, capacity, outcomes, rate
    )


def _service(where: _Where, table: dict[str, Any]) -> Service:
    known = ", ".join(services.SERVICES)
    if "service" not in table:
        where.fail("service", f"missing; set it to one of {known}")
    name = table["service"]
    if not isinstance(name, str):
        where.fail("service", f"must be a string, one of {known}; not {_kind(name)}")
    if name not in services.SERVICES:
        where.fail("service", f"unknown service {_show(name)}; known: {known}")
    return services.get(name)


def _url(where: _Where, table: dict[str, Any], service: Service, insecure: bool) -> str:
    url = table.get("url", service.default_url)
    if not isinstance(url, str):
        where.fail("url", f"must be a string, not {_kind(url)}")
    if not url:
        where.fail("url", "is empty" if "url" in table else f"{service.name} has no default")
    try:
        return check_url(url, insecure=insecure)
    except ValueError as exc:
        where.fail("url", str(exc))


def _token(where: _Where, table: dict[str, Any], environ: Mapping[str, str]) -> Secret:
    given = [key for key in ("token_env", "token_file") if key in table]
    if len(given) != 1:
        problem = "both are set" if given else "neither is set"
        where.fail("token_env/token_file", f"{problem}; give exactly one of the two")
    key = given[0]
    value = table[key]
    if not isinstance(value, str) or not value:
        where.fail(key, f"must be a non-empty string, not {_kind(value)}")
    if key == "token_env":
        _check_env_name(where, value, environ)
    try:
        if key == "token_file":
            return token_from_file(where.path.parent / Path(value).expanduser())
        return token_from_env(value, environ)
    except ConfigError as exc:
        where.fail(key, str(exc))


def _check_env_name(where: _Where, name: str, environ: Mapping[str, str]) -> None:
    if not _ENV_NAME.fullmatch(name):
        where.fail(
            "token_env",
            "must be the name of an environment variable (letters, digits, _), such as "
            "USEAPI_TOKEN; the token itself belongs in that variable, not in this file",
        )
    if not _SHOWN_ENV_NAME.fullmatch(name) and not environ.get(name, "").strip():
        where.fail("token_env", "the environment variable it names is not set, or empty")


def _seconds(
    where: _Where,
    table: dict[str, Any],
    key: str,
    default: float,
    bounds: tuple[float, float],
) -> float:
    value = table.get(key, default)
    low, high = bounds
    number = _number(where, key, value)
    if not low <= number <= high:
        where.fail(key, f"must be from {low:g} to {high:g} seconds, not {value!r}")
    return number


def _capacity(where: _Where, table: dict[str, Any], service: Service) -> float:
    key = "capacity_interval"
    if key not in table:
        return CAPACITY_INTERVAL_S if service.has_available else 0.0
    value = table[key]
    number = _number(where, key, value)
    low, high = _CAPACITY_RANGE_S
    if number != 0 and not low <= number <= high:
        where.fail(key, f"must be 0 (never) or from {low:g} to {high:g} seconds, not {value!r}")
    if number and not service.has_available:
        where.fail(key, f"{service.name} has no /scheduler/available to read; set 0 or omit it")
    return number


def _outcomes(where: _Where, table: dict[str, Any], service: Service, url: str) -> tuple[bool, int]:
    enabled = table.get("outcomes", False)
    if not isinstance(enabled, bool):
        where.fail("outcomes", f"must be true or false, not {_kind(enabled)}")
    if enabled and not service.has_outcomes:
        where.fail("outcomes", f"{service.name} has no job outcomes to ask; only pixverse has")
    if enabled and outcome_url(url, "id", "video") is None:
        where.fail("outcomes", "the url has no /scheduler segment to find the jobs' pages beside")
    key = "outcome_rate"
    if key not in table:
        return enabled, DEFAULT_RATE
    if not enabled:
        where.fail(key, "applies only with outcomes = true")
    value = table[key]
    low, high = RATE_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        where.fail(key, f"must be a whole number of requests a minute, {low} to {high}")
    return enabled, value


def _number(where: _Where, key: str, value: object) -> float:
    # bool is an int in Python, but `interval = true` is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        where.fail(key, f"must be a number of seconds, not {_kind(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        where.fail(key, f"must be a finite number of seconds, not {value!r}")
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float: out of every range anyway
        return math.inf


def _check_distinct(path: Path, targets: list[TargetConfig]) -> None:
    """Each URL is one target in the database (recorder.urls.same_target_key: the case of the
    host, a default port, a trailing slash or localhost for 127.0.0.1 make no other target):
    two targets on one URL would fight over it."""
    seen: dict[str, str] = {}
    for target in targets:
        key = same_target_key(target.url)
        if key in seen:
            _Where(path, target.name).fail(
                "url",
                f"polls the same URL as [targets.{seen[key]}]; a URL is recorded by one target",
            )
        seen[key] = target.name


def _kind(value: object) -> str:
    """What a TOML value is, for a message that must not repeat it."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, date | time):
        return "a date or time"
    return type(value).__name__


def _show(text: str, limit: int = 64) -> str:
    """A name from the file, quoted, escaped and cut short, for a message."""
    return repr(text if len(text) <= limit else text[:limit] + "…")
