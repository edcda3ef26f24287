"""cluster.yaml, the Ray cluster launcher config: Ray's own validation (offline) plus the checks it does not make.

Ray's `prepare_config` only merges the provider's bundled defaults.yaml (a local file) and fills per-node-type
worker counts; `validate_config` checks the merged dict against Ray's ray-schema.json plus a few cross-field
rules. Neither touches AWS: the `offline` fixture proves it by refusing sockets and the AWS SDK. (`ray up` itself
later calls AWS to fill subnets, key pairs and the IAM profile: that part needs credentials and is not tested.)
The schema leaves `node_config` free-form and knows nothing of pinning or security, so the rest is checked here.
"""

from __future__ import annotations

import copy
import re
import shlex
import socket
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")
# vCPUs and GPUs of the instance types the config may use (AWS instance-type specifications).
INSTANCE_SHAPES = {"m7i.4xlarge": (16, 0), "p5.48xlarge": (192, 8)}
PROJECT_DIR = "~/predict-and-reconstruct"
SHARED_PLACEHOLDER = "fs-REPLACE-ME"


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture(scope="module")
def raw(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    """The config as `ray up` uses it: merged with Ray's AWS defaults, setup_commands prepended to head/worker's."""
    return prepare_config(copy.deepcopy(raw))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any network connection or AWS SDK import fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access during config validation: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for module in ("boto3", "botocore"):
        monkeypatch.setitem(sys.modules, module, None)  # `import boto3` now raises ImportError


def check_with_ray(config: dict[str, Any]) -> dict[str, Any]:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def head_type(config: dict[str, Any]) -> dict[str, Any]:
    return config["available_node_types"][config["head_node_type"]]


def commands(config: dict[str, Any], keys: tuple[str, ...] = COMMAND_KEYS) -> Iterator[str]:
    for key in keys:
        yield from config.get(key) or []


def ray_requirements(command: str) -> list[str]:
    """The ray requirements (e.g. 'ray[default]==2.60.0', or a bare 'ray') of a `pip install` command."""
    if "pip install" not in command:
        return []
    tokens = shlex.split(command.replace("&&", " "))
    return [t for t in tokens if re.fullmatch(r"ray(\[[a-z,]*\])?([=<>!~@].*)?", t)]


# ---------------------------------------------------------------- Ray's own validation


def test_passes_rays_own_validation_offline(raw: dict[str, Any], offline: None):
    prepared = check_with_ray(raw)
    assert prepared["provider"]["type"] == "aws"
    # Ray merged its defaults only where we set nothing: our command lists are the ones it will run.
    assert prepared["head_setup_commands"] == raw["setup_commands"] + raw["head_setup_commands"]
    assert prepared["worker_setup_commands"] == raw["setup_commands"] + raw["worker_setup_commands"]
    assert prepared["head_start_ray_commands"] == raw["head_start_ray_commands"]


def broken_top_level_key(c: dict[str, Any]) -> None:
    c["max_worker"] = c.pop("max_workers")  # misspelled: the schema allows no unknown top-level key


def worker_without_resources(c: dict[str, Any]) -> None:
    for t in worker_types(c).values():
        del t["resources"]


def worker_without_node_config(c: dict[str, Any]) -> None:
    for t in worker_types(c).values():
        del t["node_config"]


def fractional_gpus(c: dict[str, Any]) -> None:
    for t in worker_types(c).values():
        t["resources"]["GPU"] = 0.5  # node resources must be integers


def unknown_head_node_type(c: dict[str, Any]) -> None:
    c["head_node_type"] = "ray.head.default"  # not among available_node_types


@pytest.mark.parametrize(
    ("breakage", "error", "message"),
    [
        (broken_top_level_key, jsonschema.ValidationError, "'max_worker' was unexpected"),
        (worker_without_resources, jsonschema.ValidationError, "'resources' is a required property"),
        (worker_without_node_config, jsonschema.ValidationError, "'node_config' is a required property"),
        (fractional_gpus, jsonschema.ValidationError, "0.5 is not of type 'integer'"),
        (unknown_head_node_type, ValueError, "`head_node_type` must be one of `available_node_types`"),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
def test_rays_validation_rejects_a_broken_copy(raw: dict[str, Any], offline: None,
                                               breakage: Callable[[dict[str, Any]], None],
                                               error: type[Exception], message: str):
    broken = copy.deepcopy(raw)
    breakage(broken)
    with pytest.raises(Exception) as excinfo:
        check_with_ray(broken)
    assert type(excinfo.value) is error, f"{type(excinfo.value).__name__}: {excinfo.value}"
    assert message in str(excinfo.value)


def test_node_config_typos_pass_rays_schema_so_they_are_checked_here(raw: dict[str, Any], offline: None):
    broken = copy.deepcopy(raw)
    for t in broken["available_node_types"].values():
        t["node_config"]["InstanceTyp"] = t["node_config"].pop("InstanceType")
    check_with_ray(broken)  # node_config is free-form for Ray: a typo only fails at `ray up`, on AWS
    for name, t in raw["available_node_types"].items():
        assert t["node_config"].get("InstanceType") in INSTANCE_SHAPES, name
        assert t["node_config"].get("ImageId"), f"{name}: no ImageId (Ray's default AMI is Ubuntu 18.04)"


# ---------------------------------------------------------------- resources


def test_every_node_type_declares_its_cpus_and_gpus(raw: dict[str, Any]):
    for name, t in raw["available_node_types"].items():
        vcpus, gpus = INSTANCE_SHAPES[t["node_config"]["InstanceType"]]
        assert {"CPU", "GPU"} <= set(t["resources"]), f"{name}: declare CPU and GPU, not auto-detected"
        assert 0 < t["resources"]["CPU"] <= vcpus, name
        assert t["resources"]["GPU"] == gpus, name


def test_gpu_workers_autoscale_from_zero(raw: dict[str, Any]):
    workers = worker_types(raw)
    assert workers
    for name, t in workers.items():
        assert t["node_config"]["InstanceType"] == "p5.48xlarge", name
        assert t["resources"] == {"CPU": 192, "GPU": 8}, name
        assert t["min_workers"] == 0, name
        assert 1 <= t["max_workers"] <= raw["max_workers"], name


def test_head_takes_small_tasks_and_carries_the_pinning_resource(raw: dict[str, Any]):
    head = head_type(raw)
    assert head["resources"]["CPU"] > 0  # Tune trial drivers ask for {"cpu": 0.01}: CPU 0 would starve them
    assert head["resources"].get("head", 0) >= 1
    assert all("head" not in t["resources"] for t in worker_types(raw).values())


# ---------------------------------------------------------------- pinned installs


def test_no_nightly_wheel_and_ray_pinned_to_the_laptops_version(prepared: dict[str, Any]):
    for command in commands(prepared):
        for marker in ("nightly", "latest", "ray-wheels", ".dev0", "ray-3.0.0"):
            assert marker not in command, f"{marker!r} in {command!r}"
        for requirement in ray_requirements(command):
            assert requirement.endswith(f"=={ray.__version__}"), f"ray not pinned to {ray.__version__}: {command!r}"
    for key in ("head_setup_commands", "worker_setup_commands"):
        pins = [r for c in prepared[key] for r in ray_requirements(c)]
        assert pins == [f"ray[default,train,tune,data]=={ray.__version__}"], key


def torch_pins(cmds: list[str]) -> list[tuple[str, bool]]:
    """(version, uses the CPU wheel index) of each `pip install torch==...`."""
    return [(m.group(1), "/whl/cpu" in c) for c in cmds if "pip install" in c
            for m in re.finditer(r"\btorch==([\w.+]+)", c)]


def test_torch_pinned_cpu_build_on_head_cuda_build_on_workers(prepared: dict[str, Any]):
    series = ".".join(version("torch").split(".")[:2])  # the dev venv's pinned CPU build, e.g. 2.13
    head, workers = torch_pins(prepared["head_setup_commands"]), torch_pins(prepared["worker_setup_commands"])
    assert len(head) == 1 and head[0][1], head  # CPU index on the CPU head
    assert len(workers) == 1 and not workers[0][1], workers  # PyPI's Linux wheel is the CUDA build
    for pinned, _ in head + workers:
        assert pinned.startswith(f"{series}."), f"torch {pinned} is not the {series}.x series"


def test_project_installed_editable_from_the_synced_checkout(raw: dict[str, Any], prepared: dict[str, Any]):
    assert raw["file_mounts"][PROJECT_DIR] == "."  # `ray up` runs from the repo root
    assert (REPO_ROOT / "pyproject.toml").is_file()
    assert ".gitignore" in raw["rsync_filter"]  # keeps .venv, outputs and checkpoints out of the sync
    for key in ("head_setup_commands", "worker_setup_commands"):
        installs = [c for c in prepared[key] if "pip install" in c and " -e " in c]
        assert len(installs) == 1 and installs[0].startswith(f"cd {PROJECT_DIR} && "), key


# ---------------------------------------------------------------- services, auth, storage, secrets


def test_mlflow_server_runs_on_the_head_bound_to_localhost(raw: dict[str, Any]):
    servers = [c for c in commands(raw) if "mlflow server" in c]
    assert len(servers) == 1 and servers[0] in raw["head_start_ray_commands"]
    argv = shlex.split(servers[0].split(">")[0])
    opts = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert opts["--host"] == "127.0.0.1"
    assert opts["--port"] == "5000"
    assert opts["--backend-store-uri"] == "sqlite:///$HOME/mlflow/mlflow.db"  # head's disk, absolute path
    assert opts["--artifacts-destination"].startswith("$PNR_SHARED/")
    assert all("0.0.0.0" not in c for c in commands(raw))


def test_ray_start_commands_and_token_authentication(raw: dict[str, Any]):
    head = [c for c in raw["head_start_ray_commands"] if "ray start" in c]
    workers = [c for c in raw["worker_start_ray_commands"] if "ray start" in c]
    assert len(head) == 1 and len(workers) == 1
    for flag in ("--head", "--port=6379", "--dashboard-host=127.0.0.1",
                 "--autoscaling-config=~/ray_bootstrap_config.yaml", "RAY_AUTH_MODE=token"):
        assert flag in head[0].split(), flag
    for flag in ("--address=$RAY_HEAD_IP:6379", "RAY_AUTH_MODE=token"):
        assert flag in workers[0].split(), flag
    # Every node gets the laptop's token, so head, workers and `ray job submit` share it.
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_shared_storage_is_one_placeholder_mounted_on_every_node(raw: dict[str, Any], text: str):
    assert text.count(SHARED_PLACEHOLDER) == 1
    env_file = raw["setup_commands"][0]  # setup_commands run on the head and on every worker
    assert f"export PNR_EFS_DNS={SHARED_PLACEHOLDER}" in env_file
    assert "export PNR_SHARED=/mnt/pnr" in env_file
    assert any('"$PNR_EFS_DNS:/" "$PNR_SHARED"' in c for c in raw["setup_commands"])


def test_no_credentials_in_the_file(raw: dict[str, Any], text: str):
    for pattern in (r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", r"aws_access_key_id", r"aws_secret_access_key",
                    r"aws_session_token", r"BEGIN [A-Z ]*PRIVATE KEY"):
        assert not re.search(pattern, text, re.IGNORECASE), pattern

    def keys(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield str(k)
                yield from keys(v)
        elif isinstance(node, list):
            for v in node:
                yield from keys(v)

    suspicious = [k for k in keys(raw) if re.search(r"secret|password|access_key|token|credential", k, re.I)]
    assert suspicious == ["~/.ray/auth_token"]  # a file mount path: the token file itself stays on the laptop
    assert head_type(raw)["node_config"]["IamInstanceProfile"].keys() == {"Name"}  # by name only
    assert all("IamInstanceProfile" not in t["node_config"] for t in worker_types(raw).values())
    assert "ssh_private_key" not in raw["auth"]
