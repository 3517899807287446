"""``python -m tool_runner``: run one tool runner against ``NATS_URL``."""

from agentstream import settings as config
from agentstream.runtime import run
from tool_runner.service import serve


def main() -> int:
    """Entry point; returns the exit code."""
    settings = config.load()
    return run(lambda stop: serve(settings, stop), settings, component="tool-runner")


if __name__ == "__main__":
    raise SystemExit(main())
