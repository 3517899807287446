"""``python -m agent_runner``: run one agent runner against ``NATS_URL``."""

from agent_runner.service import serve
from agentstream import settings as config
from agentstream.runtime import run


def main() -> int:
    """Entry point; returns the exit code."""
    settings = config.load()
    return run(lambda stop: serve(settings, stop), settings, component="agent-runner")


if __name__ == "__main__":
    raise SystemExit(main())
