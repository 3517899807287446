"""``python -m agentstream.builtin_model``: serve the built-in model on BUILTIN_MODEL_BIND."""

from agentstream.builtin_model.server import serve
from agentstream.runtime import run
from agentstream.settings import Settings


def main() -> int:
    """Entry point; returns the exit code."""
    settings = Settings.from_env()
    return run(lambda stop: serve(settings, stop), settings, component="builtin-model")


if __name__ == "__main__":
    raise SystemExit(main())
