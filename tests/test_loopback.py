"""The local Ray that the harness starts listens on 127.0.0.1 only.

A real `harness.pretrain` run with two Train workers (so a process group with its store and Gloo's sockets) is
watched from outside: every half second the listening TCP sockets of its process tree (the driver, GCS, raylet,
dashboard, agents, workers) are read from /proc, and which of Train's processes have torch loaded (its controller
sets the process group up without it, harness.loopback). Linux only (/proc/net/tcp).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import REPO, TINY, cli_env

from harness.console import IDLE_WORKERS_KEPT, KNOWN_NOISE, LOCAL_NOISE, is_loopback, usable_cpus

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from /proc")
LISTEN = "0A"  # TCP state in /proc/net/tcp*


def listening_sockets() -> dict[str, str]:
    """Socket inode -> local address of every listening TCP socket on this machine."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != LISTEN:
                continue
            hex_ip = fields[1].split(":")[0]
            # /proc writes an address as 32-bit words in host (little-endian) order.
            raw = b"".join(bytes.fromhex(hex_ip[i:i + 8])[::-1] for i in range(0, len(hex_ip), 8))
            found[fields[9]] = str(ipaddress.ip_address(raw))
    return found


def process_tree(root: int) -> dict[int, str]:
    """pid -> command name of `root` and all its descendants."""
    children: dict[int, list[int]] = {}
    names = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        names[int(entry.name)] = name
        children.setdefault(int(rest[1]), []).append(int(entry.name))
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in names:
            tree[pid] = names[pid]
            todo.extend(children.get(pid, []))
    return tree


def listening_by_process(root: int) -> set[tuple[str, str]]:
    """(command name, local address) of every socket that a process of `root`'s tree listens on."""
    sockets = listening_sockets()
    seen = set()
    for pid, name in process_tree(root).items():
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            inode = target[len("socket:["):-1] if target.startswith("socket:[") else None
            if inode in sockets:
                seen.add((name, sockets[inode]))
    return seen


def maps_torch(pid: int) -> bool | None:
    """Whether a process has torch's library loaded (None: the process is gone)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None


def test_a_local_run_listens_on_loopback_only(tmp_path):
    env = cli_env()
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    run = subprocess.Popen(
        [sys.executable, "-m", "harness.pretrain", "--config", TINY, f"output_dir={tmp_path}",
         "train.num_workers=2", "train.cpus_per_worker=0.5"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[tuple[str, str]] = set()
    processes: set[str] = set()
    torch_loaded: dict[str, set[bool]] = {"TrainContr": set(), "RayTrainWo": set()}
    while run.poll() is None:
        seen |= listening_by_process(run.pid)
        tree = process_tree(run.pid)
        processes |= set(tree.values())
        for pid, name in tree.items():
            for kind, loaded in torch_loaded.items():
                if kind in name and (mapped := maps_torch(pid)) is not None:
                    loaded.add(mapped)
        time.sleep(0.5)
    output = run.stdout.read()
    assert run.returncode == 0, output[-3000:]
    names = {name for name, _ in seen}
    # The cluster's own servers and a Train worker (its process group's store) were all seen listening.
    assert {"gcs_server", "raylet"} <= names, seen
    assert any("RayTrainWo" in name for name in names), seen
    assert all(is_loopback(address) for _, address in seen), sorted(seen)
    # One machine has no node to lose: Train's controller ran, its preemption watcher (a process) did not.
    assert any("TrainContr" in name for name in processes), processes
    assert not any("Preemption" in name for name in processes), processes
    # The workers set their process group up with torch; the controller did it without importing torch.
    assert True in torch_loaded["RayTrainWo"] and torch_loaded["TrainContr"] == {False}, torch_loaded


def test_a_driver_that_joins_a_cluster_keeps_ray_defaults():
    """With RAY_ADDRESS naming a cluster, the harness leaves the cluster's settings alone (its node address, Train's
    preemption watcher, how many idle processes a node keeps) and skips none of the raylet's warnings."""
    local_only = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER",
                  "RAY_num_workers_soft_limit")
    probe = ("import json, os, harness; "
             f"print(json.dumps([os.environ.get(k) for k in {(*local_only, 'RAY_DEDUP_LOGS_SKIP_REGEX')}]))")
    env = {k: v for k, v in os.environ.items() if k not in (*local_only, "RAY_DEDUP_LOGS_SKIP_REGEX")}
    joined, local = (
        json.loads(subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                                  env={**env, "RAY_ADDRESS": address}, check=True).stdout)
        for address in ("10.0.0.5:6379", "local"))
    assert joined == [None, None, None, KNOWN_NOISE]
    kept = str(IDLE_WORKERS_KEPT) if usable_cpus() < IDLE_WORKERS_KEPT else None
    assert local == ["0", "0", kept, f"{KNOWN_NOISE}|{LOCAL_NOISE}"]
