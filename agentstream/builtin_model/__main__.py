"""``python -m agentstream.builtin_model``: serve the built-in model on BUILTIN_MODEL_BIND."""

from agentstream import settings as config
from agentstream.builtin_model.server import serve
from agentstream.runtime import run


def main() -> int:
    """Entry point; returns the exit code."""
    settings = config.load()
    return run(lambda stop: serve(settings, stop), settings, component="builtin-model")


if __name__ == "__main__":
    raise SystemExit(main())
