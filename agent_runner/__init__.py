"""The agent runner process: pulls run requests from JetStream and runs the agent loop."""
