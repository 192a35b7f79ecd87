"""`python -m tokend`: the command line, as the `tokend` command runs it."""

from tokend.cli.main import main

raise SystemExit(main())
