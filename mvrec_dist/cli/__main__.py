"""``python -m mvrec_dist.cli``: the ``mvrec`` command without the installed script."""

from mvrec_dist.cli import main

raise SystemExit(main())
