"""PixVerse: ``id`` is ``user:<user id>-pixverse:<email>-<type>:<job id>``.

The first (2024) version of the endpoint said ``videoId`` (its /available ``video_id``) and had
no ``type``: the id's kind still names it.
"""

from recorder.parse import Layout, user_id_parts
from recorder.services._base import Service

SERVICE = Service(
    name="pixverse",
    default_url="https://api.useapi.net/v2/pixverse/scheduler/",
    has_available=True,
    layout=Layout(id_keys=("id", "videoId", "video_id"), id_parts=user_id_parts),
    has_outcomes=True,  # GET /videos/{id}, /images/{id}
)
