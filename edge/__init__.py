"""The edge process: agentstream's HTTP API (Quart on Hypercorn), native, LocalAI and OpenAI dialects."""
