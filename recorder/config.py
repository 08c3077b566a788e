"""Where the recorder's settings come from: defaults, environment variables, the token."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from recorder.secret import Secret

DEFAULT_URL = "https://api.useapi.net/v2/pixverse/scheduler/"
DEFAULT_INTERVAL_S = 10.0
DEFAULT_TIMEOUT_S = 20.0
# What an interval and a timeout may be, on the command line and in a config file alike.
INTERVAL_RANGE_S = (0.05, 86400.0)
TIMEOUT_RANGE_S = (0.1, 3600.0)
# Job outcomes (recorder.outcomes): at most this many requests a minute per target.
DEFAULT_OUTCOME_RATE = 30
OUTCOME_RATE_RANGE = (1, 600)
ENV_TOKEN = "USEAPI_TOKEN"  # noqa: S105 (the variable's name, not a token)


class ConfigError(Exception):
    """A setting is missing or unusable; the message says which and how to fix it."""


def load_token(token_file: Path | None, environ: Mapping[str, str] = os.environ) -> Secret:
    """The API token from `token_file`, else from $USEAPI_TOKEN.

    A UTF-8 byte order mark and surrounding blank lines and spaces are dropped. A token that
    spans lines or holds characters an HTTP header cannot carry is refused; no message ever
    repeats the token.
    """
    if token_file is not None:
        return token_from_file(token_file)
    if not environ.get(ENV_TOKEN, "").strip():
        raise ConfigError(f"no API token: set {ENV_TOKEN} or pass --token-file PATH")
    return token_from_env(ENV_TOKEN, environ)


def token_from_file(token_file: Path) -> Secret:
    """The API token in `token_file`, checked as load_token checks it."""
    try:
        # utf-8-sig: editors on Windows start files with a byte order mark.
        text = token_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the token file {token_file}: {exc.__class__.__name__}"
        ) from None
    return _check_token(text, f"the token file {token_file}")


def token_from_env(name: str, environ: Mapping[str, str] = os.environ) -> Secret:
    """The API token in the environment variable `name`, checked as load_token checks it."""
    text = environ.get(name, "")
    if not text.strip():
        raise ConfigError(f"the {name} environment variable is not set, or empty")
    return _check_token(text, f"the {name} environment variable")


def _check_token(text: str, source: str) -> Secret:
    value = text.lstrip("\ufeff").strip()
    if not value:
        raise ConfigError(f"{source} is empty")
    lines = [line for line in value.splitlines() if line.strip()]
    if len(lines) > 1:
        raise ConfigError(
            f"{source} holds {len(lines)} lines: it should hold the token alone, on one line"
        )
    # What an HTTP header value can carry: visible ASCII, no spaces (requests would otherwise
    # echo the whole header, token included, in its error).
    bad = next((char for char in value if not "\x21" <= char <= "\x7e"), None)
    if bad is not None:
        kind = (
            "whitespace"
            if bad.isspace()
            else "a control character"
            if ord(bad) < 0x20 or ord(bad) == 0x7F
            else "a non-ASCII character"
        )
        raise ConfigError(
            f"the token in {source} contains {kind}, which an HTTP header cannot carry: "
            "check that it was copied whole and alone"
        )
    return Secret(value)
