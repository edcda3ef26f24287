"""cluster.yaml, the Ray cluster launcher config, and what it relies on (cluster/, studies/configs/cluster.yaml).

Ray's `prepare_config` only merges the provider's bundled defaults.yaml (a local file) and fills per-node-type
worker counts; `validate_config` checks the merged dict against Ray's ray-schema.json plus a few cross-field
rules. Neither touches AWS: the `offline` fixture proves it by refusing sockets and the AWS SDK. The steps of Ray's
AWS bootstrap (`ray up`) that need no AWS call run here too, with the AWS SDK replaced by empty modules (so any
call would fail): how Ray reads the EFA interfaces, that it creates no IAM profile and no security group. The rest
(subnets, key pairs, launching) needs credentials and is not tested. The schema leaves `node_config` free-form
and knows nothing of pinning, networking or security, so those are checked here; shell snippets of the setup run
in a scratch HOME; cluster/create-aws-resources.sh runs against a stand-in `aws` that records its calls; and the
MLflow server command runs for real (slow) under concurrent writers.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import types
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for
from ray.autoscaler._private.util import prepare_config, validate_config

from harness.config import load_config
from harness.costs import WARN_ABOVE, estimate_costs

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"
CLUSTER_DIR = REPO_ROOT / "cluster"
CREATE_SCRIPT = CLUSTER_DIR / "create-aws-resources.sh"
IAM_POLICY = CLUSTER_DIR / "iam-policy.json"
STUDY_CONFIG = REPO_ROOT / "studies" / "configs" / "cluster.yaml"
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")
# vCPUs and GPUs of the instance types the config may use (AWS instance-type specifications).
INSTANCE_SHAPES = {"m7i.4xlarge": (16, 0), "c7i.8xlarge": (32, 0), "p5.48xlarge": (192, 8)}
P5_NETWORK_CARDS = 32  # EC2 User Guide: P5 instances support up to 32 network cards (3200 Gbps)
PROJECT_DIR = "~/predict-and-reconstruct"
PLACEHOLDERS = ("fs-REPLACE-ME", "subnet-REPLACE-ME", "sg-REPLACE-ME")
SHARED = "/mnt/pnr"
MLFLOW_URI = "http://127.0.0.1:5000"


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


@pytest.fixture
def ray_aws(offline: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """Ray's AWS bootstrap module (ray/autoscaler/_private/aws/config.py) over empty stand-ins for boto3 and botocore:
    it imports, and any AWS call would raise (the stand-ins have no clients)."""

    class Placeholder:
        pass

    stubs = {
        "boto3": {"__version__": "1.44.5"}, "boto3.exceptions": {"ResourceNotExistsError": Exception},
        "boto3.resources": {}, "boto3.resources.base": {"ServiceResource": Placeholder},
        "botocore": {}, "botocore.client": {"BaseClient": Placeholder}, "botocore.config": {"Config": Placeholder},
        "botocore.exceptions": {"ClientError": Exception},
    }
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    sys.modules["botocore"].exceptions = sys.modules["botocore.exceptions"]
    before = set(sys.modules)
    try:
        yield importlib.import_module("ray.autoscaler._private.aws.config")
    finally:
        for name in set(sys.modules) - before:  # Ray's AWS modules bound to the stand-ins: not for later tests
            del sys.modules[name]


def check_with_ray(config: dict[str, Any]) -> dict[str, Any]:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def head_type(config: dict[str, Any]) -> dict[str, Any]:
    return config["available_node_types"][config["head_node_type"]]


def gpu_type(config: dict[str, Any]) -> dict[str, Any]:
    return config["available_node_types"]["worker_h100"]


def node_setup(prepared: dict[str, Any], name: str) -> list[str]:
    """The setup commands a node of type `name` runs: the head's merged list, or the type's own
    worker_setup_commands, which replace the top-level (merged) ones (autoscaler.py, _get_node_type_specific_fields)."""
    if name == prepared["head_node_type"]:
        return prepared["head_setup_commands"]
    return prepared["available_node_types"][name].get("worker_setup_commands", prepared["worker_setup_commands"])


def commands(config: dict[str, Any], keys: tuple[str, ...] = COMMAND_KEYS) -> Iterator[str]:
    for key in keys:
        yield from config.get(key) or []
    for t in config["available_node_types"].values():
        yield from t.get("worker_setup_commands") or []


def ray_requirements(command: str) -> list[str]:
    """The ray requirements (e.g. 'ray[default]==2.60.0', or a bare 'ray') of a `pip install` command."""
    if "pip install" not in command:
        return []
    tokens = shlex.split(command.replace("&&", " "))
    return [t for t in tokens if re.fullmatch(r"ray(\[[a-z,]*\])?([=<>!~@].*)?", t)]


def the_command(cmds: list[str], marker: str) -> str:
    found = [c for c in cmds if marker in c]
    assert len(found) == 1, f"{len(found)} commands contain {marker!r}"
    return found[0]


def bash(script: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a setup snippet as Ray would (bash), in a scratch HOME."""
    full_env = {"PATH": os.environ["PATH"], "HOME": str(home), **(env or {})}
    return subprocess.run(["bash", "-c", script], env=full_env, capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- Ray's own validation


def test_passes_rays_own_validation_offline(raw: dict[str, Any], offline: None):
    prepared = check_with_ray(raw)
    assert prepared["provider"]["type"] == "aws"
    # Ray merged its defaults only where we set nothing: our command lists are the ones it will run.
    assert prepared["head_setup_commands"] == raw["setup_commands"] + raw["head_setup_commands"]
    assert prepared["head_start_ray_commands"] == raw["head_start_ray_commands"]
    # A worker type's own list replaces the merged one: each repeats the shared steps (YAML aliases), in order.
    for name in worker_types(raw):
        own = node_setup(prepared, name)
        assert own[:len(raw["setup_commands"])] == raw["setup_commands"], name


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


def proxy_use_node_id_without_command(c: dict[str, Any]) -> None:
    del c["auth"]["ssh_proxy_command"]


@pytest.mark.parametrize(
    ("breakage", "error", "message"),
    [
        (broken_top_level_key, jsonschema.ValidationError, "'max_worker' was unexpected"),
        (worker_without_resources, jsonschema.ValidationError, "'resources' is a required property"),
        (worker_without_node_config, jsonschema.ValidationError, "'node_config' is a required property"),
        (fractional_gpus, jsonschema.ValidationError, "0.5 is not of type 'integer'"),
        (unknown_head_node_type, ValueError, "`head_node_type` must be one of `available_node_types`"),
        (proxy_use_node_id_without_command, jsonschema.ValidationError, "'ssh_proxy_command' is a required property"),
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


# ---------------------------------------------------------------- Ray's AWS bootstrap, the steps without AWS calls


def test_ray_reads_subnet_and_groups_from_the_efa_interfaces(prepared: dict[str, Any], ray_aws: types.ModuleType):
    config = ray_aws._configure_from_network_interfaces(prepared)
    nc = gpu_type(config)["node_config"]
    head_nc = head_type(config)["node_config"]
    assert nc["SubnetIds"] == head_nc["SubnetIds"] * P5_NETWORK_CARDS  # one per interface, all the same subnet
    assert set(nc["SecurityGroupIds"]) == set(head_nc["SecurityGroupIds"])
    # what Ray refuses: subnets or groups beside the interfaces, or an interface without its own
    for key, value in (("SubnetIds", ["subnet-x"]), ("SecurityGroupIds", ["sg-x"])):
        broken = copy.deepcopy(prepared)
        gpu_type(broken)["node_config"][key] = value
        with pytest.raises(ValueError, match="must ONLY be given in each NetworkInterface"):
            ray_aws._configure_from_network_interfaces(broken)
    broken = copy.deepcopy(prepared)
    del gpu_type(broken)["node_config"]["NetworkInterfaces"][5]["Groups"]
    with pytest.raises(ValueError, match="missing a security group"):
        ray_aws._configure_from_network_interfaces(broken)


def test_ray_creates_no_iam_profile_and_no_security_group(prepared: dict[str, Any], ray_aws: types.ModuleType):
    config = ray_aws._configure_from_network_interfaces(prepared)
    config["head_node"] = {}  # as bootstrap_aws sets it
    # A named profile is used as given: no IAM call (the stand-in SDK would raise), nothing added for the head.
    assert ray_aws._configure_iam_role(copy.deepcopy(config))["head_node"] == {}
    # Every node type names its security group: Ray neither creates one nor adds rules to ours.
    assert ray_aws._configure_security_group(copy.deepcopy(config)) == config
    # What it would have done otherwise: its default group admits SSH from anywhere.
    assert ray_aws._create_default_ssh_inbound_rules()[0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]
    # and without the profile it would create ray-autoscaler-v1 with EC2 and S3 full access
    assert ray_aws.DEFAULT_RAY_INSTANCE_PROFILE == "ray-autoscaler-v1"


# ---------------------------------------------------------------- node types and the autoscaler's choices


def test_every_node_type_declares_its_cpus_and_gpus(raw: dict[str, Any]):
    for name, t in raw["available_node_types"].items():
        vcpus, gpus = INSTANCE_SHAPES[t["node_config"]["InstanceType"]]
        assert {"CPU", "GPU"} <= set(t["resources"]), f"{name}: declare CPU and GPU, not auto-detected"
        assert 0 < t["resources"]["CPU"] <= vcpus, name
        assert t["resources"]["GPU"] == gpus, name


def test_workers_autoscale_from_zero_within_the_cluster_cap(raw: dict[str, Any]):
    workers = worker_types(raw)
    assert set(workers) == {"worker_cpu", "worker_h100"}
    assert gpu_type(raw)["resources"] == {"CPU": 192, "GPU": 8}
    assert workers["worker_cpu"]["resources"]["GPU"] == 0
    for name, t in workers.items():
        assert t["min_workers"] == 0, name
        assert 1 <= t["max_workers"] <= raw["max_workers"], name
    assert sum(t["max_workers"] for t in workers.values()) == raw["max_workers"]


def test_head_takes_small_tasks_and_carries_the_pinning_resource(raw: dict[str, Any]):
    head = head_type(raw)
    assert head["resources"]["CPU"] > 0  # Tune trial drivers ask for {"cpu": 0.01}: CPU 0 would starve them
    assert head["resources"].get("head", 0) >= 1
    assert all("head" not in t["resources"] for t in worker_types(raw).values())


def nodes_for(prepared: dict[str, Any], demand: list[dict[str, float]], existing: dict[str, int]) -> dict[str, int]:
    """The node types Ray's autoscaler (v1, the default) adds for pending `demand`, with its default scorer."""
    scorer = functools.partial(_default_utilization_scorer,
                               node_availability_summary=NodeAvailabilitySummary(node_availabilities={}))
    added, _ = get_nodes_for(prepared["available_node_types"], {prepared["head_node_type"]: 1, **existing},
                             prepared["head_node_type"], prepared["max_workers"], demand, scorer)
    return dict(added)


def test_cpu_work_starts_cpu_nodes_and_gpu_work_p5s(prepared: dict[str, Any]):
    assert nodes_for(prepared, [{"CPU": 1}] * 64, {}) == {"worker_cpu": 2}  # e.g. Ray Data tokenising
    assert nodes_for(prepared, [{"CPU": 8, "GPU": 1}] * 16, {}) == {"worker_h100": 2}  # two 8-GPU trials
    # Ray ranks GPU nodes last for demand without GPUs, but does pick one when no CPU node can be added.
    assert nodes_for(prepared, [{"CPU": 1}] * 8, {"worker_cpu": 4}) == {"worker_h100": 1}


# ---------------------------------------------------------------- network: EFA, placement, private subnet, access


def test_p5_has_an_efa_interface_on_every_network_card(raw: dict[str, Any]):
    nc = gpu_type(raw)["node_config"]
    interfaces = nc["NetworkInterfaces"]
    assert [i["NetworkCardIndex"] for i in interfaces] == list(range(P5_NETWORK_CARDS))
    assert [i["DeviceIndex"] for i in interfaces] == [0] + [1] * (P5_NETWORK_CARDS - 1)
    assert {i["InterfaceType"] for i in interfaces} == {"efa"}
    head_nc = head_type(raw)["node_config"]
    for i in interfaces:
        assert i["SubnetId"] == head_nc["SubnetIds"][0], i  # one private subnet for every node
        assert i["Groups"] == head_nc["SecurityGroupIds"], i
        assert i.get("DeleteOnTermination") is True, i
        assert "AssociatePublicIpAddress" not in i  # EC2 allows none with several interfaces
    assert not {"SubnetId", "SubnetIds", "SecurityGroupIds"} & set(nc)  # Ray raises on these beside interfaces


def test_every_node_in_one_private_subnet_and_one_group(raw: dict[str, Any]):
    assert raw["provider"]["use_internal_ips"] is True  # Ray rejects non-public subnets without it
    for name in ("head_cpu", "worker_cpu"):
        nc = raw["available_node_types"][name]["node_config"]
        assert nc["SubnetIds"] == ["subnet-REPLACE-ME"] and nc["SecurityGroupIds"] == ["sg-REPLACE-ME"], name


def test_p5_nodes_share_a_cluster_placement_group(raw: dict[str, Any]):
    group = gpu_type(raw)["node_config"]["Placement"]["GroupName"]
    calls = run_create_script(ssh_cidr="10.8.0.0/16").calls
    assert f"ec2 create-placement-group --group-name {group} --strategy cluster" in calls
    assert all("Placement" not in t["node_config"] for n, t in raw["available_node_types"].items()
               if n != "worker_h100")


def test_laptop_reaches_the_head_through_ssm_not_an_open_port(raw: dict[str, Any]):
    auth = raw["auth"]
    proxy = shlex.split(auth["ssh_proxy_command"])
    assert proxy[:3] == ["aws", "ssm", "start-session"]
    opts = dict(zip(proxy[3::2], proxy[4::2], strict=True))
    assert opts["--target"] == "%h" and auth["ssh_proxy_use_node_id"] is True  # %h is the instance id
    assert opts["--document-name"] == "AWS-StartSSHSession" and opts["--parameters"] == "portNumber=%p"
    assert opts["--region"] == raw["provider"]["region"]
    assert "ssh_private_key" not in auth


# ---------------------------------------------------------------- images


PUBLIC_PARAMETER = re.compile(r"resolve:ssm:(/aws/service/\S+)")
PINNED_AMI = re.compile(r"ami-[0-9a-f]{8,17}")


def test_images_are_pinned_or_public_parameters_the_head_may_resolve(raw: dict[str, Any]):
    policy = json.loads(IAM_POLICY.read_text())
    ssm = [s for s in policy["Statement"] if "ssm:GetParameters" in json.dumps(s["Action"])]
    assert len(ssm) == 1 and ssm[0]["Resource"] == "arn:aws:ssm:*::parameter/aws/service/*"
    parameters = []
    for name, t in raw["available_node_types"].items():
        image = t["node_config"]["ImageId"]
        match = PUBLIC_PARAMETER.fullmatch(image)
        assert match or PINNED_AMI.fullmatch(image), f"{name}: {image}"
        parameters += [match.group(1)] if match else []
    gpu_image = gpu_type(raw)["node_config"]["ImageId"]
    assert "base-oss-nvidia-driver-gpu-ubuntu-24.04" in gpu_image  # the DLAMI with the EFA driver and aws-ofi-nccl
    # the script prints what each parameter resolves to today (the ids to pin)
    calls = run_create_script().calls
    assert all(any(p in c and "ssm get-parameters" in c for c in calls) for p in parameters)


# ---------------------------------------------------------------- pinned installs


def test_no_nightly_wheel_and_ray_pinned_to_the_laptops_version(prepared: dict[str, Any]):
    for command in commands(prepared):
        for marker in ("nightly", "latest", "ray-wheels", ".dev0", "ray-3.0.0"):
            assert marker not in command, f"{marker!r} in {command!r}"
        for requirement in ray_requirements(command):
            assert requirement.endswith(f"=={ray.__version__}"), f"ray not pinned to {ray.__version__}: {command!r}"
    for name in prepared["available_node_types"]:
        pins = [r for c in node_setup(prepared, name) for r in ray_requirements(c)]
        assert pins == [f"ray[default,train,tune,data]=={ray.__version__}"], name


def torch_pins(cmds: list[str]) -> list[tuple[str, bool]]:
    """(version, uses the CPU wheel index) of each `pip install torch==...`."""
    return [(m.group(1), "/whl/cpu" in c) for c in cmds if "pip install" in c
            for m in re.finditer(r"\btorch==([\w.+]+)", c)]


def test_torch_pinned_cpu_build_on_cpu_nodes_cuda_build_on_gpu_nodes(prepared: dict[str, Any]):
    series = ".".join(version("torch").split(".")[:2])  # the dev venv's pinned CPU build, e.g. 2.13
    for name, t in prepared["available_node_types"].items():
        pins = torch_pins(node_setup(prepared, name))
        cpu_index = t["resources"]["GPU"] == 0  # CPU nodes: the CPU index; PyPI's Linux wheel is the CUDA build
        assert len(pins) == 1 and pins[0][1] is cpu_index, (name, pins)
        assert pins[0][0].startswith(f"{series}."), f"{name}: torch {pins[0][0]} is not the {series}.x series"


def test_project_installed_editable_from_the_synced_checkout(raw: dict[str, Any], prepared: dict[str, Any]):
    assert raw["file_mounts"][PROJECT_DIR] == "."  # `ray up` runs from the repo root
    assert (REPO_ROOT / "pyproject.toml").is_file()
    assert ".gitignore" in raw["rsync_filter"]  # keeps .venv, outputs and checkpoints out of the sync
    for name in prepared["available_node_types"]:
        installs = [c for c in node_setup(prepared, name) if "pip install" in c and " -e " in c]
        assert len(installs) == 1 and installs[0].startswith(f"cd {PROJECT_DIR} && "), name


# ---------------------------------------------------------------- environment: the env file and NCCL over EFA


def test_env_file_is_written_once_and_sources_the_efa_settings(raw: dict[str, Any], tmp_path: Path):
    env_file = raw["setup_commands"][0]
    for _ in range(2):  # setup reruns on every `ray up`: .bashrc gets one line
        assert bash(env_file, tmp_path).returncode == 0
    assert (tmp_path / ".bashrc").read_text().splitlines().count(". ~/pnr-env.sh") == 1
    (tmp_path / "pnr-efa-env.sh").write_text("export FI_PROVIDER=efa\n")
    out = bash('. ~/pnr-env.sh; echo "$PNR_SHARED $RAY_AUTH_MODE $FI_PROVIDER"', tmp_path).stdout
    assert out.split() == [SHARED, "token", "efa"]


@pytest.fixture
def fake_node(tmp_path: Path) -> dict[str, Any]:
    """A scratch HOME, an aws-ofi-nccl install where the DLAMI's EFA installer puts it (lib/<triplet>/), and an `ip`
    that reports ens32 as the default route's interface."""
    ofi = tmp_path / "opt" / "ofi-nccl"
    (ofi / "lib" / "x86_64-linux-gnu").mkdir(parents=True)
    (ofi / "lib" / "x86_64-linux-gnu" / "libnccl-net.so").write_bytes(b"")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ip").write_text("#!/bin/sh\necho 'default via 10.0.0.1 dev ens32 proto dhcp src 10.0.0.5 metric 100'\n")
    (bin_dir / "ip").chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    return {"home": home, "ofi": ofi, "path": f"{bin_dir}:{os.environ['PATH']}"}


def efa_env_command(raw: dict[str, Any]) -> str:
    return the_command(gpu_type(raw)["worker_setup_commands"], "cat > ~/pnr-efa-env.sh")


def test_gpu_nodes_get_nccl_over_efa(raw: dict[str, Any], fake_node: dict[str, Any]):
    script = efa_env_command(raw).replace("/opt/amazon/ofi-nccl", str(fake_node["ofi"]))
    done = bash(script, fake_node["home"], {"PATH": fake_node["path"]})
    assert done.returncode == 0, done.stderr
    out = bash(". ~/pnr-efa-env.sh; env", fake_node["home"], {"LD_LIBRARY_PATH": "/usr/lib/before"}).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert env["FI_PROVIDER"] == "efa" and env["FI_EFA_USE_DEVICE_RDMA"] == "1"
    plugin_dir = fake_node["ofi"] / "lib" / "x86_64-linux-gnu"
    assert env["LD_LIBRARY_PATH"] == f"/opt/amazon/efa/lib:{plugin_dir}:/usr/lib/before"
    assert env["NCCL_SOCKET_IFNAME"] == "ens32" == env["GLOO_SOCKET_IFNAME"]
    # only the GPU type writes it; the CPU types never see FI_PROVIDER=efa
    prepared = prepare_config(copy.deepcopy(raw))
    for name in prepared["available_node_types"]:
        writes = [c for c in node_setup(prepared, name) if "> ~/pnr-efa-env.sh" in c]
        assert len(writes) == (name == "worker_h100"), name


def test_gpu_setup_fails_without_the_plugin_or_efa(raw: dict[str, Any], fake_node: dict[str, Any], tmp_path: Path):
    empty = tmp_path / "no-ofi"
    script = efa_env_command(raw).replace("/opt/amazon/ofi-nccl", str(empty))
    done = bash(script, fake_node["home"], {"PATH": fake_node["path"]})
    assert done.returncode != 0 and "aws-ofi-nccl" in done.stdout
    assert not (fake_node["home"] / "pnr-efa-env.sh").exists()
    checks = gpu_type(raw)["worker_setup_commands"]
    assert the_command(checks, "fi_info").startswith("/opt/amazon/efa/bin/fi_info -p efa -t FI_EP_RDM")
    assert "device_count()" in the_command(checks, "torch.cuda.device_count")


# ---------------------------------------------------------------- services, auth, storage


def mlflow_server_argv(raw: dict[str, Any]) -> list[str]:
    command = the_command(raw["head_start_ray_commands"], "mlflow server")
    argv = shlex.split(command.split(">")[0])
    assert argv[:3] == ["nohup", "mlflow", "server"]
    return argv[1:]


def test_mlflow_server_runs_on_the_head_bound_to_localhost(raw: dict[str, Any]):
    assert all("mlflow server" not in c for t in worker_types(raw).values() for c in t["worker_setup_commands"])
    argv = mlflow_server_argv(raw)
    opts = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert opts["--host"] == "127.0.0.1" and opts["--port"] == "5000"
    assert opts["--workers"] == "1"  # uvicorn restarts workers that miss a 5 s health check while importing
    assert opts["--backend-store-uri"] == "sqlite:///$HOME/mlflow/mlflow.db"  # the head's disk, never NFS
    assert opts["--artifacts-destination"] == "$PNR_SHARED/mlflow-artifacts"
    assert all("0.0.0.0" not in c for c in commands(raw))


def test_run_index_restored_from_and_copied_to_shared_storage(raw: dict[str, Any], tmp_path: Path):
    cmds = raw["head_start_ray_commands"]
    restore, cron = the_command(cmds, 'cp "$PNR_SHARED'), the_command(cmds, "crontab")
    server = next(i for i, c in enumerate(cmds) if "mlflow server" in c)
    assert cmds.index(restore) < server  # restored before the server opens the database
    entry = re.search(r'echo "(.*)"\) \| crontab -', cron).group(1)
    fields = entry.split()
    schedule, (program, script, source, destination) = fields[:5], fields[5:9]
    assert schedule == ["*/5", "*", "*", "*", "*"] and program == "$HOME/pnr-venv/bin/python"
    assert script == f"$HOME/{PROJECT_DIR[2:]}/cluster/mlflow_snapshot.py"
    assert (CLUSTER_DIR / "mlflow_snapshot.py").is_file()
    assert source == "$HOME/mlflow/mlflow.db" and destination == "$PNR_SHARED/mlflow/mlflow.db"
    assert 'cp "$PNR_SHARED/mlflow/mlflow.db" ~/mlflow/mlflow.db' in restore
    # the restore runs: a new head (no database) takes the shared copy; a head with its own keeps it
    home, shared = tmp_path / "home", tmp_path / "shared"
    (home / "mlflow").mkdir(parents=True)
    (shared / "mlflow").mkdir(parents=True)
    (shared / "mlflow" / "mlflow.db").write_text("copy")
    assert bash(restore, home, {"PNR_SHARED": str(shared)}).returncode == 0
    assert (home / "mlflow" / "mlflow.db").read_text() == "copy"
    (home / "mlflow" / "mlflow.db").write_text("live")
    assert bash(restore, home, {"PNR_SHARED": str(shared)}).returncode == 0
    assert (home / "mlflow" / "mlflow.db").read_text() == "live"


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


def test_placeholders_appear_once_and_shared_storage_is_mounted_everywhere(raw: dict[str, Any], text: str):
    for placeholder in PLACEHOLDERS:
        assert text.count(placeholder) == 1, placeholder  # YAML aliases carry it to the other node types
    env_file = raw["setup_commands"][0]
    assert "export PNR_EFS_DNS=fs-REPLACE-ME" in env_file and f"export PNR_SHARED={SHARED}" in env_file
    mount = the_command(raw["setup_commands"], "mount -t nfs4")
    assert '"$PNR_EFS_DNS:/" "$PNR_SHARED"' in mount and ",hard," in mount
    prepared = prepare_config(copy.deepcopy(raw))
    for name in prepared["available_node_types"]:
        assert mount in node_setup(prepared, name), name


# ---------------------------------------------------------------- security: groups, IAM, secrets


@dataclass
class ScriptRun:
    returncode: int
    calls: list[str]  # each `aws` call's arguments, without the leading --region
    stdout: str
    stderr: str


def run_create_script(ssh_cidr: str | None = None) -> ScriptRun:
    """cluster/create-aws-resources.sh against a stand-in `aws` that records each call and answers the queries."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        log = root / "aws.log"
        fake = root / "aws"
        fake.write_text(textwrap.dedent("""\
            #!/usr/bin/env bash
            args="$*"
            printf '%s\\n' "${args#--region us-west-2 }" >> "$AWS_LOG"
            case "$args" in
              *create-security-group*) echo sg-0123456789abcdef0 ;;
              *create-file-system*) echo fs-0123456789abcdef0 ;;
              *describe-file-systems*) echo available ;;
              *"ssm get-parameters"*) printf '/aws/service/x\\tami-0123456789abcdef0\\n' ;;
            esac
            """))
        fake.chmod(0o755)
        env = {"PATH": f"{root}:{os.environ['PATH']}", "HOME": str(root), "AWS_LOG": str(log),
               "VPC_ID": "vpc-0123456789abcdef0", "SUBNET_ID": "subnet-0123456789abcdef0"}
        if ssh_cidr is not None:
            env["SSH_CIDR"] = ssh_cidr
        done = subprocess.run(["bash", str(CREATE_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
        calls = log.read_text().splitlines() if log.exists() else []
    return ScriptRun(returncode=done.returncode, calls=calls, stdout=done.stdout, stderr=done.stderr)


def test_security_group_admits_its_members_and_ssh_from_one_range_only():
    run = run_create_script(ssh_cidr="10.8.0.0/16")
    assert run.returncode == 0, run.stderr
    sg = "sg-0123456789abcdef0"
    self_rule = f"--group-id {sg} --ip-permissions IpProtocol=-1,UserIdGroupPairs=[{{GroupId={sg}}}]"
    ingress = [c for c in run.calls if "authorize-security-group-ingress" in c]
    egress = [c for c in run.calls if "authorize-security-group-egress" in c]
    assert f"ec2 authorize-security-group-ingress {self_rule}" in ingress  # EFA: in and out to the group itself
    assert egress == [f"ec2 authorize-security-group-egress {self_rule}"]
    others = [c for c in ingress if self_rule not in c]
    assert others == [f"ec2 authorize-security-group-ingress --group-id {sg} --ip-permissions "
                      "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=10.8.0.0/16,Description=ssh}]"]
    assert not any("0.0.0.0/0" in c for c in run.calls)
    # the EFS mount target sits in the same group: NFS from the nodes passes the self-referencing rule
    assert any(c.startswith("efs create-mount-target") and f"--security-groups {sg}" in c for c in run.calls)
    assert "sg-REPLACE-ME      -> sg-0123456789abcdef0" in run.stdout


def test_without_ssh_cidr_no_inbound_rule_but_the_groups_own():
    run = run_create_script()
    assert run.returncode == 0, run.stderr
    ingress = [c for c in run.calls if "authorize-security-group-ingress" in c]
    assert len(ingress) == 1 and "UserIdGroupPairs" in ingress[0]


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0"])
def test_ssh_from_the_internet_is_refused(cidr: str):
    run = run_create_script(ssh_cidr=cidr)
    assert run.returncode != 0 and run.calls == []


def test_head_profile_is_the_one_the_script_creates_with_the_scoped_policy(raw: dict[str, Any]):
    profile = head_type(raw)["node_config"]["IamInstanceProfile"]
    assert profile.keys() == {"Name"} and profile["Name"] != "ray-autoscaler-v1"  # not assumed to exist
    calls = run_create_script().calls
    name = profile["Name"]
    assert f"iam create-instance-profile --instance-profile-name {name}" in calls
    assert f"iam add-role-to-instance-profile --instance-profile-name {name} --role-name {name}" in calls
    assert (f"iam put-role-policy --role-name {name} --policy-name ray-autoscaler "
            f"--policy-document file://{IAM_POLICY}") in calls
    assert (f"iam attach-role-policy --role-name {name} "
            "--policy-arn arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore") in calls
    assert all("IamInstanceProfile" not in t["node_config"] for t in worker_types(raw).values())


def test_iam_policy_is_scoped_to_the_clusters_instances(raw: dict[str, Any]):
    policy = json.loads(IAM_POLICY.read_text())
    tag = {"ray-cluster-name": raw["cluster_name"]}
    actions: dict[str, list[dict[str, Any]]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        for action in [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]:
            assert "*" not in action and not action.startswith("iam:"), action  # no wildcard, no PassRole
            actions.setdefault(action, []).append(statement)
    # exactly what Ray 2.60's AWS node provider calls on the head (cache_stopped_nodes off: no start/stop)
    assert set(actions) == {"ec2:DescribeInstances", "ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances",
                            "ssm:GetParameters"}
    assert raw["provider"]["cache_stopped_nodes"] is False
    on_instances = [s for s in actions["ec2:RunInstances"] if s["Resource"] == "arn:aws:ec2:*:*:instance/*"]
    request_tag = {f"aws:RequestTag/{k}": v for k, v in tag.items()}
    assert [s["Condition"]["StringEquals"] for s in on_instances] == [request_tag]
    [terminate] = actions["ec2:TerminateInstances"]
    assert terminate["Condition"]["StringEquals"] == {f"ec2:ResourceTag/{k}": v for k, v in tag.items()}
    assert json.loads((CLUSTER_DIR / "iam-trust-policy.json").read_text())["Statement"][0]["Principal"] == {
        "Service": "ec2.amazonaws.com"}


SECRET_PATTERNS = (r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", r"aws_access_key_id", r"aws_secret_access_key",
                   r"aws_session_token", r"BEGIN [A-Z ]*PRIVATE KEY", r"password\s*[=:]")


@pytest.mark.parametrize("path", [CLUSTER_YAML, STUDY_CONFIG, *sorted(CLUSTER_DIR.iterdir())],
                         ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_credentials_in_the_files(path: Path):
    if path.is_dir() or path.suffix == ".pyc":
        return
    content = path.read_text()
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, content, re.IGNORECASE), pattern


def test_no_secret_keys_in_the_config(raw: dict[str, Any]):
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


# ---------------------------------------------------------------- the study config a submit uses


@pytest.fixture(scope="module")
def study_cfg():
    return load_config(STUDY_CONFIG)


def test_study_config_is_base_yaml_with_the_clusters_paths(study_cfg, raw: dict[str, Any]):
    base = load_config(REPO_ROOT / "studies" / "configs" / "base.yaml")
    for section in ("model", "masking", "objective", "optim"):
        assert getattr(study_cfg, section) == getattr(base, section), f"{section} drifted from base.yaml"
    assert study_cfg.data.seq_len == base.data.seq_len
    assert Path(study_cfg.output_dir).is_relative_to(SHARED)  # every node sees checkpoints and prepared data
    assert study_cfg.tracking.uri == MLFLOW_URI  # the head's server (trial drivers run on the head)
    for location in (study_cfg.data.source, study_cfg.data.tokenizer):
        assert location.startswith(("hf://", f"{SHARED}/")) or re.fullmatch(r"[\w.-]+(/[\w.-]+)?", location)
    assert study_cfg.eval.glue_dir is None or Path(study_cfg.eval.glue_dir).is_relative_to(SHARED)
    mlflow_port = dict(zip(mlflow_server_argv(raw)[2::2], mlflow_server_argv(raw)[3::2], strict=True))["--port"]
    assert study_cfg.tracking.uri.endswith(f":{mlflow_port}")


def test_study_config_fits_one_p5_and_leaves_cpus_for_ray_data(study_cfg, raw: dict[str, Any]):
    t, node = study_cfg.train, gpu_type(raw)["resources"]
    assert t.use_gpu and t.num_workers == node["GPU"]
    assert t.num_workers * t.cpus_per_worker <= node["CPU"] / 2


def test_study_config_intervals_keep_overheads_small(study_cfg):
    """Checkpoints and validations stay under the warning limit at base.yaml's measured step time, which
    TrainConfig's defaults (every 100 steps) would not; the cluster config keeps base.yaml's intervals."""
    estimate = estimate_costs(study_cfg, step_s=0.098)
    assert estimate.warning is None and estimate.overhead_fraction < WARN_ABOVE
    assert study_cfg.train.checkpoint_every % study_cfg.train.eval_every == 0
    assert study_cfg.train.log_every >= 100
    base = load_config(REPO_ROOT / "studies" / "configs" / "base.yaml")
    for key in ("log_every", "eval_every", "checkpoint_every"):
        assert getattr(study_cfg.train, key) == getattr(base.train, key), f"train.{key} drifted from base.yaml"
    defaults = load_config(REPO_ROOT / "studies" / "configs" / "base.yaml",
                           ["train.checkpoint_every=100", "train.eval_every=100"])
    assert estimate_costs(defaults, step_s=0.098).warning is not None


def test_runtime_env_ships_the_code_and_the_cluster_scripts():
    runtime_env = yaml.safe_load((REPO_ROOT / "studies" / "runtime_env.yaml").read_text())
    assert set(runtime_env) == {"excludes"}  # the code only: nodes are set up by cluster.yaml
    assert {".venv/", "outputs/", "mlruns/", "*.db", "*.pem", ".env"} <= set(runtime_env["excludes"])
    assert not any(e.startswith("cluster") for e in runtime_env["excludes"])  # cluster/nccl_check.py runs as a job


def test_the_headers_submit_command_uses_the_study_config(text: str):
    assert "--config studies/configs/cluster.yaml" in text and STUDY_CONFIG.is_file()


# ---------------------------------------------------------------- the MLflow server under concurrent writers (slow)


WRITER = """
import sys, mlflow
uri, experiment, index, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
mlflow.set_tracking_uri(uri)
with mlflow.start_run(experiment_id=experiment, run_name=f"trial-{index}"):
    mlflow.log_params({f"p{i}": i for i in range(20)})
    mlflow.set_tags({"trial": str(index)})
    for step in range(steps):
        mlflow.log_metrics({"train/loss": 1.0 / (step + 1), "perf/tokens_per_s": 1000.0 + step}, step=step)
    mlflow.log_text(f"trial {index}", "notes/trial.txt")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_heads_mlflow_server_takes_concurrent_writers(raw: dict[str, Any], tmp_path: Path):
    """The server command of cluster.yaml (sqlite on the head's disk, artifacts on shared storage, one worker
    process), started for real; 8 trial processes log at once; the run index is copied to shared storage while they
    write, and the copy is complete afterwards."""
    home, shared = tmp_path / "home", tmp_path / "shared"
    (home / "mlflow").mkdir(parents=True)
    (shared / "mlflow-artifacts").mkdir(parents=True)
    port = free_port()
    env = {**os.environ, "HOME": str(home), "PNR_SHARED": str(shared)}
    argv = [os.path.expandvars(a.replace("$HOME", str(home)).replace("$PNR_SHARED", str(shared)))
            for a in mlflow_server_argv(raw)]
    argv[argv.index("--port") + 1] = str(port)
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    log = home / "mlflow" / "server.log"
    with open(log, "w") as log_file:
        server = subprocess.Popen([str(mlflow_cli), *argv[1:]], env=env, stdout=subprocess.DEVNULL, stderr=log_file,
                                  start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    snapshot = importlib.import_module("cluster.mlflow_snapshot").snapshot
    db, copy_path = home / "mlflow" / "mlflow.db", shared / "mlflow" / "mlflow.db"
    try:
        deadline = time.monotonic() + 600  # ~8 s on an idle machine, minutes on a loaded one
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=5)
                break
            except OSError:
                assert server.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "the MLflow server did not answer /health"
                time.sleep(2)
        import mlflow

        client = mlflow.MlflowClient(uri)
        experiment = client.create_experiment("cluster-concurrency")
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, uri, experiment, str(i), "40"], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
        copies = 0
        while any(w.poll() is None for w in writers):  # copy the live database while the trials write
            if db.exists():
                snapshot(db, copy_path)
                copies += 1
            time.sleep(1)
        for w in writers:
            out, err = w.communicate()
            assert w.returncode == 0, err[-2000:]
        assert copies >= 1

        runs = client.search_runs([experiment], max_results=100)
        assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
        for r in runs:
            assert len(client.get_metric_history(r.info.run_id, "train/loss")) == 40
            assert r.data.params["p19"] == "19"
        artifacts = sorted((shared / "mlflow-artifacts").rglob("trial.txt"))
        assert len(artifacts) == 8  # proxied by the server onto shared storage

        assert snapshot(db, copy_path) == 8
        with closing(sqlite3.connect(f"file:{copy_path}?mode=ro", uri=True)) as c:
            assert c.execute("SELECT COUNT(*) FROM runs WHERE status = 'FINISHED'").fetchone()[0] == 8
            assert c.execute("SELECT COUNT(*) FROM metrics WHERE key = 'train/loss'").fetchone()[0] == 8 * 40
        # a fresh, empty database (a new head that did not restore) never replaces the copy
        empty = home / "empty.db"
        sqlite3.connect(empty).close()
        with pytest.raises(RuntimeError, match="holds more runs"):
            snapshot(empty, copy_path)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
