"""Run and member configuration: defaults, allowed values, YAML loading and overrides.

A run config has four sections::

    data:      where the images come from and how validation is carved out
    defaults:  training options shared by every member (the origin's recipe unless set)
    members:   a list of members; each entry overrides ``defaults`` (name required)
    evaluate / explain / slices: analysis options

Every option is declared once, in the ``*_SPEC`` tables below, with its default and its
check; unknown keys are rejected with the list of valid ones.
"""

import copy
import json
import re
from pathlib import Path

import yaml

from .errors import ConfigError

__all__ = ["MEMBER_SPEC", "load_config", "parse_config", "apply_overrides", "member_configs", "config_hash"]


def _one_of(*values):
    return (lambda v: v in values), f"one of {list(values)}"


def _int_range(low, high=None):
    def check(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)

    return check, f"an int >= {low}" + (f" and <= {high}" if high is not None else "")


def _float_range(low, high, *, low_open=False, high_open=False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return above and below

    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return check, f"a number in {left}{low}, {high}{right}"


def _optional(spec):
    check, text = spec
    return (lambda v: v is None or check(v)), f"null or {text}"


def _bool():
    return (lambda v: isinstance(v, bool)), "true or false"


def _weights():
    return (lambda v: v is None or v == "imagenet" or isinstance(v, str)), "'imagenet', null, or a weights file path"


def _augment():
    def check(v):
        return (
            isinstance(v, dict)
            and set(v) <= {"rotation", "flip", "contrast"}
            and 0 <= float(v.get("rotation", 0)) <= 0.5
            and isinstance(v.get("flip", False), bool)
            and 0 <= float(v.get("contrast", 0)) <= 1
        )

    return check, "a mapping with rotation in [0, 0.5], flip true/false, contrast in [0, 1]"


def _units():
    return (
        lambda v: isinstance(v, (list, tuple)) and all(isinstance(u, int) and u > 0 for u in v),
        "a list of positive ints",
    )


# name -> (default, (check, description)). Defaults are the origin project's recipe.
MEMBER_SPEC = {
    "name": (None, ((lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v) is not None
                     and v not in (".", "..")),
                    "a name of letters, digits, '_', '-' or '.'")),
    "backbone": ("resnet50", _one_of("resnet50", "densenet121", "efficientnetb0")),
    "weights": ("imagenet", _weights()),
    "image_size": (224, _int_range(32, 1024)),
    "seed": (0, _int_range(0)),
    "balancing": ("smote", _one_of("smote", "class_weight", "oversample", "none")),
    "bootstrap": (False, _bool()),
    "augment": ({"rotation": 0.03, "flip": True, "contrast": 0.1}, _augment()),
    "dense_units": ([512, 128], _units()),
    "dropout": (0.5, _float_range(0, 1, high_open=True)),
    "l2": (1e-4, _float_range(0, 1)),
    "bn_momentum": (None, _optional(_float_range(0, 1, low_open=True, high_open=True))),
    "learning_rate": (1e-4, _float_range(0, 1, low_open=True)),
    "batch_size": (32, _int_range(1, 4096)),
    "epochs_frozen": (25, _int_range(0)),
    "epochs_finetune": (10, _int_range(0)),
    "finetune_learning_rate": (1e-5, _float_range(0, 1, low_open=True)),
    "finetune_from": ("conv5_block1_1_conv", ((lambda v: isinstance(v, str)), "a layer name or 'all'")),
    "early_stopping_patience": (5, _int_range(0)),
    "reduce_lr_patience": (2, _int_range(0)),
    "reduce_lr_factor": (0.2, _float_range(0, 1, low_open=True, high_open=True)),
    "min_learning_rate": (1e-7, _float_range(0, 1)),
    "recalibrate_bn": (False, _bool()),
    "max_train_images": (None, _optional(_int_range(4))),
    "precision": ("float32", _one_of("float32", "mixed_bfloat16", "mixed_float16")),
    "jit_compile": ("auto", ((lambda v: v == "auto" or isinstance(v, bool)), "'auto', true or false")),
    "cache_features": (False, _bool()),
}

DATA_SPEC = {
    "val_fraction": (0.2, _float_range(0, 1, low_open=True, high_open=True)),
    "split_seed": (0, _int_range(0)),
    "test_split": ("test", _one_of("test", "val")),
    "max_per_class": (None, _optional(_int_range(2))),
    "subset_seed": (0, _int_range(0)),
}

EVALUATE_SPEC = {
    "n_boot": (1000, _int_range(0)),
    "ci": (0.95, _float_range(0, 1, low_open=True, high_open=True)),
    "threshold": ("youden", ((lambda v: v in ("youden", "f1", "sensitivity", 0.5)
                              or (isinstance(v, float) and 0 < v < 1)),
                             "'youden', 'f1', 'sensitivity' or a number in (0, 1)")),
    "target_sensitivity": (0.95, _float_range(0, 1, low_open=True)),
    "stacking_cv": (5, _int_range(2)),
    "tta": (False, _bool()),
    "batch_size": (64, _int_range(1, 4096)),
}

EXPLAIN_SPEC = {
    "methods": (["gradcam", "gradcam++", "shap"], (
        lambda v: isinstance(v, list) and set(v) <= {"gradcam", "gradcam++", "scorecam", "shap", "saliency"},
        "a list drawn from ['gradcam', 'gradcam++', 'scorecam', 'shap', 'saliency']")),
    "max_images": (24, _int_range(1)),
    "shap_background": (32, _int_range(2)),
    "shap_samples": (64, _int_range(1)),
    "seed": (0, _int_range(0)),
}

SLICES_SPEC = {
    "min_size": (20, _int_range(1)),
    "max_order": (2, _one_of(1, 2)),
    "alpha": (0.05, _float_range(0, 1, low_open=True, high_open=True)),
    "n_clusters": (6, _int_range(2)),
}

SECTION_SPECS = {
    "data": DATA_SPEC,
    "defaults": MEMBER_SPEC,
    "evaluate": EVALUATE_SPEC,
    "explain": EXPLAIN_SPEC,
    "slices": SLICES_SPEC,
}
TOP_LEVEL_KEYS = tuple(SECTION_SPECS) + ("members",)


def _check_section(section, values, spec, where):
    if not isinstance(values, dict):
        raise ConfigError(f"Config section '{where}' must be a mapping; got {type(values).__name__}.")
    unknown = sorted(set(values) - set(spec))
    if unknown:
        raise ConfigError(
            f"Unknown config key(s) {unknown} in '{where}'; valid keys: {sorted(spec)}."
        )
    resolved = {}
    for key, (default, (check, text)) in spec.items():
        value = values.get(key, copy.deepcopy(default))
        if isinstance(value, float) and value.is_integer() and isinstance(default, int) and not isinstance(default, bool):
            value = int(value)
        if not (key == "name" and section == "defaults" and value is None) and not check(value):
            raise ConfigError(f"The '{key}' option in '{where}' must be {text}; got {value!r}.")
        resolved[key] = value
    return resolved


def parse_config(raw):
    """Validate a config mapping and fill in defaults.

    Parameters
    ----------
    raw : dict
        Parsed YAML/JSON.

    Returns
    -------
    dict
        Every section with every key resolved; ``members`` is a list of full member
        configs (``defaults`` merged under each entry).

    Raises
    ------
    ConfigError
        Unknown keys (naming the valid ones), values out of range, missing or
        duplicate member names.

    Examples
    --------
    >>> cfg = parse_config({"members": [{"name": "m0", "weights": None, "seed": 1}]})
    >>> cfg["members"][0]["seed"], cfg["members"][0]["backbone"]
    (1, 'resnet50')
    >>> parse_config({"members": [{"name": "m0", "epochs": 3}]})
    Traceback (most recent call last):
    ...
    pneumoxai.errors.ConfigError: Unknown config key(s) ['epochs'] in 'members[0]'; valid keys: [...].
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"A config must be a mapping of sections; got {type(raw).__name__}.")
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"Unknown config section(s) {unknown}; valid sections: {sorted(TOP_LEVEL_KEYS)}.")
    config = {name: _check_section(name, raw.get(name) or {}, spec, name) for name, spec in SECTION_SPECS.items()}
    entries = raw.get("members")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("A config needs a non-empty 'members' list, each entry with at least a 'name'.")
    members, seen = [], set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"members[{index}] must be a mapping with a 'name'; got {entry!r}.")
        merged = dict(raw.get("defaults") or {}, **entry)
        member = _check_section("members", merged, MEMBER_SPEC, f"members[{index}]")
        if member["name"] in seen:
            raise ConfigError(f"Member name {member['name']!r} is used twice; names must be unique.")
        seen.add(member["name"])
        members.append(member)
    config["members"] = members
    return config


def _parse_value(text):
    """Parse a CLI override value as YAML (so 3, 0.5, null, true, [1, 2] work)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"Cannot parse override value {text!r}: {exc}") from exc


def apply_overrides(raw, overrides):
    """Apply ``section.key=value`` overrides (``members.NAME.key=value`` for one member).

    Parameters
    ----------
    raw : dict
        Unvalidated config mapping (modified copy is returned).
    overrides : iterable of str

    Returns
    -------
    dict
    """
    raw = copy.deepcopy(raw or {})
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"Override {item!r} must look like section.key=value (e.g. defaults.epochs_frozen=2).")
        dotted, value = item.split("=", 1)
        parts = dotted.strip().split(".")
        value = _parse_value(value)
        if parts[0] == "members":
            if len(parts) != 3:
                raise ConfigError(f"Member override {item!r} must look like members.NAME.key=value.")
            matches = [m for m in raw.get("members") or [] if isinstance(m, dict) and m.get("name") == parts[1]]
            if not matches:
                names = [m.get("name") for m in raw.get("members") or [] if isinstance(m, dict)]
                raise ConfigError(f"Override {item!r} names member {parts[1]!r}; members are {names}.")
            matches[0][parts[2]] = value
        elif len(parts) == 2:
            section = raw.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ConfigError(f"Config section {parts[0]!r} is not a mapping; cannot apply {item!r}.")
            section[parts[1]] = value
        else:
            raise ConfigError(f"Override {item!r} must look like section.key=value.")
    return raw


def load_config(path=None, overrides=()):
    """Read a YAML or JSON config file (safe loader only), apply overrides, validate.

    Parameters
    ----------
    path : str or path-like, optional
        Config file; None means the origin recipe with one member named ``member0``.
    overrides : iterable of str
        ``section.key=value`` strings, e.g. from ``--set`` on the command line.

    Returns
    -------
    dict
        See :func:`parse_config`.
    """
    if path is None:
        raw = {"members": [{"name": "member0"}]}
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} does not exist.")
        text = path.read_text(encoding="utf-8")
        try:
            raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"Config file {str(path)!r} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first}") from exc
    return parse_config(apply_overrides(raw, overrides))


def member_configs(config):
    """Return ``{name: member_config}`` in config order."""
    return {member["name"]: member for member in config["members"]}


def config_hash(obj):
    """Stable hash of a (sub-)config, used to tell whether cached work is still valid."""
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
