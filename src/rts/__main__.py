"""`python -m rts`: the `rts` command line."""

from rts.cli import main

raise SystemExit(main())
