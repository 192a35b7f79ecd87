"""State that survives a restart: each provider's current credential (and a user token's rotated refresh
token), sealed in tokend.sealing's format in a folder of 0600 files. `config` is the `[state]` table, read
by every daemon; `store` reads and writes the folder.
"""
