"""A credential's life: the manager and its slots, the one place a login happens, the announcement of each
outcome, when to renew and retry, the timers, reloads and watched secret files."""
