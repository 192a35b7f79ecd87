"""Serving the local API: every listening socket, the HTTP server and its connection limits, the request checks,
signed requests, the token fast path, the routes and /metrics; and the client the command line and the
credential helpers ask the daemon with (standard library only)."""
