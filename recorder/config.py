"""Where the recorder's settings come from: defaults, environment variables, the token."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from recorder.secret import Secret

DEFAULT_URL = "https://api.useapi.net/v2/pixverse/scheduler/"
DEFAULT_INTERVAL_S = 10.0
ENV_TOKEN = "USEAPI_TOKEN"  # noqa: S105 (the variable's name, not a token)


class ConfigError(Exception):
    """A setting is missing or unusable; the message says which and how to fix it."""


def load_token(token_file: Path | None, environ: Mapping[str, str] = os.environ) -> Secret:
    """The API token from `token_file`, else from $USEAPI_TOKEN."""
    if token_file is not None:
        try:
            value = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read the token file {token_file}: {exc.__class__.__name__}"
            ) from None
        if not value:
            raise ConfigError(f"the token file {token_file} is empty")
        return Secret(value)
    value = environ.get(ENV_TOKEN, "").strip()
    if not value:
        raise ConfigError(f"no API token: set {ENV_TOKEN} or pass --token-file PATH")
    return Secret(value)
