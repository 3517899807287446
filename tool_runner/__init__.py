"""The tool runner process: executes tools (read_file, list_dir, http_request) for agents over NATS."""
