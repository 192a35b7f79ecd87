"""The configuration: the file's model and its loading, its own tables, the value types and secret references
the kinds share, templates, where the config and the daemon are found, and the audit `tokend check` prints."""
