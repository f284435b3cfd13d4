"""Run configuration: typed, validated, loaded from YAML with ``--set`` overrides.

A configuration is plain data (pydantic models, ``extra="forbid"``), so an
unknown key or a wrong type is rejected before anything runs. Errors are raised
as :class:`hardseg.errors.ConfigError` with one line naming the key to fix.
Registry lookups (model, dataset, strategy names) are validated against the
live registries, so third-party strategies are accepted once installed.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, Field, ValidationError, ValidationInfo, field_serializer, field_validator,
                      model_validator)

from hardseg.data.config import AugmentConfig, DataConfig, ImgScale, SyntheticConfig
from hardseg.data.registry import get_dataset
from hardseg.errors import ConfigError, DataError, HardsegError, one_line
from hardseg.strict import Strict

__all__ = [
    "AugmentConfig", "DataConfig", "EvalConfig", "HardsegConfig", "LossConfig", "ModelConfig", "RayConfig",
    "Strict", "SyntheticConfig", "TTAConfig", "TrackingConfig", "TrainConfig", "apply_overrides", "check_eval",
    "check_registered_names", "check_schedule", "config_tree", "default_config_path", "flatten", "load_config",
    "recipe_names", "resolve_recipe", "section", "validate_config",
]


class ModelConfig(Strict):
    name: str = "tiny_seg"
    aux: bool = Field(False, description="add the auxiliary head where the architecture has one")
    aux_weight: float = Field(0.4, ge=0, description="weight of the aux head's CE, the same for every strategy")
    width: int = Field(16, ge=4, le=256, description="base width of the tiny_seg model")
    norm: Literal["batch", "group"] = Field("batch", description="tiny_seg normalisation; group is batch-size independent")
    sync_bn: bool = Field(False, description="convert BatchNorm to SyncBatchNorm for multi-GPU DDP "
                                             "(a no-op on CPU/gloo and with one worker)")
    encoder: str | None = Field(None, description="encoder of smp:* models: resnet18, resnet50, mobilenet_v2, mit_b0, "
                                "tu-<timm name>, ...; None = resnet50 (Segformer: mit_b0)")
    pretrained: str = Field("none", description="encoder weights: none, imagenet (the TORCH_HOME/HF_HOME caches, "
                            "downloaded on a miss) or a .pth/.pt/.safetensors file")
    weights_mirror: str | None = Field(None, description="base URL of an internal mirror of the weight files "
                                       "(torchvision's paths and the Hugging Face Hub's); env HARDSEG_WEIGHTS_MIRROR")
    weights_timeout_s: float = Field(30, gt=0, description="seconds to wait for the weights server to answer")
    init_from: str | None = Field(None, description="whole-model warm start: a hardseg model_export.pt, "
                                  "runs:/RUN_ID/model/model_export.pt, or an mmsegmentation checkpoint (mmseg "
                                  "networks)")
    init_skip: list[str] = Field(default_factory=list, description="layers of init_from left out (fresh), by "
                                 "state-dict name; another class count: [decode_head.conv_seg, "
                                 "auxiliary_head.conv_seg]")
    align_corners: bool | None = Field(None, description="bilinear resizes of the mmseg networks (mmseg's "
                                       "align_corners: False, True in its 769x769 configs); None = False")

    @field_validator("pretrained", mode="before")
    @classmethod
    def _pretrained(cls, v: Any) -> Any:
        if v is None or v is False:
            return "none"
        if not isinstance(v, str):
            return v
        if not v:
            raise ValueError("use none, imagenet or a weights file")
        return "none" if v.lower() in ("none", "null") else ("imagenet" if v.lower() == "imagenet" else v)


class LossConfig(Strict):
    """How the per-pixel losses are averaged (docs/strategies.md §0)."""

    average: Literal["valid", "all"] = Field(
        "valid", description="CE, focal, cb_ce, OHEM and the aux head: mean over non-ignored pixels (valid) or over "
        "all pixels (all: mmsegmentation 0.22.1, the HL paper's table; HL with uniform weights then equals CE)")


DEFAULT_EPOCHS = 16


class TrainConfig(Strict):
    """Optimisation settings for the per-worker loop."""

    iters: int | None = Field(None, ge=1, description="the run's length in iterations (mmsegmentation's "
                              "IterBasedRunner); the alternative to train.epochs, exactly one is set")
    epochs: int | None = Field(None, ge=1, validate_default=True,
                               description=f"the run's length in passes over the data; {DEFAULT_EPOCHS} when "
                               "neither train.epochs nor train.iters is set")
    batch_size: int = Field(16, ge=1, description="images per worker and step")
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    poly_power: float = Field(0.9, ge=0)
    min_lr: float = Field(0.0, ge=0, description="the poly schedule's floor: (lr - min_lr)(1 - it/iters)^power + min_lr")
    warmup_epochs: float = Field(0.0, ge=0, description="epoch schedules: linear warm-up from 0 over this many epochs")
    warmup_iters: int = Field(0, ge=0, description="linear warm-up over this many iterations, from "
                              "warmup_ratio x the scheduled lr (mmsegmentation's warmup='linear')")
    warmup_ratio: float = Field(0.1, gt=0, le=1, description="the warm-up's first lr as a fraction of the scheduled lr")
    amp: Literal["auto", "off", "fp16", "bf16", "on"] = Field(
        "auto", description="mixed precision: auto (fp16 on CUDA, off on CPU), off (fp32, as mmseg's fp32 "
        "recipes), fp16 (with a gradient scaler), bf16, or on (fp16 on CUDA, bf16 on CPU)")
    channels_last: Literal["auto", "on", "off"] = "auto"
    num_threads: int | None = Field(None, ge=1, description="torch threads per worker; None = CPUs per worker")
    shuffle: bool = True
    eval_every: int = Field(1, ge=1, description="epochs between evaluations (epoch schedules; "
                            "train.eval_interval wins when set)")
    eval_interval: int | None = Field(None, ge=1, description="evaluations every this many epochs or iterations "
                                      "(the schedule's unit); None = eval_every (epochs) or a tenth of train.iters")
    checkpoint_interval: int | None = Field(None, ge=1, description="checkpoints every this many epochs or "
                                            "iterations; None = every epoch (epochs) or every evaluation (iters)")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept on disk; the best model is kept once "
                                  "besides them")
    log_interval: int = Field(50, ge=0, description="iterations between per-iteration logs (losses, lr, times, "
                              "memory) and console lines; 0 = none")

    @field_validator("epochs", mode="before")
    @classmethod
    def _default_length(cls, v: Any, info: Any) -> Any:
        """Neither length set: the default number of epochs (both set: :func:`check_schedule` says so)."""
        return DEFAULT_EPOCHS if v is None and info.data.get("iters") is None else v

    @field_validator("amp", "channels_last", mode="before")
    @classmethod
    def _yaml_booleans(cls, v: Any) -> Any:
        """YAML reads ``on``/``off`` as booleans; accept them as the switch values."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    log_images_every: int = Field(1, ge=0, description="epochs between logged prediction images; 0 = never")
    cudnn_benchmark: bool = Field(True, description="let cuDNN pick the fastest convolution algorithms (CUDA; "
                                                    "off when train.deterministic)")
    deterministic: bool = Field(False, description="deterministic algorithms where PyTorch has them (warns where "
                                                   "it has none, e.g. CUDA bilinear upsampling's backward)")


class TTAConfig(Strict):
    """Test-time augmentation as mmsegmentation's ``aug_test``: softmax probabilities averaged over scales
    (and horizontal flips) at the input's size."""

    scales: list[float] = Field(default_factory=lambda: [1.0], min_length=1, description="resize ratios of each "
                                "input, e.g. [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] (mmseg's img_ratios)")
    flip: bool = Field(False, description="also each flipped input, its probabilities flipped back")
    img_scale: ImgScale = Field(
        None, description="the (width, height) the scales multiply, keeping each image's aspect ratio (mmseg's "
        "test img_scale: [2049, 1025] in its 769x769 Cityscapes configs, [1024, 512] for GTA -> Cityscapes); None "
        "= each image's own size")

    @field_validator("scales")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        bad = [s for s in v if not s > 0]
        if bad:
            raise ValueError(f"every scale must be above 0 (got {bad[0]}), e.g. eval.tta.scales=[0.75,1.0,1.25]")
        return v


class EvalConfig(Strict):
    """Evaluation batching and inference mode (docs: ``mode: slide`` for large images)."""

    batch_size: int | None = Field(None, ge=1, description="images per evaluation batch; None = train.batch_size")
    mode: Literal["whole", "slide"] = Field("whole", description="whole image at once, or sliding windows whose "
                                                                 "logits are averaged where they overlap")
    crop: tuple[int, int] | None = Field(None, description="slide window (height, width), e.g. [512, 1024]; "
                                                           "None = data.augment.crop")
    stride: tuple[int, int] | None = Field(None, description="slide step (height, width); None = 2/3 of the window")
    tta: TTAConfig | None = Field(None, description="test-time augmentation {scales: [...], flip: true}; None = one "
                                  "pass (every evaluation: val, domains, test, hardseg evaluate and predict)")

    @field_validator("crop", "stride", mode="before")
    @classmethod
    def _square(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) else v

    @field_validator("crop", "stride")
    @classmethod
    def _positive(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and min(v) < 1:
            raise ValueError("must be positive (height, width)")
        return v


class RayConfig(Strict):
    address: str | None = Field(None, description="Ray cluster address; None starts or joins a local Ray")
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    gpus_per_worker: float = Field(1.0, gt=0, description="GPUs per training worker when ray.use_gpu; a fraction "
                                                         "(e.g. 0.5) lets trials share a GPU, above 1 it must be whole")
    max_failures: int = Field(2, ge=0, description="retries of a run's workers (Ray Train) and of a sweep trial "
                              "(Ray Tune) from the last checkpoint when a worker or its node dies")
    storage_path: str = Field("hardseg-runs", description="checkpoints and results; a local path or a URI")
    resource_timeout_s: float = Field(300, gt=0, description="on an autoscaling cluster, how long a run or sweep "
                                      "waits for the workers' CPUs/GPUs to appear before it fails")

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("above 1 GPU per worker, the count must be whole (Ray shares only fractions of one GPU)")
        return v


class TrackingConfig(Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; None = MLFLOW_TRACKING_URI or ./mlruns/mlflow.db")
    experiment: str = "hardseg"
    system_metrics: bool = Field(False, description="MLflow's system-metrics monitor on the run (CPU, memory; "
                                 "GPU with pynvml)")
    log_model: bool = Field(True, description="log each run's best model in MLflow's pytorch format under model/ "
                            "(mlflow.pytorch.load_model('runs:/<id>/model'))")
    optuna_storage: str | None = Field(None, description="Optuna RDB URL for sweeps; None = optuna.db next to a "
                                       "SQLite MLflow store (use PostgreSQL on a multi-node cluster)")


class HardsegConfig(Strict):
    """One training run: everything ``hardseg train`` needs. It is not named RunConfig because Ray Train and Tune
    have a RunConfig of their own."""

    name: str = "train"
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    loss: LossConfig = LossConfig()
    strategies: list[str] = Field(default_factory=lambda: ["ce"])
    strategy_params: dict[str, Any] = Field(
        default_factory=dict, description="strategy name -> its hyperparameters; once validated, each entry is "
        "that strategy's own settings model (HLConfig, ...), holding what was set")
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _typed_strategy_params(self, info: ValidationInfo) -> HardsegConfig:
        """Each ``strategy_params`` entry becomes its strategy's settings model (``HLConfig``, ...), validated here,
        once; an entry typed already (a config changed through :func:`config_tree`) is kept as it is. The error
        names the key (``info.context["source"]`` starts it; :func:`validate_config` sets it)."""
        if all(isinstance(v, BaseModel) for v in self.strategy_params.values()):
            return self
        # local: the strategies' models need torch; the schema above answers a bad --set without it
        from hardseg.strategies.objective import parse_strategy_params

        try:
            typed = parse_strategy_params(self.strategies, self.strategy_params,
                                          (info.context or {}).get("source", "config"))
        except ConfigError as err:  # a ValueError, which pydantic would wrap in its own error
            raise StrategySettingsError(str(err)) from None
        self.strategy_params.update(typed)
        return self

    @field_serializer("strategy_params")
    def _as_given(self, params: dict[str, Any], info: Any) -> dict[str, Any]:
        """The keys that were set, as set (``exclude_unset``): the YAML, ``config.yaml`` and MLflow params show the
        user's settings, not every default."""
        return {k: v.model_dump(mode=info.mode, exclude_unset=True) if isinstance(v, BaseModel) else v
                for k, v in params.items()}

    def flat(self) -> dict[str, Any]:
        """The configuration as ``{"train.lr": 0.003, ...}`` (MLflow params)."""
        return flatten(self.model_dump(mode="json"))


class StrategySettingsError(HardsegError):
    """A ``strategy_params`` entry that its strategy's settings model rejects, raised through pydantic's validation
    unwrapped (it is no ValueError); :func:`validate_config` raises it as the :class:`ConfigError` it was."""


def config_tree(cfg: HardsegConfig) -> dict[str, Any]:
    """``cfg`` as a tree to change and validate again: plain data, except each strategy's settings, which stay
    typed, so that validating the changed tree validates only the settings a change reaches (:func:`section`)."""
    tree = cfg.model_dump(mode="json")
    tree["strategy_params"] = dict(cfg.strategy_params)
    return tree


def section(node: dict[str, Any], part: str) -> Any:
    """``node[part]``, created as ``{}`` when absent, to set a key in: a strategy's typed settings become the
    mapping of what was set in them (validated again with the change); anything else that is no mapping is
    returned as it is, for the caller to refuse."""
    child = node.setdefault(part, {})
    if isinstance(child, BaseModel):
        child = node[part] = child.model_dump(exclude_unset=True)
    return child


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        return f"{source}: unknown key '{key}'" + (f" (check the keys allowed under '{parent}')" if parent else "")
    if first["type"] == "literal_error":
        allowed = first.get("ctx", {}).get("expected", "")
        return f"{source}: invalid value {first.get('input')!r} for '{key}'; allowed: {allowed}"
    return f"{source}: invalid value {first.get('input')!r} for '{key}': {first['msg']}"


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=3")
    key, raw = item.split("=", 1)
    if not key:
        raise ConfigError(f"--set {item!r}: the key is empty")
    return key.split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config tree."""
    for item in overrides:
        path, value = _parse_override(item)
        node = tree
        for part in path[:-1]:
            child = section(node, part)
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return tree


RECIPE_PREFIX = "recipe:"


def recipe_names() -> list[str]:
    """The shipped recipes (``hardseg/recipes/*.yaml``): configs that mirror a row of the HL paper, each
    naming its source config (docs/usage.md "Recipes")."""
    return sorted(p.name[:-5] for p in (resources.files("hardseg") / "recipes").iterdir() if p.name.endswith(".yaml"))


def resolve_recipe(config: str | None) -> str | None:
    """``recipe:NAME`` → the shipped recipe's file; anything else unchanged.

    Raises:
        ConfigError: no shipped recipe has that name (the line lists them).
    """
    if config is None or not str(config).startswith(RECIPE_PREFIX):
        return config
    name = str(config)[len(RECIPE_PREFIX):]
    if name not in recipe_names():
        raise ConfigError(f"unknown recipe '{name}'; shipped recipes: {', '.join(recipe_names())} "
                          f"(e.g. hardseg train recipe:{recipe_names()[0]})")
    return str(resources.files("hardseg") / "recipes" / f"{name}.yaml")


def default_config_path() -> Path:
    """The embedded default: train the small model on the synthetic benchmark."""
    return Path(str(resources.files("hardseg") / "configs" / "default.yaml"))


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> HardsegConfig:
    """Load and validate a run configuration.

    Args:
        path: a YAML file or ``recipe:NAME`` (:func:`resolve_recipe`); None loads the embedded default.
        overrides: ``KEY=VALUE`` strings applied on top (``train.epochs=3``).

    Raises:
        ConfigError: one line naming the key to fix.
    """
    source = str(path) if path is not None else "default config"
    path = resolve_recipe(path)
    file = Path(path) if path is not None else default_config_path()
    if not file.is_file():
        raise ConfigError(f"config file not found: {file} (pass an existing YAML file)")
    try:
        tree = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({one_line(exc, typed=False)})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    tree = apply_overrides(tree, list(overrides or []))
    return validate_config(tree, source)


def validate_config(tree: dict[str, Any], source: str = "config") -> HardsegConfig:
    """Validate a raw tree: schema, then names against the registries."""
    try:
        cfg = HardsegConfig.model_validate(tree, context={"source": source})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    except StrategySettingsError as err:
        raise ConfigError(str(err)) from None
    check_registered_names(cfg, source)
    check_eval(cfg, source)
    if cfg.model.init_skip and not cfg.model.init_from:
        raise ConfigError(f"{source}: model.init_skip applies to model.init_from; set model.init_from or remove "
                          "model.init_skip")
    check_schedule(cfg, source)
    return cfg


def check_schedule(cfg: HardsegConfig, source: str = "config") -> None:
    """Exactly one of ``train.epochs`` and ``train.iters``; intervals and warm-up no longer than the run."""
    t = cfg.train
    if t.epochs is not None and t.iters is not None:
        raise ConfigError(f"{source}: set train.epochs or train.iters, not both (epochs={t.epochs}, iters={t.iters}); "
                          f"to switch a config file's unit, also --set the other to null")
    length, unit = (t.iters, "train.iters") if t.iters is not None else (t.epochs, "train.epochs")
    for key in ("eval_interval", "checkpoint_interval"):
        value = getattr(t, key)
        if value is not None and value > length:
            raise ConfigError(f"{source}: train.{key}={value} is longer than the run ({unit}={length}); "
                              f"give at most {length}")
    if t.iters is not None and t.warmup_iters >= t.iters:
        raise ConfigError(f"{source}: train.warmup_iters={t.warmup_iters} must be shorter than train.iters={t.iters}")


def check_eval(cfg: HardsegConfig, source: str = "config") -> None:
    """Sliding-window evaluation needs a window: ``eval.crop`` or, by default, ``data.augment.crop``."""
    if cfg.eval.mode == "slide" and cfg.eval.crop is None and cfg.data.augment.crop is None:
        raise ConfigError(f"{source}: eval.mode=slide needs a window; set eval.crop (or data.augment.crop), "
                          f"e.g. eval.crop=[512,1024]")


def check_registered_names(cfg: HardsegConfig, source: str = "config") -> None:
    """Model, dataset and strategy names must exist; the strategies must compose (their settings were typed with
    the schema, :meth:`HardsegConfig._typed_strategy_params`)."""
    # local: the registries' built-ins need torch; the schema above answers a bad --set without it
    from hardseg.models import check_model_name
    from hardseg.strategies import validate_strategies

    try:
        get_dataset(cfg.data.dataset)
    except DataError as err:  # "unknown dataset 'x'; allowed: ..." or a broken plugin's reason
        raise ConfigError(f"{source}: {err} (key 'data.dataset')") from None
    check_model_name(cfg.model.name, source)
    validate_strategies(cfg.strategies, cfg.strategy_params, source=source)
