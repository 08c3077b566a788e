"""LTX Studio: ``jobId`` is ``email:<email>:<uuid>-type:<type>``, with the account's ``email``."""

from recorder.parse import IdParts, Layout, parse_account
from recorder.services._base import Service


def _id_parts(api_id: str) -> IdParts:
    _, account = parse_account(api_id)
    _, sep, kind = api_id.rpartition("-type:")
    return IdParts(type=kind if sep and kind and ":" not in kind else None, account=account)


SERVICE = Service(
    name="ltxstudio",
    default_url="https://api.useapi.net/v1/ltxstudio/scheduler",
    has_available=False,
    layout=Layout(id_keys=("jobId",), account_key="email", id_parts=_id_parts),
)
