# One image for every agentstream component; compose.yaml picks the command.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AGENTS_DIR=/app/agents

WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY agentstream ./agentstream
COPY edge ./edge
COPY agent_runner ./agent_runner
COPY tool_runner ./tool_runner
COPY webhook_sender ./webhook_sender
RUN pip install --no-cache-dir . && useradd --create-home --uid 1000 agentstream \
    && mkdir -p /data/auth && chown -R agentstream /data   # the auth volume starts owned by it
COPY agents ./agents

USER agentstream
EXPOSE 8080
CMD ["python", "-m", "edge"]
