"""``python -m edge``: run one edge against ``NATS_URL``, listening on ``EDGE_BIND``."""

from agentstream import settings as config
from agentstream.runtime import run
from edge.service import serve


def main() -> int:
    """Entry point; returns the exit code."""
    settings = config.load()
    return run(lambda stop: serve(settings, stop), settings, component="edge")


if __name__ == "__main__":
    raise SystemExit(main())
