"""`tokend aws-credential NAME`: the AWS CLI's and SDKs' `credential_process`.

    # ~/.aws/config
    [default]
    credential_process = tokend aws-credential NAME

The SDK runs the command and reads `{"Version": 1, "AccessKeyId", "SecretAccessKey", "SessionToken",
"Expiration"}` from its output; it runs it again once Expiration comes within its refresh window, which
tokend's renewal (20 minutes before expiry) keeps clear of.
"""

from __future__ import annotations

from tokend.errors import TokendError
from tokend.outputs import asking

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tokend.api.client import Client

__all__ = ["process_credential"]


def process_credential(client: Client, name: str) -> dict[str, Any]:
    """Provider `name`'s AWS credential in the credential_process protocol (version 1)."""
    answer = asking.token(client, name)
    keys = answer.get("aws")
    if answer.get("type") != "aws" or not isinstance(keys, dict):
        raise TokendError(f"provider {name!r} holds no AWS credential (its kind is not an AWS one)")
    return {"Version": 1, "AccessKeyId": keys["access_key_id"], "SecretAccessKey": keys["secret_access_key"],
            "SessionToken": keys["session_token"], "Expiration": keys["expiration"]}
