"""``python -m agent_runner``: run one agent runner against ``NATS_URL``."""

from agent_runner.service import serve
from agentstream.runtime import run
from agentstream.settings import Settings


def main() -> int:
    """Entry point; returns the exit code."""
    settings = Settings.from_env()
    return run(lambda stop: serve(settings, stop), settings, component="agent-runner")


if __name__ == "__main__":
    raise SystemExit(main())
