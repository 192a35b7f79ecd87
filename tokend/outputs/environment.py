"""What `tokend exec` puts in a child's environment for the metadata endpoints that are on, as the SDKs
read it: GCE_METADATA_HOST and GCE_METADATA_IP (google-auth), IDENTITY_ENDPOINT and IDENTITY_HEADER
(azure-identity). The daemon says what they are: Azure's secret changes with every run of it."""

from __future__ import annotations

from tokend.errors import TokendError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tokend.api.client import Client

__all__ = ["metadata_environment"]


def metadata_environment(client: Client) -> dict[str, str]:
    reply = client.request("GET", "/metadata/environment")
    if reply.status == 404:  # a daemon older than the metadata endpoints
        return {}
    if reply.status != 200:
        raise TokendError(f"GET /metadata/environment: {reply.error_message()}")
    environment: dict[str, str] = reply.json()["environment"]
    return environment
