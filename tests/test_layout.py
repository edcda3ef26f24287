"""The import direction: studies -> harness -> {eval, objectives -> models} -> common.

Every import statement of every module is read (top level, inside functions, under TYPE_CHECKING), and each
package is also imported in a fresh interpreter to see what it really pulls in (Ray, MLflow, other packages)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = ("common", "models", "objectives", "eval", "harness", "studies")
# What each package may import besides itself; other project packages, Ray and MLflow fail the test.
ALLOWED = {
    "common": set(),
    "models": {"common"},
    "objectives": {"common", "models"},
    "eval": {"common"},
    "harness": {"common", "models", "objectives", "eval", "ray", "mlflow"},
    "studies": {"common", "models", "objectives", "eval", "harness", "ray", "mlflow"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (absolute imports only: the project has no
    relative ones)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


FILES = sorted(p for package in ALLOWED for p in (REPO / package).rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_import_points_down(path: Path) -> None:
    package = path.relative_to(REPO).parts[0]
    roots = {name.split(".")[0] for name in imports_of(path)}
    wrong = roots & {*PROJECT, "ray", "mlflow"} - ALLOWED[package] - {package}
    assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}; {package}/ may import {ALLOWED[package]}"


def test_no_two_modules_import_each_other() -> None:
    modules = {module_name(p): p for p in FILES}
    graph = {m: {n for n in imports_of(p) if n in modules and n != m} for m, p in modules.items()}
    loops = sorted((a, b) for a in graph for b in graph[a] if a < b and a in graph.get(b, ()))
    assert not loops, f"modules that import each other: {loops}"

    def cycle_from(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in graph[node]:
            if nxt == start:
                return (*seen, nxt)
            if nxt not in seen and nxt > start:  # each cycle is found from its smallest module only
                found = cycle_from(start, nxt, (*seen, nxt))
                if found:
                    return found
        return None

    cycles = [c for m in sorted(graph) if (c := cycle_from(m, m, (m,)))]
    # A package's __init__ and its own modules may form a loop (a registry importing its members); across
    # packages, none.
    crossing = [c for c in cycles if len({m.split(".")[0] for m in c}) > 1]
    assert not crossing, f"import loops across packages: {crossing}"


def test_what_each_package_really_loads() -> None:
    """One fresh interpreter per package, all at once: what importing every module of it pulls in."""
    procs = {}
    for package in ("common", "models", "objectives", "eval"):
        mods = [module_name(p) for p in FILES if p.relative_to(REPO).parts[0] == package]
        code = (f"import sys, importlib; [importlib.import_module(m) for m in {mods!r}]; "
                "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
        procs[package] = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    for package, proc in procs.items():
        loaded = set(proc.communicate()[0].split())
        assert proc.returncode == 0, package
        wrong = loaded & {*PROJECT, "ray", "mlflow"} - ALLOWED[package] - {package}
        assert not wrong, f"importing {package}/ loads {sorted(wrong)}"


# What Ray's processes import to run their part of a run, and what they must not: every extra second is paid per
# run (per trial) before the first step, by processes that queue for the same cores.
PROCESS_MODULES = {
    # every Train worker, before its first step
    "harness.worker": {"mlflow", "sklearn", "scipy.stats", "optuna", "transformers"},
    # ... which the entry imports only once the worker's stream has started
    "harness.worker_entry": {"harness.worker", "harness.step", "torch._dynamo", "eval.quick", "mlflow", "transformers"},
    # a Tune trial's process and the pre-training driver: they read checkpoints and send the evaluation to its task,
    # and run neither the loop (torch's compiler stack) nor the evaluation suite
    "harness.trial": {"harness.worker", "torch._dynamo", "eval.suite", "sklearn", "scipy.stats", "transformers",
                      "matplotlib"},
    "harness.pretrain": {"harness.worker", "torch._dynamo", "eval.suite", "sklearn", "scipy.stats", "transformers"},
    # Train's controller, which unpickles the callbacks and the process group's config before it starts the workers
    "harness.train_callbacks": {"torch", "optuna", "mlflow", "sklearn", "transformers", "harness.tracking"},
    "harness.loopback": {"torch", "optuna", "mlflow"},
    # Train's DatasetManager and Ray Data's SplitCoordinator, which unpickle the stream's plan
    "harness.pickled_call": {"torch", "objectives", "harness.stream", "ray"},
}


@pytest.mark.parametrize("module", sorted(PROCESS_MODULES))
def test_the_modules_ray_processes_import_leave_out_what_they_never_run(module: str) -> None:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.split())
    assert not PROCESS_MODULES[module] & loaded, f"importing {module} loads {sorted(PROCESS_MODULES[module] & loaded)}"
