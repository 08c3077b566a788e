"""Runway: ``taskId`` is ``user:<user id>-runwayml:<email>-task:<uuid>``; no start, no elapsed.

Its type is the id's kind, ``task``, as for every ``user:`` id.
"""

from recorder.parse import Layout, user_id_parts
from recorder.services._base import Service

SERVICE = Service(
    name="runway",
    default_url="https://api.useapi.net/v1/runwayml/scheduler/",
    has_available=False,
    layout=Layout(id_keys=("taskId",), id_parts=user_id_parts),
)
