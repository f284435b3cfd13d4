"""Bring your own model: a plugin package's ``hardseg.models`` entry point, trained by ``hardseg train``
with 2 DDP workers (the driver and every Ray worker resolve it); a plugin that fails to import is one line.

The plugin is "installed" without pip: a module and a ``*.dist-info`` folder with ``entry_points.txt``
on the subprocess's PYTHONPATH, which importlib.metadata reads as an installed distribution (Ray
workers inherit the environment).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import fresh_registry, small_overrides, write_plugin_distribution

pytestmark = [pytest.mark.ray, pytest.mark.slow]
SRC = Path(__file__).resolve().parents[1] / "src"
HARDSEG = [sys.executable, "-m", "hardseg.platform.cli"]

PLUGIN = textwrap.dedent('''
    """A tiny network for hardseg, as a third-party package would ship it (docs/models.md)."""
    import torch.nn as nn

    from hardseg.models import SegModel


    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True))


    class DemoNet(SegModel):
        def __init__(self, num_classes, aux=False, **options):
            super().__init__()
            self.num_classes = num_classes
            self.stem, self.body = block(3, 8), block(8, 16)
            self.feature_channels = {"s2": 8, "s4": 16}
            self.feature_strides = {"s2": 2, "s4": 4}
            self.decode_head = self.new_head(num_classes)

        def encode(self, x):
            s2 = self.stem(x)
            return {"s2": s2, "s4": self.body(s2)}

        def head_input(self, features):
            return features["s4"]

        def new_head(self, out_channels):
            return nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, out_channels, 1))

        def encoder_module(self):
            return nn.ModuleDict({"stem": self.stem, "body": self.body})
''')


def install_plugin(root: Path) -> Path:
    return write_plugin_distribution(root, "hardseg_demo_plugin", PLUGIN, "hardseg.models",
                                     ["demo_net = hardseg_demo_plugin:DemoNet",
                                      "broken_net = hardseg_not_installed.net:Broken"])


def run_cli(args: list[str], plugins: Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(plugins)]), "RAY_TRAIN_V2_ENABLED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([*HARDSEG, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def plugin_registry(tmp_path, monkeypatch):
    """The plugin visible to this process too, with the model registry re-reading entry points."""
    import hardseg.models as models

    plugins = install_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(plugins))
    fresh_registry(monkeypatch, models.MODELS)
    return plugins


def test_broken_plugin_is_one_line_exit_2_and_nothing_logged(plugin_registry, data_root, unopened_sqlite_uri,
                                                              capsys):
    from hardseg.platform.cli import main as cli

    rc = cli(["train", *sum((["--set", o] for o in small_overrides(data_root)), []),
              "--set", "model.name=broken_net", "--tracking-uri", unopened_sqlite_uri])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "model plugin 'broken_net' (hardseg_not_installed.net:Broken) failed to import: ModuleNotFoundError" \
        in lines[0]
    assert not Path(unopened_sqlite_uri[len("sqlite:///"):]).exists()  # the store was not even opened


def test_plugin_model_trains_with_two_ddp_workers(plugin_registry, data_root, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    sets = sum((["--set", o] for o in small_overrides(data_root, **{
        "train.epochs": 1, "data.eval_domains": "[]", "ray.num_workers": 2, "strategies": "[hl]",
        "ray.storage_path": str(tmp_path / "runs"), "train.log_images_every": 0, "tracking.log_model": "true"})), [])
    ok = run_cli(["train", *sets, "--set", "model.name=demo_net", "--tracking-uri", uri], plugin_registry, tmp_path)
    assert ok.returncode == 0, (ok.stdout[-3000:], ok.stderr[-3000:])
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert run.data.tags["hardseg.model"] == "demo_net" and run.data.params["ray.num_workers"] == "2"
    assert 0.0 <= run.data.metrics["val/miou"] <= 1.0 and "train/hl/hl" in run.data.metrics
    # its MLflow model (the plugin's class, pickled) loads where the plugin is installed
    import mlflow.pytorch

    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    assert type(model.model).__name__ == "DemoNet" and model.metadata["architecture"] == "demo_net"
