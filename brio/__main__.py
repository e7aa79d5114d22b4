"""`python -m brio` is the `brio` command."""

from brio.cli.main import main

raise SystemExit(main())
