"""Riffusion: ``job_id`` is a UUID; the account is the item's ``user_id``.

Its /available (keyed ``user_id``) is documented upstream beside the list, like TemPolor's.
"""

from recorder.parse import Layout
from recorder.services._base import Service

SERVICE = Service(
    name="riffusion",
    default_url="https://api.useapi.net/v1/riffusion/scheduler",
    has_available=True,
    layout=Layout(id_keys=("job_id",), account_key="user_id"),
)
