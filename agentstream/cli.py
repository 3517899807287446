"""The ``agentstream`` command.

    agentstream up                    everything on this machine (embedded NATS unless NATS_URL)
    agentstream up --nats-cluster 3   the same on a 3-server JetStream cluster (streams in 3 replicas)
    agentstream edge                  one edge             (same as: python -m edge)
    agentstream agent-runner          one agent runner     (python -m agent_runner)
    agentstream tool-runner           one tool runner      (python -m tool_runner)
    agentstream model                 the built-in model   (python -m agentstream.builtin_model)
    agentstream chat AGENT MESSAGE    submit a message and watch the run
    agentstream agents check [DIR]    validate agent files; exit 1 on errors
    agentstream agents push DIR       upload agent files to the key's tenant, through the edge
    agentstream config                every setting, its environment variable and default
    agentstream nats-config           the nats-server users and permissions, for an existing server
    agentstream nats-setup            declare streams and buckets (NATS_CREDS: the admin identity)
    agentstream creds TENANT          credentials for a tenant's services that skip HTTP (--revoke)

Components read their configuration from environment variables (``agentstream config``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from agentstream.settings import Settings, configuration_error, documented


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="agentstream", description="Run YAML-defined LLM agents as services.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start NATS (embedded), the built-in model, edge, agent runner, tool runner and "
                                   "webhook sender")
    up.add_argument("--nats-cluster", type=int, metavar="N",
                    help="start N embedded nats-servers as one JetStream cluster (AGENTSTREAM_NATS_CLUSTER)")
    sub.add_parser("edge", help="run one edge (HTTP API)")
    sub.add_parser("agent-runner", help="run one agent runner")
    sub.add_parser("tool-runner", help="run one tool runner")
    sub.add_parser("webhooks", help="run one webhook sender (POSTs run events to webhooks)")
    sub.add_parser("model", help="serve the built-in deterministic model")
    chat = sub.add_parser("chat", help="send a message to an agent and watch the run")
    chat.add_argument("agent")
    chat.add_argument("message")
    chat.add_argument("--url", default=os.environ.get("AGENTSTREAM_URL", "http://127.0.0.1:8080"),
                      help="edge URL (AGENTSTREAM_URL; default http://127.0.0.1:8080)")
    chat.add_argument("--key", default=os.environ.get("AGENTSTREAM_API_KEY"), help="API key (AGENTSTREAM_API_KEY)")
    chat.add_argument("--message-id", help="idempotency key: the same id names the same run")
    agents = sub.add_parser("agents", help="agent definitions")
    agents_sub = agents.add_subparsers(dest="agents_command", required=True)
    check = agents_sub.add_parser("check", help="validate a directory of agent YAML files")
    check.add_argument("directory", nargs="?", help="default: AGENTS_DIR")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    push = agents_sub.add_parser("push", help="upload a directory of agent files to your tenant (through the edge's "
                                 "API: AGENTSTREAM_URL, AGENTSTREAM_API_KEY); all are stored or none")
    push.add_argument("directory")
    push.add_argument("--tenant", help="refuse to push unless the API key belongs to this tenant")
    push.add_argument("--url", default=os.environ.get("AGENTSTREAM_URL", "http://127.0.0.1:8080"),
                      help="edge URL (AGENTSTREAM_URL; default http://127.0.0.1:8080)")
    push.add_argument("--key", default=os.environ.get("AGENTSTREAM_API_KEY"), help="API key (AGENTSTREAM_API_KEY)")
    config = sub.add_parser("config", help="list every setting with its environment variable and default")
    config.add_argument("--markdown", action="store_true", help="as a Markdown table (for the README)")
    nats_config = sub.add_parser("nats-config",
                                 help="print the nats-server users and permissions (creates component identities)")
    nats_config.add_argument("--write", action="store_true",
                             help="also write them to AGENTSTREAM_DATA_DIR/auth/nats-auth.conf")
    nats_config.add_argument("--cluster-routes", metavar="HOST:PORT,...",
                             help="also write auth/nats-cluster.conf for a cluster whose servers' routes are these "
                                  "(with a route password kept in auth/cluster-route.secret)")
    sub.add_parser("nats-setup", help="declare streams, buckets and consumers with the admin identity (NATS_CREDS)")
    creds = sub.add_parser("creds", help="write (or revoke) the NATS credentials of a tenant's own services")
    creds.add_argument("tenant")
    creds.add_argument("--revoke", action="store_true", help="revoke them (applied without restarting nats-server)")
    args = parser.parse_args(argv)

    if args.command == "config":
        if args.markdown:
            print("| variable | default | what |\n|---|---|---|")
            for env, default, help_ in documented():
                print(f"| `{env}` | {f'`{default}`' if default else '(unset)'} | {help_} |")
            return 0
        for env, default, help_ in documented():
            print(f"{env}={default}\n    {help_}")
        return 0
    try:
        settings = Settings.from_env()
    except ValidationError as err:
        print(f"configuration error: {configuration_error(err)}", file=sys.stderr)
        return 2
    if args.command in ("nats-config", "nats-setup", "creds"):
        from agentstream import auth_cli

        if args.command == "nats-config":
            routes = [r.strip() for r in (args.cluster_routes or "").split(",") if r.strip()]
            return auth_cli.nats_config(settings, write=args.write, cluster_routes=routes or None)
        if args.command == "nats-setup":
            return auth_cli.nats_setup(settings)
        return auth_cli.creds(settings, args.tenant, revoke=args.revoke)
    if args.command == "agents" and args.agents_command == "push":
        from agentstream.push_cli import push as run_push

        return run_push(Path(args.directory), url=args.url, api_key=args.key, tenant=args.tenant)
    if args.command == "agents":
        return _agents_check(Path(args.directory) if args.directory else settings.agents_dir, args.json,
                             settings.llm_key_env_pattern, settings.mcp_stdio_commands)
    if args.command == "chat":
        from agentstream.chat_cli import chat as run_chat

        return run_chat(args.url, args.agent, args.message, api_key=args.key, message_id=args.message_id)

    from agentstream.runtime import run

    if args.command == "up":
        from agentstream.supervisor import Supervisor

        if args.nats_cluster is not None:
            if args.nats_cluster < 1:
                print("configuration error: --nats-cluster: at least 1 server", file=sys.stderr)
                return 2
            settings = settings.changed(nats_cluster=args.nats_cluster)

        return run(lambda stop: Supervisor(settings).run(stop), settings, component=None)
    if args.command == "edge":
        from edge.service import serve
    elif args.command == "agent-runner":
        from agent_runner.service import serve
    elif args.command == "tool-runner":
        from tool_runner.service import serve
    elif args.command == "webhooks":
        from webhook_sender.service import serve
    else:
        from agentstream.builtin_model.server import serve
    component = "builtin-model" if args.command == "model" else args.command
    return run(lambda stop: serve(settings, stop), settings, component=component)


def _agents_check(directory: Path, as_json: bool, key_env_pattern: str, mcp_stdio_commands: str) -> int:
    from agentstream.agents import load_agents

    catalog = load_agents(directory, key_env_pattern=key_env_pattern, mcp_stdio_commands=mcp_stdio_commands)
    if as_json:
        print(json.dumps({
            "directory": str(directory),
            "agents": sorted(catalog.agents),
            "skills": sorted(catalog.skills),
            "errors": [e.as_dict() for e in catalog.errors],
        }, indent=2))
    else:
        for error in catalog.errors:
            print(f"error: {error}")
        print(f"{len(catalog.agents)} agent(s) valid: {', '.join(sorted(catalog.agents)) or 'none'}; "
              f"{len(catalog.errors)} error(s)")
    return 1 if catalog.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
