"""Weights: ``model.pretrained`` (the encoder) and ``model.init_from`` (the whole model).

* ``model.pretrained: imagenet`` resolves the provider's ImageNet file from the
  local caches and, on a miss, downloads it the provider's own way (docs/models.md,
  "Pretrained weights"): smp encoders from the Hugging Face Hub (repository
  ``smp-hub/<encoder>.imagenet``) and ``tu-<timm name>`` encoders from timm's
  Hub repository, into the Hugging Face cache (``HF_HOME``); torchvision
  backbones from the weight enum's URL with ``torch.hub`` (hash-checked) into
  ``$TORCH_HOME/hub/checkpoints/``; each with a progress bar.
  ``model.weights_mirror`` (or ``HARDSEG_WEIGHTS_MIRROR``) puts an internal
  mirror's base URL in place of ``https://download.pytorch.org`` and
  ``https://huggingface.co``, with the same file paths. Offline
  (``HF_HUB_OFFLINE=1``, or no answer) a file that is not cached is a
  ConfigError naming the file and the folder to put it in; a mirror that does
  not answer within ``model.weights_timeout_s`` is one naming the URL.
* ``model.pretrained: PATH`` reads an encoder state dict (``.pth``/``.pt`` with
  ``torch.load(weights_only=True)``, or ``.safetensors``); a hardseg export
  (``model_export.pt``: ``{"model": state_dict, ...}``) works too, its
  encoder's part is taken.
* ``model.init_from: PATH`` loads a hardseg export into the whole inference
  model (the warm start of fine-tuning), or an mmsegmentation checkpoint into
  an mmseg network and HL's branch (:mod:`hardseg.models.mmseg_checkpoint`);
  ``runs:/RUN_ID/...`` URIs are downloaded on the driver first
  (:mod:`hardseg.platform.prepare`), into ``ray.storage_path``; a storage URI
  (``s3://``, ``file://``) is read through pyarrow's filesystems, so every worker
  of a cluster reads the same file. ``model.init_skip`` names layers left out
  (fine-tuning on another class count: the classifiers).

Keys are matched after stripping the one prefix under which most of the
file's keys name the target's parameters (``encoder.``, ``backbone.``,
``module.``, ``net.`` …). A shape mismatch is an error naming the first bad
key; missing and unexpected keys are counted in a :class:`LoadReport` that the
driver prints once and logs as MLflow tags (never silently dropped).
"""

from __future__ import annotations

import io
import os
import socket
import urllib.error
import urllib.request
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download, hf_hub_url
from safetensors.torch import load_file
from torch import Tensor

from hardseg import keys
from hardseg.data.normalisation import IMAGENET_MEAN, IMAGENET_STD
from hardseg.errors import ConfigError, one_line
from hardseg.models.mmseg import MODEL_NAMES as MMSEG_MODELS
from hardseg.models.mmseg_checkpoint import check_skip, is_mmseg_layout, is_skipped, load_mmseg
from hardseg.models.smp import default_encoder

TORCHVISION_BACKBONES = {  # model name -> (weights enum, attribute): torchvision's default weights_backbone
    "fcn_resnet50": ("ResNet50_Weights", "IMAGENET1K_V1"),
    "deeplabv3_resnet50": ("ResNet50_Weights", "IMAGENET1K_V1"),
    "deeplabv3_mobilenet_v3_large": ("MobileNet_V3_Large_Weights", "IMAGENET1K_V1"),
    "lraspp_mobilenet_v3_large": ("MobileNet_V3_Large_Weights", "IMAGENET1K_V1"),
}
OPENMMLAB_V1C = {  # mmcv's open-mmlab://resnet{50,101}_v1c, the ImageNet weights of mmseg's *_r{50,101}-d8 configs
    50: "https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth",
    101: "https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth",
}
MIRROR_ENV = "HARDSEG_WEIGHTS_MIRROR"
TORCH_SERVER = "https://download.pytorch.org"
DEFAULT_TIMEOUT_S = 30.0


@dataclass
class LoadReport:
    """What a weights file gave a module: loaded, missing and unexpected keys."""

    key: str  # the config key: model.pretrained or model.init_from
    source: str
    prefix: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    outside: int = 0  # the file's keys not under ``prefix`` (e.g. a whole export's decoder)
    skipped: list[str] = field(default_factory=list)  # the file's keys left out by model.init_skip

    def summary(self) -> str:
        def first(keys: list[str]) -> str:
            return f" (first: {', '.join(keys[:3])})" if keys else ""

        return (f"{self.key}: loaded {self.loaded} tensors from {self.source}"
                + (f" under prefix '{self.prefix}'" if self.prefix else "")
                + f"; missing {len(self.missing)}{first(self.missing)}; unexpected {len(self.unexpected)}"
                + f"{first(self.unexpected)}" + (f"; {self.outside} keys outside the prefix ignored" if self.outside else "")
                + (f"; skipped {len(self.skipped)} (model.init_skip){first(self.skipped)}" if self.skipped else ""))

    def tags(self) -> dict[str, str]:
        fields = {"source": self.source, "loaded": str(self.loaded), "missing_keys": str(len(self.missing)),
                  "unexpected_keys": str(len(self.unexpected)), "missing_first": ",".join(self.missing[:5]),
                  "unexpected_first": ",".join(self.unexpected[:5])}
        if self.skipped:
            fields["skipped_keys"] = str(len(self.skipped))
        setting = self.key.split(".")[-1]
        return {keys.WEIGHTS_REPORT.format(setting=setting, field=f): v for f, v in fields.items()}


def read_state_dict(path: str | os.PathLike, key: str) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or a ``torch.save``d state dict (``weights_only=True``).

    A dict holding the state dict under ``model`` or ``state_dict`` (hardseg
    exports and checkpoints, many training scripts) is unwrapped.
    """
    if "://" in str(path):
        return _read_uri(str(path), key)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{key}: weights file not found: {p} (give a .pth, .pt or .safetensors file)")
    try:
        if p.suffix == ".safetensors":
            state: Any = load_file(str(p), device="cpu")
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = one_line(exc, typed=False)
        raise ConfigError(f"{key}: cannot read weights file {p}: {msg}") from None
    return _tensors(state, key, str(p))


def _tensors(state: Any, key: str, source: str) -> dict[str, Tensor]:
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        raise ConfigError(f"{key}: {source} holds no state dict (expected a mapping of parameter names to tensors)")
    return tensors


def _read_uri(uri: str, key: str) -> dict[str, Tensor]:
    """A weights file on storage (``s3://``, ``gs://``, ``file://``), read through pyarrow's filesystems."""
    import pyarrow.fs  # local: pyarrow's filesystems only for weights on storage

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        with fs.open_input_stream(path) as f:
            data = f.read()
    except Exception as exc:
        msg = one_line(exc, typed=False)
        raise ConfigError(f"{key}: cannot read {uri}: {msg}") from None
    try:
        if uri.endswith(".safetensors"):
            from safetensors.torch import load as load_bytes  # local: safetensors' bytes reader, this case only

            state: Any = load_bytes(data)
        else:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = one_line(exc, typed=False)
        raise ConfigError(f"{key}: cannot read weights file {uri}: {msg}") from None
    return _tensors(state, key, uri)


def match_prefix(keys: list[str], target: set[str]) -> tuple[str, int]:
    """The prefix whose stripping makes most of ``keys`` name keys of ``target`` (ties: the shorter)."""
    counts: Counter[str] = Counter()
    for k in keys:
        starts = [0] + [i + 1 for i, ch in enumerate(k) if ch == "."]
        for i in starts:
            if k[i:] in target:
                counts[k[:i]] += 1
                break
    if not counts:
        return "", 0
    prefix, n = max(counts.items(), key=lambda kv: (kv[1], -len(kv[0])))
    return prefix, n


def load_into(module: nn.Module, state: dict[str, Tensor], key: str, source: str, what: str,
              load: bool = True, skip: list[str] | tuple[str, ...] = ()) -> LoadReport:
    """Check ``state`` against ``module`` and (``load``) copy it in; ConfigError on no match or a shape mismatch.

    ``skip``: layers (``model.init_skip``, the module's own key names) neither loaded nor counted missing."""
    own = module.state_dict()
    prefix, n = match_prefix(list(state), set(own))
    if n == 0:
        raise ConfigError(f"{key}: no tensor of {source} matches a parameter of the {what} (file key "
                          f"'{next(iter(state))}', {what} key '{next(iter(own), '-')}'); is it this model's weights?")
    mine = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    skipped = [prefix + k for k in mine if is_skipped(k, list(skip))]
    mine = {k: v for k, v in mine.items() if not is_skipped(k, list(skip))}
    own = {k: v for k, v in own.items() if not is_skipped(k, list(skip))}
    bad = [k for k in own if k in mine and tuple(mine[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise ConfigError(f"{key}: shape mismatch at '{prefix}{k}' of {source}: {tuple(mine[k].shape)} in the file, "
                          f"{tuple(own[k].shape)} in the {what} ({len(bad)} keys differ)")
    report = LoadReport(key, source, prefix, loaded=sum(k in own for k in mine),
                        missing=[k for k in own if k not in mine], unexpected=[k for k in mine if k not in own],
                        outside=len(state) - len(mine) - len(skipped), skipped=skipped)
    if load:
        module.load_state_dict({k: v for k, v in mine.items() if k in own}, strict=False)
    return report


# -- model.pretrained: imagenet ------------------------------------------------------------------------------
def hf_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment says now (HF_HUB_CACHE, else HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(hf_constants.HF_HUB_CACHE)


def mirror_of(model_cfg: Any) -> str | None:
    """``model.weights_mirror``, else ``HARDSEG_WEIGHTS_MIRROR``, else None (the providers' own servers)."""
    mirror = getattr(model_cfg, "weights_mirror", None) or os.environ.get(MIRROR_ENV) or None
    return mirror.rstrip("/") if mirror else None


def offline() -> bool:
    """``HF_HUB_OFFLINE=1``: the Hub's switch, which hardseg applies to torchvision's files too."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@contextmanager
def _socket_timeout(seconds: float):
    """torch.hub's download has no timeout of its own: a stalled server would hang the run."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _answers(url: str, timeout: float) -> str | None:
    """None when the server at ``url`` answers a HEAD request (any HTTP status), else why not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return "no answer within the timeout" if isinstance(reason, (socket.timeout, TimeoutError)) else str(reason)


def _unreachable(url: str, why: str, mirror: str | None, timeout: float, name: str, folder: Path,
                 how: str) -> ConfigError:
    if mirror:
        return ConfigError(f"model.weights_mirror: {url} did not answer ({why}, model.weights_timeout_s="
                           f"{timeout:g}); check the mirror's URL, or stage {name} into {folder} with `{how}`")
    return ConfigError(f"model.pretrained=imagenet: {name} is not cached in {folder} and {url} cannot be reached "
                       f"({why}); stage it there with `{how}` on a machine with internet (or set "
                       f"model.weights_mirror), or set model.pretrained=PATH")


def _fetch_hint(model_name: str, encoder: str | None, folder: Path) -> str:
    root = folder.parent.parent if folder.name == "checkpoints" else folder.parent
    return f"hardseg weights fetch --model {model_name}" + (f" --encoder {encoder}" if encoder else "") + \
        f" --to {root}"


def _hf_file(repo_id: str, filenames: tuple[str, ...], revision: str | None, model_name: str, encoder: str,
             mirror: str | None, timeout: float) -> Path:
    """The file from the Hugging Face cache, downloaded by ``hf_hub_download`` on a miss (a mirror: its endpoint)."""
    cache = hf_cache_dir()
    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, filename=name, revision=revision, cache_dir=cache,
                                        local_files_only=True))
        except Exception:  # not in the cache
            continue
    how = _fetch_hint(model_name, encoder, cache)
    if offline():
        rev = f" --revision {revision}" if revision else ""
        raise ConfigError(f"model.pretrained=imagenet: the ImageNet weights of encoder '{encoder}' are not cached and "
                          f"HF_HUB_OFFLINE is set; put {filenames[0]} of https://huggingface.co/{repo_id} into the "
                          f"Hugging Face cache {cache} (`{how}`, or `hf download {repo_id} {filenames[0]}{rev}` with "
                          f"HF_HOME set as for training), or save it anywhere and set model.pretrained=PATH")
    endpoint = mirror or hf_constants.ENDPOINT
    url = hf_hub_url(repo_id, filenames[0], revision=revision, endpoint=endpoint)
    why = _answers(url, timeout)
    if why is not None:
        raise _unreachable(url, why, mirror, timeout, filenames[0], cache, how)
    last: Exception | None = None
    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, filename=name, revision=revision, cache_dir=cache,
                                        endpoint=endpoint, etag_timeout=timeout))
        except Exception as exc:  # not on the server under this name (timm: safetensors or bin), or refused
            last = exc
    msg = one_line(last, typed=False)
    raise ConfigError(f"model.pretrained=imagenet: cannot download {filenames[0]} of {repo_id} from {endpoint}: "
                      f"{msg}; stage it into {cache} with `{how}`, or set model.pretrained=PATH")


def torch_hub_file(url: str, mirror: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                   how: str = "hardseg weights fetch", check_hash: bool = True) -> Path:
    """``$TORCH_HOME/hub/checkpoints/<file of url>``, downloaded on a miss with ``torch.hub``, which checks the
    SHA-256 prefix in the file's name (``resnet50-0676ba61.pth``; unless ``check_hash`` is False); a mirror
    replaces the URL's server."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    name = os.path.basename(url)
    path = folder / name
    if path.is_file():
        return path
    if offline():
        raise ConfigError(f"model.pretrained=imagenet: {name} is not cached and HF_HUB_OFFLINE is set; put {url} "
                          f"into {folder} (TORCH_HOME; `{how}`), or set model.pretrained=PATH")
    source = f"{mirror}/{url.split('://', 1)[1].split('/', 1)[1]}" if mirror else url
    why = _answers(source, timeout)
    if why is not None:
        raise _unreachable(source, why, mirror, timeout, name, folder, how)
    folder.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(name)
    try:
        with _socket_timeout(timeout):
            torch.hub.download_url_to_file(source, str(path), hash_prefix=match.group(1) if match and check_hash else None,
                                           progress=True)
    except Exception as exc:  # HTTP error, a stalled transfer, or a file whose hash does not match its name
        msg = one_line(exc, typed=False)
        raise ConfigError(f"model.pretrained=imagenet: cannot download {name} from {source}: {msg}") from None
    return path


def imagenet_file(model_name: str, encoder: str | None, mirror: str | None = None,
                  timeout: float = DEFAULT_TIMEOUT_S) -> Path:
    """The ImageNet weights file of the model's backbone/encoder, downloaded on a cache miss (module docstring)."""
    if model_name.startswith("smp:"):
        encoder = encoder or default_encoder(model_name[4:])
        if encoder.startswith("tu-"):
            import timm  # local: timm adds 0.4-0.9 s; tu-* encoders only

            cfg = timm.models.get_pretrained_cfg(encoder[3:])
            if cfg is None or not getattr(cfg, "hf_hub_id", None):
                raise ConfigError(f"model.pretrained=imagenet: timm has no pretrained weights for '{encoder[3:]}' "
                                  "(give a tag, e.g. tu-resnet18.a1_in1k, or model.pretrained=PATH)")
            return _hf_file(cfg.hf_hub_id, ("model.safetensors", "pytorch_model.bin"), None, model_name, encoder,
                            mirror, timeout)
        import segmentation_models_pytorch as smp  # local: smp+timm add 0.3-1.2 s; smp:* models only

        settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {})
        if "imagenet" not in settings:
            raise ConfigError(f"model.pretrained=imagenet: smp has no ImageNet weights for encoder '{encoder}' "
                              f"(it has: {', '.join(settings) or 'none'}); use model.pretrained=PATH")
        s = settings["imagenet"]
        return _hf_file(s["repo_id"], ("model.safetensors",), s.get("revision"), model_name, encoder, mirror, timeout)
    if model_name in TORCHVISION_BACKBONES:
        import torchvision.models as tvm  # local: torchvision (with torch._dynamo) costs ~2 s; this model only

        enum, member = TORCHVISION_BACKBONES[model_name]
        url = getattr(getattr(tvm, enum), member).url
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        return torch_hub_file(url, mirror, timeout, _fetch_hint(model_name, None, folder))
    if model_name in MMSEG_MODELS:
        # open-mmlab's file names carry a digest of mmcv's own convention, not checked here (mmcv's load_url
        # does not check it either); the file is read in mmcv's layout (stem.*, layer*.*; fc.* reported)
        url = OPENMMLAB_V1C[int(model_name.split("_")[-2][1:])]
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        return torch_hub_file(url, mirror, timeout, _fetch_hint(model_name, None, folder), check_hash=False)
    raise ConfigError(f"model.pretrained=imagenet: model '{model_name}' has no ImageNet weights; use "
                      "model.pretrained=PATH (an encoder state dict) or none")


def fetch_weights(model_name: str, encoder: str | None, to: Path, mirror: str | None = None,
                  timeout: float = DEFAULT_TIMEOUT_S) -> Path:
    """``hardseg weights fetch``: the ImageNet file into ``to`` laid out as both TORCH_HOME and HF_HOME
    (``to/hub/checkpoints/`` for torchvision, ``to/hub/models--…`` for the Hub), for shared storage."""
    to = Path(to).resolve()
    saved = {k: os.environ.get(k) for k in ("TORCH_HOME", "HF_HOME", "HF_HUB_CACHE")}
    os.environ.update(TORCH_HOME=str(to), HF_HOME=str(to))
    os.environ.pop("HF_HUB_CACHE", None)
    try:
        return imagenet_file(model_name, encoder, mirror, timeout)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def weights_normalisation(model_name: str, encoder: str | None, pretrained: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the input normalisation the weights were trained with (ImageNet's unless timm says otherwise)."""
    if pretrained == "imagenet" and model_name.startswith("smp:") and encoder and encoder.startswith("tu-"):
        import timm  # local: timm adds 0.4-0.9 s; tu-* encoders only

        cfg = timm.models.get_pretrained_cfg(encoder[3:])
        if cfg is not None:
            return tuple(cfg.mean), tuple(cfg.std)
    return IMAGENET_MEAN, IMAGENET_STD


def load_weights(net: nn.Module, inference: nn.Module, model_cfg: Any, load: bool = True,
                 training: nn.Module | None = None) -> list[LoadReport]:
    """Apply ``model.pretrained`` to ``net``'s encoder, then ``model.init_from`` to the inference model
    (an mmseg checkpoint: to ``net`` and HL's branch in ``training``, the TrainingModel).

    ``load=False`` only checks (files, keys, shapes), as the driver does on a
    meta-device model before any MLflow run exists.
    """
    reports = []
    pretrained = model_cfg.pretrained
    if pretrained != "none":
        path = (imagenet_file(model_cfg.name, model_cfg.encoder, mirror_of(model_cfg),
                              getattr(model_cfg, "weights_timeout_s", DEFAULT_TIMEOUT_S))
                if pretrained == "imagenet" else Path(pretrained))
        mean, std = weights_normalisation(model_cfg.name, model_cfg.encoder, pretrained)
        if (tuple(mean), tuple(std)) != (IMAGENET_MEAN, IMAGENET_STD):
            raise ConfigError(f"model.pretrained=imagenet: the weights of '{model_cfg.encoder}' expect inputs "
                              f"normalised with mean {mean} and std {std}, hardseg's data pipeline uses ImageNet's "
                              f"{IMAGENET_MEAN}/{IMAGENET_STD}; pick an encoder trained with ImageNet normalisation")
        try:
            encoder = net.encoder_module()
        except NotImplementedError as err:
            raise ConfigError(f"model.pretrained: {err}") from None
        reports.append(load_into(encoder, read_state_dict(path, "model.pretrained"), "model.pretrained", str(path),
                                 "encoder", load))
    skip = list(getattr(model_cfg, "init_skip", None) or [])
    if model_cfg.init_from:
        source = str(model_cfg.init_from)
        state = read_state_dict(model_cfg.init_from, "model.init_from")
        if is_mmseg_layout(state):
            got = load_mmseg(net, state, source, model_cfg.name, skip, load, training)
            reports.append(LoadReport("model.init_from", source, "", got.loaded, got.missing, got.unexpected,
                                      skipped=got.skipped))
        else:
            check_skip(skip, list(inference.state_dict()), model_cfg.name)
            reports.append(load_into(inference, state, "model.init_from", source, "model", load, skip))
    return reports
