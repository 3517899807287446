"""``python -m agentstream``: the ``agentstream`` command."""

from agentstream.cli import main

raise SystemExit(main())
