"""User tokens: a refresh token exchanged for access tokens (RFC 6749 section 6), rotated as the server
rotates it (grant.py); the device authorization grant (RFC 8628) that signs a user in through the daemon,
and the sign-out that revokes (RFC 7009), offered to the daemon as an extension (device.py)."""

from __future__ import annotations

from tokend.providers.base import Kind
from tokend.providers.oauth2_refresh_token.grant import OAuth2RefreshToken, OAuth2RefreshTokenConfig

__all__ = ["KIND", "OAuth2RefreshToken", "OAuth2RefreshTokenConfig"]


EXAMPLE = """\
[providers.me]
kind = "oauth2_refresh_token"
token_url = "https://auth.example.com/oauth/token"
client_id = "my-cli-app"
auth_method = "none"                       # a public client; or client_secret with client_secret_basic / _post
scope = "openid offline_access"
refresh_token = { env = "ME_REFRESH_TOKEN" }   # the first one; optional with device_authorization_url
# device_authorization_url = "https://auth.example.com/oauth/device/code"   # `tokend login me`
# revocation_url = "https://auth.example.com/oauth/revoke"                 # `tokend logout me` revokes it
"""

KIND = Kind("oauth2_refresh_token", OAuth2RefreshTokenConfig,
            "tokend.providers.oauth2_refresh_token.grant:OAuth2RefreshToken",
            extension="tokend.providers.oauth2_refresh_token.device:DeviceLogins", example=EXAMPLE)
