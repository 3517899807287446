"""``python -m tool_runner``: run one tool runner against ``NATS_URL``."""

from agentstream.runtime import run
from agentstream.settings import Settings
from tool_runner.service import serve


def main() -> int:
    """Entry point; returns the exit code."""
    settings = Settings.from_env()
    return run(lambda stop: serve(settings, stop), settings, component="tool-runner")


if __name__ == "__main__":
    raise SystemExit(main())
