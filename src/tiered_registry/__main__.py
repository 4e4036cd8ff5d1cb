"""``python -m tiered_registry``: the ``tiered-registry`` command."""

from .cli import main

raise SystemExit(main())
