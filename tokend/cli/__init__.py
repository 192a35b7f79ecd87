"""The command line, the only package that prints or exits: the parser and each command, shell completion,
`tokend demo`, `tokend init` and `tokend status --watch`."""
