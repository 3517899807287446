"""The built-in deterministic model: a real OpenAI-compatible HTTP server standing in for an LLM,
so the whole pipeline runs on a fresh machine with no model installed."""
