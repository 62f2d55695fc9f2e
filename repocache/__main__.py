"""``python -m repocache``: the same command as the ``repocache`` console script."""

from repocache.cli import main

raise SystemExit(main())
