"""The bus-identity commands of the ``agentstream`` CLI.

    agentstream nats-config           the nats-server users and permissions (for an existing server)
    agentstream nats-setup            declare streams and buckets (NATS_CREDS: the admin identity)
    agentstream creds TENANT          a credentials file for a tenant's own services
    agentstream creds TENANT --revoke revoke it (a running embedded server applies it at once)

Identities live in ``AGENTSTREAM_DATA_DIR/auth`` (agentstream.natsauth); seeds are never printed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from agentstream.natsauth import (
    CLUSTER_CONFIG_FILE,
    SERVER_CONFIG_FILE,
    AuthError,
    AuthStore,
    reload_server,
    write_secret,
)
from agentstream.settings import Settings
from schemas.permissions import Role, tenant_inbox_prefix
from schemas.subjects import is_token
from schemas.tenants import DEFAULT_TENANT


def auth_store(settings: Settings) -> AuthStore:
    """The identities of this installation."""
    return AuthStore(settings.data_dir / "auth")


def pid_files(settings: Settings) -> list[Path]:
    """Where the embedded nats-servers of ``agentstream up`` write their pids: the single server's
    ``nats.pid``, and each cluster node's (agentstream.natsserver.NatsCluster) that exists."""
    return [settings.data_dir / "nats.pid", *sorted((settings.data_dir / "nats-cluster").glob("n*/nats.pid"))]


def reload_servers(settings: Settings) -> bool:
    """Make every running embedded nats-server re-read its configuration; True if any did."""
    results = [reload_server(path) for path in pid_files(settings)]
    return any(results)


def nats_config(settings: Settings, *, write: bool = False, cluster_routes: list[str] | None = None) -> int:
    """Print the ``authorization`` block for an existing nats-server; create missing component
    seeds; ``write``: also write it to the auth directory (``nats-auth.conf``); ``cluster_routes``
    (``host:port`` of every server's routes): also write ``nats-cluster.conf``, the configuration
    every server of such a cluster loads (it includes ``nats-auth.conf``; each server is named on
    its command line, ``--name``)."""
    store = auth_store(settings)
    store.ensure_components()
    print(store.server_config())
    if write:
        print(f"# written to {store.write_server_config()}", file=sys.stderr)
    if cluster_routes:
        from agentstream.natsserver import cluster_config

        port = cluster_routes[0].rsplit(":", 1)[-1]
        text = cluster_config(name="agentstream", listen=f"0.0.0.0:{port}", routes=cluster_routes,
                              password=store.route_password(), include=Path(SERVER_CONFIG_FILE))
        path = store.directory / CLUSTER_CONFIG_FILE
        write_secret(path, text.encode())
        print(f"# cluster configuration for {', '.join(cluster_routes)} written to {path}", file=sys.stderr)
    print(
        f"# Add this to the server's configuration and reload it (nats-server --signal reload).\n"
        f"# Each component then connects with NATS_CREDS={store.directory}/<role>.nk "
        f"({', '.join(r.value for r in Role)}); the admin identity declares the streams: "
        f"NATS_CREDS={store.seed_path(Role.ADMIN)} agentstream nats-setup",
        file=sys.stderr,
    )
    return 0


def nats_setup(settings: Settings) -> int:
    """Declare the streams, buckets and shared consumers as the admin identity (``NATS_CREDS``)."""
    from agentstream.bus import setup

    try:
        asyncio.run(setup(settings))
    except (TimeoutError, AuthError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("streams, buckets and consumers are declared")
    return 0


def _known_tenants(settings: Settings) -> set[str]:
    """The tenants of the keys file (without one: only ``default``). Raises KeysFileError."""
    if settings.keys_file is None:
        return {DEFAULT_TENANT}
    from edge.auth import parse_keys_file

    return set(parse_keys_file(settings.keys_file).policies)


def creds(settings: Settings, tenant: str, *, revoke: bool) -> int:
    """Issue (or revoke) the credentials of ``tenant``'s own services; exit code 2 for a bad or
    unknown tenant."""
    from edge.auth import KeysFileError

    if not is_token(tenant):
        print(f"error: tenant {tenant[:80]!r} is not a valid name (1-64 of A-Z a-z 0-9 _ -)", file=sys.stderr)
        return 2
    store = auth_store(settings)
    if revoke:
        if not store.revoke_tenant(tenant):
            print(f"error: tenant {tenant!r} has no credentials to revoke", file=sys.stderr)
            return 2
        store.ensure_components()
        store.write_server_config()
        applied = reload_servers(settings)
        print(f"revoked the credentials of tenant {tenant!r}"
              + ("; the running nats-server closed its connections" if applied else
                 "; no running embedded nats-server: re-run `agentstream nats-config` for an external one"))
        return 0
    try:
        known = _known_tenants(settings)
    except KeysFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if tenant not in known:
        where = f"the keys file {settings.keys_file}" if settings.keys_file else "this installation (no KEYS_FILE)"
        print(f"error: unknown tenant {tenant!r}: {where} has {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    store.ensure_components()
    path = store.issue_tenant(tenant)
    store.write_server_config()
    applied = reload_servers(settings)
    print(f"wrote {path} (mode 0600; keep it secret)")
    inbox = tenant_inbox_prefix(tenant)
    print("connect with nats-py:")
    print(f"  nc = await nats.connect(NATS_URL, nkeys_seed={str(path)!r}, inbox_prefix={inbox!r})")
    if not applied:
        print("no running embedded nats-server: it applies at the next `agentstream up`, or re-run "
              "`agentstream nats-config` for an external server")
    return 0
