"""The house rules of docs/architecture.md, read from the source: arrows point one way, no import
cycles, and a function-local import only with a ``# local:`` comment saying why."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "hardseg"


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports() -> dict[str, list[tuple[str, ast.AST, bool, Path]]]:
    """module -> [(imported module, node, inside a function, file)], TYPE_CHECKING blocks left out."""
    out: dict[str, list] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module, tree = _module(path), ast.parse(path.read_text())
        found: list = []

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue
                local = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                if isinstance(child, ast.Import):
                    found.extend((a.name, child, in_function, path) for a in child.names)
                elif isinstance(child, ast.ImportFrom):
                    target = _resolve(module, child, path.name == "__init__.py")
                    found.extend((f"{target}.{a.name}", child, in_function, path) for a in child.names)
                    found.append((target, child, in_function, path))
                visit(child, local)

        visit(tree, False)
        out[module] = found
    return out


IMPORTS = _imports()
MODULES = set(IMPORTS)


def _internal(name: str) -> str | None:
    """The hardseg module an imported name belongs to (``hardseg.keys.FAILURE`` -> ``hardseg.keys``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, found in IMPORTS.items():
        for name, *_ in found:
            target = _internal(name)
            if target and target != module and not module.startswith(target + "."):  # a package's own face
                graph[module].add(target)
    return graph


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []
    assert {"hardseg.keys", "hardseg.platform.tracking"} <= graph["hardseg.platform.runs"]  # the graph is read

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("layer, forbidden", [
    ("hardseg.reports", ("hardseg.trainables", "hardseg.platform", "ray", "torch")),
    ("hardseg.data", ("hardseg.trainables", "hardseg.platform", "ray", "mlflow")),
    ("hardseg.models", ("hardseg.trainables", "hardseg.platform", "ray", "mlflow")),
    ("hardseg.strategies", ("hardseg.trainables", "hardseg.platform", "ray", "mlflow")),
    ("hardseg.trainables", ("hardseg.platform", "mlflow")),
    ("hardseg.keys", ("hardseg", "ray", "mlflow", "torch")),
    ("hardseg.robustness", ("hardseg.data", "hardseg.trainables", "torch")),
])
def test_arrows_point_down(layer, forbidden):
    wrong = sorted({f"{m} -> {name}" for m, found in IMPORTS.items() if m == layer or m.startswith(layer + ".")
                    for name, *_ in found
                    if any(name == f or name.startswith(f + ".") for f in forbidden) and not name.startswith(layer)})
    assert not wrong, wrong


def test_function_local_imports_say_why():
    """Each function-local import carries ``# local: <why>`` on its line or on the comment line that opens
    its block of imports."""
    unexplained = []
    for found in IMPORTS.values():
        for _, node, in_function, path in found:
            if not in_function:
                continue
            lines = path.read_text().splitlines()
            row = node.lineno - 1
            while row > 0 and lines[row - 1].strip().startswith(("from ", "import ")):
                row -= 1  # the first import of the block
            said = "# local:" in lines[node.lineno - 1] or (row > 0 and lines[row - 1].strip().startswith("# local:"))
            if not said:
                unexplained.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not sorted(set(unexplained)), sorted(set(unexplained))


def _fresh_modules(*steps: str) -> list[set[str]]:
    """The names in ``sys.modules`` after each of ``steps`` (code run one after the other in one fresh
    interpreter)."""
    script = "import sys\n" + "\n".join(f"{step}\nprint(' '.join(sys.modules))" for step in steps)
    # a user's environment without a tracking URI (MLflow's set_tracking_uri writes one into os.environ, and a test
    # before this one in the same process may have called it): with one, the CLI checks it and so imports MLflow
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**env, "PYTHONPATH": str(SRC)})
    assert out.returncode == 0, out.stderr[-2000:]
    return [set(line.split()) for line in out.stdout.splitlines()[-len(steps):]]


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n in modules)


HEAVY = ("torch", "torchvision", "scipy", "numpy", "ray", "mlflow", "optuna")
DRIVER_ONLY = ("ray.tune", "optuna", "mlflow")


def test_config_and_cli_validation_import_no_torch_ray_mlflow():
    """``hardseg.config`` and what the CLI runs up to a schema error (a bad ``--set``) stay light: a typo
    answers in well under a second instead of after torch, SciPy, Ray and MLflow load (issue 26)."""
    (modules,) = _fresh_modules("import hardseg.config, hardseg.data.config, hardseg.data.registry, hardseg.data\n"
                                "from hardseg.platform.cli import main\n"
                                "assert main(['train', '--set', 'train.epochs=abc']) == 2")
    assert "hardseg.config" in modules and "pydantic" in modules  # the code ran
    assert not _loaded(modules, HEAVY), _loaded(modules, HEAVY)


def test_controller_and_worker_modules_import_nothing_of_the_driver(tmp_path):
    """What Ray Train hands its controller actor for a hardseg run (the run context with the backend
    config and hardseg's callbacks, and the default callbacks holding the backend), unpickled in a fresh
    process as the controller does, needs neither torch (``hardseg.platform.torch_backend``; Ray's own
    ``TorchConfig`` would bring it) nor MLflow nor Ray Tune; a training worker imports the loop and Ray
    Train, not Ray Tune, Optuna or MLflow (issue 26; ``hardseg.platform.train_callbacks``)."""
    blob, ray_blob = tmp_path / "controller.pkl", tmp_path / "ray_config.pkl"
    _fresh_modules(  # the driver: a run's TorchTrainer, and what fit() sends its controller
        "import ray.cloudpickle as cp\n"
        "from ray.train.torch import TorchConfig\n"
        "from hardseg.config import load_config\n"
        "from hardseg.platform.trainer import make_trainer\n"
        f"trainer = make_trainer(load_config(None, ['ray.storage_path={tmp_path / 'runs'}']), '0' * 32, 'sqlite:///x.db')\n"
        f"open({str(blob)!r}, 'wb').write(cp.dumps((trainer.train_run_context, trainer._create_default_callbacks())))\n"
        f"open({str(ray_blob)!r}, 'wb').write(cp.dumps(TorchConfig(backend='gloo')))")
    callbacks, rays, worker = _fresh_modules(
        "import pickle, hardseg.platform.trial_callbacks\n"  # a sweep trial's callbacks go to the controller too
        f"ctx, callbacks = pickle.load(open({str(blob)!r}, 'rb'))",
        f"pickle.load(open({str(ray_blob)!r}, 'rb'))",
        # what train_loop_per_worker imports first
        "import hardseg.trainables.ray_worker, hardseg.trainables.loop")
    assert "ray.train" in callbacks and "hardseg.platform.train_callbacks" in callbacks  # the code ran
    assert "hardseg.platform.torch_backend" in callbacks and "hardseg.trainables.loop" in worker
    assert not _loaded(callbacks, ("torch", "hardseg.data.base", *DRIVER_ONLY)), \
        _loaded(callbacks, ("torch", "hardseg.data.base", *DRIVER_ONLY))
    assert not _loaded(worker, DRIVER_ONLY), _loaded(worker, DRIVER_ONLY)
    assert "torch" in rays  # the control: Ray's TorchConfig imports torch


def test_a_trial_that_drives_a_torchtrainer_loads_no_loop():
    """A sweep trial's process (Tune's actor: Ray Tune loaded) imports the trial module and builds a
    TorchTrainer without the loop, torchvision, the data pipeline or MLflow's model code, which cost it
    seconds per trial; its workers load the loop (issue 26)."""
    [trial] = _fresh_modules("import ray.tune, hardseg.platform.trial\n"
                             "from hardseg.platform.trainer import make_trainer")
    assert "hardseg.platform.trial" in trial and "ray.train.torch" in trial  # the code ran
    heavy = ("torchvision", "hardseg.trainables.loop", "hardseg.data.transforms", "mlflow.pytorch",
             "hardseg.platform.export")
    assert not _loaded(trial, heavy), _loaded(trial, heavy)


def test_a_driver_prepares_runs_and_sweeps_without_torchvision(data_root, tmp_path):
    """``hardseg train`` and ``hardseg sweep`` prepare their runs in the driver (config, strategies against the
    model, the splits' and domains' files: their ``--dry-run`` is that preparation) without torchvision and the
    ``torch._dynamo`` it imports (≈2 s a process): only the processes that train or evaluate load the transforms."""
    from conftest import small_overrides

    sets = [a for s in small_overrides(data_root, **{"tracking.uri": f"sqlite:///{tmp_path / 'm.db'}"})
            for a in ("--set", s)]
    (modules,) = _fresh_modules("from hardseg.platform.cli import main\n"
                                f"assert main(['train', '--dry-run', *{sets!r}]) == 0\n"
                                f"assert main(['sweep', 'quickstart', '--dry-run', *{sets!r}]) == 0")
    assert {"hardseg.platform.prepare", "hardseg.data.domains", "torch"} <= modules  # the code ran
    heavy = ("torchvision", "torch._dynamo", "hardseg.data.transforms")
    assert not _loaded(modules, heavy), _loaded(modules, heavy)
