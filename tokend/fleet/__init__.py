"""Fleet mode: the daemons of a fleet share one login per provider per token lifetime, through Redis.

Nothing here imports a Redis library at module level except `store` (and `logins`, which uses it): the
config model in `config` is imported by every daemon, with or without a `[fleet]` table.
"""
