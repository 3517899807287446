"""What ships around the code: compose.yaml and its Dockerfile, the Makefile, CI, the README."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import yaml

from agentstream.settings import documented
from tests.harness import REPO


def _compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def _is_entry_point(command: list[str]) -> bool:
    """``python -m <module>`` with a runnable module, or ``agentstream <component>``."""
    if command[:2] == ["python", "-m"] and len(command) == 3:
        module = command[2]
        spec = importlib.util.find_spec(module)
        if spec is None:
            return False
        return spec.submodule_search_locations is None or importlib.util.find_spec(f"{module}.__main__") is not None
    if command and command[0] == "agentstream":
        return len(command) == 2 and command[1] in ("up", "edge", "agent-runner", "tool-runner", "model")
    return False


CLUSTER = ("nats-1", "nats-2", "nats-3")


def _default(value: str) -> str:
    """What a compose value ``${VAR:-default}`` is when VAR is unset (the value itself otherwise)."""
    found = re.fullmatch(r"\$\{[A-Z_]+:-(.*)\}", value)
    return found.group(1) if found else value


def test_compose_services_run_real_entry_points():
    services = _compose()["services"]
    assert set(services) == {"auth", "nats", "setup", "edge", "agent-runner", "tool-runner", "webhook-sender",
                             "cluster-config", *CLUSTER}
    default = {name for name, svc in services.items() if "profiles" not in svc}
    assert default == {"auth", "nats", "setup", "edge", "agent-runner", "tool-runner", "webhook-sender"}  # one server
    for name in ("edge", "agent-runner", "tool-runner", "webhook-sender"):
        svc = services[name]
        assert _is_entry_point(svc["command"]), f"{name}: {svc['command']} is not an entry point"
        assert _default(svc["environment"]["NATS_URL"]) == "nats://nats:4222"
        assert _default(svc["environment"]["STREAM_REPLICAS"]) == "1"
        assert svc["build"] == "." and svc["image"] == services["edge"]["image"]  # one image
    assert services["edge"]["command"][-1] == "edge"
    assert services["agent-runner"]["command"][-1] == "agent_runner"
    assert services["tool-runner"]["command"][-1] == "tool_runner"
    assert services["webhook-sender"]["command"][-1] == "webhook_sender"
    assert not _is_entry_point(["python", "-m", "no_such_module"])


def test_compose_nats_has_jetstream_and_a_volume():
    compose = _compose()
    nats = compose["services"]["nats"]
    assert nats["image"].startswith("nats:")
    assert "--jetstream" in nats["command"] or "-js" in nats["command"]
    store = nats["command"][nats["command"].index("--store_dir") + 1]
    assert any(v.split(":")[1] == store and v.split(":")[0] in compose["volumes"] for v in nats["volumes"])


def test_compose_runs_nats_with_authentication_and_each_component_with_its_identity(tmp_path):
    compose = _compose()
    services = compose["services"]
    auth, nats, setup = services["auth"], services["nats"], services["setup"]
    # auth writes AGENTSTREAM_DATA_DIR/auth/nats-auth.conf into the auth volume; nats loads it.
    assert auth["command"] == ["agentstream", "nats-config", "--write"]
    data_dir = auth["environment"]["AGENTSTREAM_DATA_DIR"]
    auth_mount = next(v.split(":")[1] for v in auth["volumes"] if v.startswith("auth:"))
    assert auth_mount == f"{data_dir}/auth"
    config = nats["command"][nats["command"].index("--config") + 1]
    nats_mount = next(v.split(":")[1] for v in nats["volumes"] if v.startswith("auth:"))
    assert config == f"{nats_mount}/nats-auth.conf"
    assert nats["depends_on"]["auth"]["condition"] == "service_completed_successfully"
    assert all(p.startswith("127.0.0.1:") for p in nats["ports"]), "NATS is not published on every interface"
    assert setup["environment"]["NATS_CREDS"] == f"{auth_mount}/admin.nk"
    for name, role in (("edge", "edge"), ("agent-runner", "agent-runner"), ("tool-runner", "tool-runner"),
                       ("webhook-sender", "webhook-sender")):
        svc = services[name]
        assert svc["environment"]["NATS_CREDS"] == f"{auth_mount}/{role}.nk"
        assert f"auth:{auth_mount}:ro" in svc["volumes"]
        assert svc["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    # The auth command writes the files the others read.
    env = {**os.environ, "AGENTSTREAM_DATA_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-m", "agentstream", *auth["command"][1:]], env=env, check=True,
                   capture_output=True, cwd=REPO)
    for name in ("nats-auth.conf", "admin.nk", "edge.nk", "agent-runner.nk", "tool-runner.nk", "webhook-sender.nk"):
        assert (tmp_path / "auth" / name).is_file(), name


def test_compose_cluster_profile_runs_three_jetstream_servers_with_the_same_authentication(tmp_path):
    compose = _compose()
    services = compose["services"]
    setup, writer = services["setup"], services["cluster-config"]
    assert writer["profiles"] == ["cluster"] and writer["depends_on"]["auth"]["condition"] == \
        "service_completed_successfully"
    routes = writer["command"][writer["command"].index("--cluster-routes") + 1].split(",")
    assert sorted(r.split(":")[0] for r in routes) == list(CLUSTER)
    names, stores, ports = set(), set(), set()
    for node in CLUSTER:
        svc = services[node]
        command = svc["command"]
        assert svc["profiles"] == ["cluster"] and svc["image"].startswith("nats:")
        assert "--jetstream" in command
        names.add(command[command.index("--name") + 1])
        store = command[command.index("--store_dir") + 1]
        volume = next(v.split(":")[0] for v in svc["volumes"] if v.split(":")[1] == store)
        assert volume in compose["volumes"]
        stores.add(volume)
        auth_mount = next(v.split(":")[1] for v in svc["volumes"] if v.startswith("auth:"))
        assert command[command.index("--config") + 1] == f"{auth_mount}/nats-cluster.conf"
        assert svc["depends_on"]["cluster-config"]["condition"] == "service_completed_successfully"
        assert all(p.startswith("127.0.0.1:") for p in svc["ports"])
        ports.update(p.split(":")[1] for p in svc["ports"])
        assert setup["depends_on"][node]["required"] is False  # present only with the profile
    assert names == set(CLUSTER) and len(stores) == 3 and len(ports) == 3, "each server its own name, store, port"
    assert _default(setup["environment"]["STREAM_REPLICAS"]) == "1"
    # What cluster-config writes is a configuration nats-server accepts, including the client users.
    env = {**os.environ, "AGENTSTREAM_DATA_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-m", "agentstream", *writer["command"][1:]], env=env, check=True,
                   capture_output=True, cwd=REPO)
    auth = tmp_path / "auth"
    config = (auth / "nats-cluster.conf").read_text()
    assert 'include "nats-auth.conf"' in config and '"authorization"' in config
    assert oct((auth / "nats-cluster.conf").stat().st_mode & 0o777) == "0o600"
    password = (auth / "cluster-route.secret").read_text()
    assert config.count(password) == 1 + len(routes)  # the routes' own authorization, used by every route
    from agentstream.natsserver import find_binary

    checked = subprocess.run([find_binary(), "-c", "nats-cluster.conf", "--name", "nats-1", "-js", "-t"],
                             cwd=auth, capture_output=True, text=True)
    assert checked.returncode == 0 and "is valid" in checked.stdout + checked.stderr, checked.stderr
    # Written again (compose runs cluster-config at every `up`), the route password stays.
    subprocess.run([sys.executable, "-m", "agentstream", *writer["command"][1:]], env=env, check=True,
                   capture_output=True, cwd=REPO)
    assert (auth / "cluster-route.secret").read_text() == password


def test_scalable_services_can_be_scaled():
    services = _compose()["services"]
    for name in ("agent-runner", "tool-runner", "webhook-sender"):
        assert "container_name" not in services[name]
        assert "ports" not in services[name]  # fixed host ports would collide when scaled


def test_dockerfile_copies_every_package():
    dockerfile = (REPO / "Dockerfile").read_text()
    for package in ("schemas", "agentstream", "edge", "agent_runner", "tool_runner", "webhook_sender", "agents"):
        assert re.search(rf"^COPY {package} ", dockerfile, re.M), package


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_every_setting_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for env, _default, _help in documented():
        assert f"`{env}`" in readme, f"{env} is not documented in README.md"
    table = readme.split("<!-- settings:start", 1)[1].split("-->", 1)[1].split("<!-- settings:end -->", 1)[0].strip()
    generated = subprocess.run([sys.executable, "-m", "agentstream", "config", "--markdown"],
                               capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
    assert table == generated, "README settings table is stale: paste `agentstream config --markdown`"
