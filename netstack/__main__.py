"""``python -m netstack``: the same as the ``netstackd`` command."""

from netstack.cli import main

raise SystemExit(main())
