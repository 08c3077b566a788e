"""MiniMax: a video is listed by ``videoId``, an image by ``imageId``.

Both read ``user:<user id>-minimax:<account>-<type>:<job id>``. The id's kind wins over the key
it came under: the upstream's own example lists an image (``-image:``) under ``videoId``.
"""

from recorder.parse import Layout, user_id_parts
from recorder.services._base import Service

SERVICE = Service(
    name="minimax",
    default_url="https://api.useapi.net/v1/minimax/scheduler/",
    has_available=True,
    layout=Layout(
        id_keys=("videoId", "imageId"),
        id_key_types=(("videoId", "video"), ("imageId", "image")),
        id_parts=user_id_parts,
    ),
)
