"""TemPolor: ``job_id`` is ``user:<user id>-tempolor:<TemPolor user id>-job:<job id>``.

The account is the TemPolor user id, as /available keys it.
"""

from recorder.parse import IdParts, Layout, user_id_parts
from recorder.services._base import Service


def _id_parts(api_id: str) -> IdParts:
    # No type: every TemPolor id says `job`, which names the id's kind, not what the job makes
    # (music). A constant would read like a real type beside PixVerse's video and image in
    # `stats --by type`, and would change meaning the day the answer gains a `type` field.
    parts = user_id_parts(api_id)
    return IdParts(account=parts.account, user_id=parts.user_id)


SERVICE = Service(
    name="tempolor",
    default_url="https://api.useapi.net/v1/tempolor/scheduler/",
    has_available=True,
    layout=Layout(id_keys=("job_id",), id_parts=_id_parts),
)
