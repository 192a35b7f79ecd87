"""`tokend kube-credential NAME`: kubectl's exec credential plugin.

    users:
    - name: tokend
      user:
        exec:
          apiVersion: client.authentication.k8s.io/v1
          command: tokend
          args: [kube-credential, NAME]
          interactiveMode: Never

kubectl puts the ExecCredential it expects in $KUBERNETES_EXEC_INFO and reads one back with
`status.token` and `status.expirationTimestamp`; it keeps the token until then, and runs the plugin
again once it has passed or the API server answered 401.
"""

from __future__ import annotations

from tokend.errors import TokendError
from tokend.outputs import asking

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tokend.api.client import Client

__all__ = ["API_VERSIONS", "exec_credential"]

API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
EXEC_INFO_LIMIT = 1024 * 1024  # with provideClusterInfo it carries the cluster's CA bundle


def exec_credential(client: Client, name: str, exec_info: str | None) -> dict[str, Any]:
    """The ExecCredential for provider `name`, in the apiVersion kubectl asked for (v1 by default)."""
    version = _asked_version(exec_info)
    answer = asking.token(client, name)
    status = {"token": answer["token"]}
    if answer.get("expires_at"):  # RFC 3339, as GET /token gives it; a key that never expires has none
        status["expirationTimestamp"] = answer["expires_at"]
    return {"apiVersion": version, "kind": "ExecCredential", "status": status}


def _asked_version(exec_info: str | None) -> str:
    if not exec_info:
        return API_VERSIONS[0]
    version = asking.json_object(exec_info, "$KUBERNETES_EXEC_INFO", limit=EXEC_INFO_LIMIT).get("apiVersion")
    if version not in API_VERSIONS:
        raise TokendError(f"kubectl asks for an ExecCredential of apiVersion {version!r}; "
                          f"tokend speaks {' and '.join(API_VERSIONS)}")
    return str(version)
