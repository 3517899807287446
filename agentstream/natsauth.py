"""The bus's identities: nkey seeds for every component kind and every tenant that skips HTTP, and
the nats-server configuration that grants each its permissions (schemas/permissions.py).

Everything lives in one directory (``AGENTSTREAM_DATA_DIR/auth`` for ``agentstream up``)::

    admin.nk  edge.nk  agent-runner.nk  tool-runner.nk     component seeds   (mode 0600)
    tenants/acme.nk                                        a tenant's seed   (mode 0600)
    identities.json                                        public keys only  (mode 0600)
    nats-auth.conf                                         the server's users and permissions
    cluster-route.secret, nats-cluster.conf                a cluster's route password and the
                                                           servers' configuration (0600; only
                                                           with ``nats-config --cluster-routes``)

A seed file is what nats-py reads with ``nats.connect(nkeys_seed=PATH)``: the client proves it
holds the seed by signing the server's nonce; the server keeps only public keys, so its
configuration holds no secret (nats-server "NKeys" authentication). Revoking a tenant removes its
public key from the configuration; :func:`reload_server` makes a running server apply it without a
restart (it then closes that tenant's connections).

Seeds are written with ``os.open(..., 0o600)`` and never logged.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nkeys

from schemas import permissions as P
from schemas.subjects import token

log = logging.getLogger(__name__)

SEED_SUFFIX = ".nk"
IDENTITIES_FILE = "identities.json"
SERVER_CONFIG_FILE = "nats-auth.conf"
CLUSTER_CONFIG_FILE = "nats-cluster.conf"
ROUTE_PASSWORD_FILE = "cluster-route.secret"
TENANTS_DIR = "tenants"


class AuthError(Exception):
    """An identity cannot be issued, read or revoked; the message says why and what to do."""


def new_user_seed() -> bytes:
    """A fresh nkey user seed (``SU...``, base32), from the OS's random source."""
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def public_key(seed: bytes) -> str:
    """The public key (``U...``) of an nkey user seed. Raises AuthError if it is not one."""
    try:
        kp = nkeys.from_seed(bytearray(seed.strip()))
        return bytes(kp.public_key).decode()
    except Exception as err:  # nkeys raises several types for bad seeds
        raise AuthError(f"not an nkey user seed: {type(err).__name__}") from None


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, replacing it atomically (a new inode: a reader
    holding the old file keeps reading the old content)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass
class Identities:
    """Public keys of every identity: ``components`` (role -> key) and ``tenants`` (name -> key)."""

    components: dict[str, str] = field(default_factory=dict)
    tenants: dict[str, str] = field(default_factory=dict)


class AuthStore:
    """The identities kept in ``directory`` (see the module docstring)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    # -- paths

    def seed_path(self, role: P.Role | str) -> Path:
        """Where a component's seed is (``{role}.nk``)."""
        return self.directory / f"{P.Role(role).value}{SEED_SUFFIX}"

    def tenant_seed_path(self, tenant: str) -> Path:
        """Where a tenant's seed is written (``tenants/{tenant}.nk``)."""
        return self.directory / TENANTS_DIR / f"{token(tenant, 'tenant')}{SEED_SUFFIX}"

    @property
    def server_config_path(self) -> Path:
        """The generated nats-server configuration (users and permissions)."""
        return self.directory / SERVER_CONFIG_FILE

    # -- identities

    def load(self) -> Identities:
        """The registered public keys (empty if nothing was issued yet). Raises AuthError."""
        path = self.directory / IDENTITIES_FILE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Identities()
        except (OSError, ValueError) as err:
            raise AuthError(f"{path}: cannot read the identities ({err})") from None
        return Identities(components=dict(doc.get("components", {})), tenants=dict(doc.get("tenants", {})))

    def _save(self, ids: Identities) -> None:
        doc = {"components": ids.components, "tenants": ids.tenants}
        write_secret(self.directory / IDENTITIES_FILE, json.dumps(doc, indent=2, sort_keys=True).encode())

    def ensure_components(self) -> Identities:
        """Create the seed of every component kind that has none; returns all identities.

        An existing seed is kept (components restarted later connect with the same identity).
        """
        ids = self.load()
        changed = False
        for role in P.Role:
            path = self.seed_path(role)
            if path.exists():
                key = public_key(path.read_bytes())
            else:
                seed = new_user_seed()
                write_secret(path, seed)
                key = public_key(seed)
            if ids.components.get(role.value) != key:
                ids.components[role.value] = key
                changed = True
        if changed or not (self.directory / IDENTITIES_FILE).exists():
            self._save(ids)
        return ids

    def issue_tenant(self, tenant: str) -> Path:
        """A new seed for ``tenant`` (replacing any earlier one, which stops working once the
        server reloads); returns its path. Raises SubjectTokenError for a bad name."""
        path = self.tenant_seed_path(tenant)
        seed = new_user_seed()
        write_secret(path, seed)
        ids = self.load()
        ids.tenants[tenant] = public_key(seed)
        self._save(ids)
        return path

    def revoke_tenant(self, tenant: str) -> bool:
        """Remove ``tenant``'s identity (its seed file too); False if it had none."""
        ids = self.load()
        if tenant not in ids.tenants:
            return False
        del ids.tenants[tenant]
        self._save(ids)
        self.tenant_seed_path(tenant).unlink(missing_ok=True)
        return True

    # -- server configuration

    def server_users(self) -> list[dict[str, Any]]:
        """The nats-server ``users`` list: one nkey user per identity, with its permissions."""
        ids = self.load()
        users: list[dict[str, Any]] = []
        for role in P.Role:
            key = ids.components.get(role.value)
            if key:
                users.append({"nkey": key, "permissions": P.role_permissions(role).as_config()})
        for tenant, key in sorted(ids.tenants.items()):
            users.append({"nkey": key, "permissions": P.tenant_permissions(tenant).as_config()})
        return users

    def server_config(self) -> str:
        """The ``authorization`` block for nats-server (JSON, which nats-server's configuration
        format accepts), to include in a server's configuration file."""
        return json.dumps({"authorization": {"users": self.server_users()}}, indent=2)

    def route_password(self) -> str:
        """The password a cluster's routes authenticate with: read from the auth directory, or made
        (random, mode 0600) and kept there, so a server restarted later still joins the others."""
        path = self.directory / ROUTE_PASSWORD_FILE
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            password = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
            write_secret(path, password.encode())
            return password

    def write_server_config(self) -> Path:
        """Write :meth:`server_config` to :attr:`server_config_path` (mode 0600); returns the path."""
        write_secret(self.server_config_path, self.server_config().encode())
        return self.server_config_path


def reload_server(pid_file: Path) -> bool:
    """Ask the nats-server whose pid is in ``pid_file`` to reload its configuration (SIGHUP, as
    ``nats-server --signal reload`` does). False when there is no such running server."""
    try:
        pid = int(Path(pid_file).read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        return False
    log.info("asked nats-server (pid %d) to reload its configuration", pid)
    return True


def connect_options(creds: Path | None, inbox: str) -> dict[str, Any]:
    """``nats.connect`` keyword arguments for a credentials file: an nkey seed (``nkeys_seed=``)
    or a JWT ``.creds`` file (``user_credentials=``), plus the identity's inbox prefix.

    Raises AuthError when the file cannot be read or is neither.
    """
    options: dict[str, Any] = {"inbox_prefix": inbox}
    if creds is None:
        return options
    try:
        head = Path(creds).read_bytes()[:4096]
    except OSError as err:
        raise AuthError(f"NATS_CREDS={creds}: cannot read ({err.strerror or err})") from None
    if b"BEGIN NATS USER JWT" in head:
        options["user_credentials"] = str(creds)
    elif head.strip().startswith(b"SU"):
        options["nkeys_seed"] = str(creds)
    else:
        raise AuthError(f"NATS_CREDS={creds}: neither an nkey seed (SU...) nor a .creds file")
    return options
