"""Kling: ``id`` is a number and names nothing; the account is the item's ``email``."""

from recorder.parse import Layout
from recorder.services._base import Service

SERVICE = Service(
    name="kling",
    default_url="https://api.useapi.net/v1/kling/scheduler",
    has_available=True,
    layout=Layout(id_keys=("id",), account_key="email"),
)
