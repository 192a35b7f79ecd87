"""User tokens: a refresh token exchanged for access tokens (RFC 6749 section 6), rotated as the server
rotates it (grant.py, which holds the kind's KIND); the device authorization grant (RFC 8628) that signs a
user in through the daemon, and the sign-out that revokes (RFC 7009), offered to the daemon as an extension
(device.py), which imports the grant only when a sign-in is asked for."""
