"""Dreamina: jobs by account, ``{"executing": {"US:<email>": [...]}, "total": n}``.

Items are ``{jobid, submitId, model, elapsedSeconds, replyUrl}``. The account is the key's email,
the type the ``model``; there is no start, only ``elapsedSeconds``. ``submitId`` is the
upstream's id, not the job's: it is no id here.
"""

from recorder.parse import Envelope, Layout
from recorder.services._base import Service

SERVICE = Service(
    name="dreamina",
    default_url="https://api.useapi.net/v1/dreamina/scheduler",
    has_available=False,
    layout=Layout(
        id_keys=("jobid",),
        envelope=Envelope.BY_ACCOUNT,
        type_key="model",
        started_key=None,
        elapsed_keys=("elapsedSeconds",),
    ),
)
