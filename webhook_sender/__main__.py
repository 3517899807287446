"""``python -m webhook_sender``: run one webhook sender against ``NATS_URL``."""

from agentstream.runtime import run
from agentstream.settings import Settings
from webhook_sender.service import serve


def main() -> int:
    """Entry point; returns the exit code."""
    settings = Settings.from_env()
    return run(lambda stop: serve(settings, stop), settings, component="webhook-sender")


if __name__ == "__main__":
    raise SystemExit(main())
