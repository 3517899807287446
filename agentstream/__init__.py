"""agentstream: run LLM agents defined in YAML as services, over NATS JetStream, streamed as SSE.

This package holds what the components share (settings, NATS connection, agent loading, the event
log reader, SSE framing) plus the CLI, the local supervisor and the built-in model.
"""

__version__ = "0.1.0"
