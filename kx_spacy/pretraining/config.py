"""Loading and validating pretraining configs (confection ``.cfg``, like spaCy's)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

from .errors import PretrainConfigError

DEFAULT_CONFIG_STR = """
[paths]
data_dir = "../shared/data"

[corpus]
on_invalid = "skip"
min_chars = 1
heldout_every = 100
heldout_max_texts = 2000

[corpus.sources]

[vocab]
kind = "chars"
vocab_size = null
min_count = 2
lowercase = true

[model]
hidden_size = 256
num_layers = 4
num_heads = 4
intermediate_size = 1024
max_position = 512
dropout = 0.1

[training]
seed = 0
max_length = 128
batch_size = 32
max_steps = 1000
max_time_minutes = null
lr = 0.0005
weight_decay = 0.01
betas = [0.9, 0.98]
warmup_steps = 100
schedule = "linear"
min_lr_ratio = 0.0
clip_mode = "global_norm"
clip_threshold = 1.0
mlm_probability = 0.15
mask_ratio = 0.8
random_ratio = 0.1
shuffle_buffer = 20000
tokenize_chunk = 1000
eval_every = 500
eval_sequences = 256
checkpoint_every = 500
precision = "auto"
num_threads = 1
save_dtype = "float32"
"""


def _merge(base: Dict, extra: Dict) -> Dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: Optional[Union[str, Path]] = None, overrides: Optional[Dict] = None) -> Dict:
    """Read a pretraining config, fill defaults, apply ``overrides`` (``{"training.lr": 1e-3}``).

    Overrides are applied before ``${section.key}`` references are resolved (confection), so
    ``--paths.data_dir /data`` moves every corpus path.

    path (Optional[Path]): a ``.cfg`` file; None gives the defaults.
    overrides (Optional[Dict]): dotted keys → values, as on spaCy's command line.
    RETURNS (Dict): the resolved config as plain dicts.
    """
    from confection import Config

    overrides = dict(overrides or {})
    try:
        cfg = _to_plain(Config().from_str(DEFAULT_CONFIG_STR))
        if path is not None:
            path = Path(path)
            if not path.exists():
                raise PretrainConfigError(f"Config file {path} does not exist")
            raw = _to_plain(Config().from_disk(path, interpolate=False))
            own = {k: v for k, v in overrides.items() if _has(raw, k)}
            overrides = {k: v for k, v in overrides.items() if k not in own}
            cfg = _merge(cfg, _to_plain(Config().from_disk(path, overrides=own)))
    except PretrainConfigError:
        raise
    except Exception as err:  # confection raises several error types
        raise PretrainConfigError(f"Invalid pretraining config {path}: {err}") from err
    for key, value in overrides.items():
        parts = key.split(".")
        node = cfg
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise PretrainConfigError(f"Override {key}: no section {part!r} in the config")
            node = node[part]
        if parts[-1] not in node and len(parts) < 3:
            raise PretrainConfigError(f"Override {key}: unknown setting (known: {sorted(node)})")
        node[parts[-1]] = value
    validate_config(cfg)
    return cfg


def _has(cfg: Dict, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _to_plain(obj):
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def validate_config(cfg: Dict) -> None:
    t = cfg["training"]
    for key in ("batch_size", "max_steps", "max_length"):
        if not isinstance(t.get(key), int) or t[key] <= 0:
            raise PretrainConfigError(f"training.{key} must be a positive integer, got {t.get(key)!r}")
    if t["max_length"] > cfg["model"]["max_position"]:
        raise PretrainConfigError("training.max_length exceeds model.max_position")
    if t["schedule"] not in ("linear", "cosine", "constant"):
        raise PretrainConfigError(f"training.schedule {t['schedule']!r}: use linear, cosine or constant")
    if t["precision"] not in ("auto", "fp32", "bf16", "fp16"):
        raise PretrainConfigError(f"training.precision {t['precision']!r}: use auto, fp32, bf16 or fp16 (GPU only)")
    if t["save_dtype"] not in ("float32", "float16", "bfloat16"):
        raise PretrainConfigError(f"training.save_dtype {t['save_dtype']!r}: use float32, float16 or bfloat16")
