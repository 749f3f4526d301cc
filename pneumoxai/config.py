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

from .data import DEFAULT_CHUNK_SIZE, INTERPOLATIONS
from .errors import ConfigError, short_repr
from .slices import DEFAULT_N_BINS
from .validation import BOOLEAN, Constraint, Interval, ListOf, Options, Predicate, check_param, describe, is_valid

__all__ = ["MEMBER_SPEC", "AUGMENT_SPEC", "load_config", "parse_config", "apply_overrides", "config_hash",
           "analysis_members", "snapshot_name", "check_training_modes"]


_SEED = Interval("int", 0, 2**31 - 1)  # pandas and NumPy both accept it
_FRACTION_OPEN = Interval("real", 0, 1, closed="neither")
_LEARNING_RATE = Interval("real", 0, 1, closed="right")
_MEMBER_NAME = Predicate(lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v) is not None
                         and v not in (".", ".."), "a name of at most 64 letters, digits, '_', '-' or '.'")


class Mapping(Constraint):
    """A mapping whose keys are among ``spec`` and whose values satisfy its constraints (no defaults)."""

    def __init__(self, spec):
        self.spec = spec

    def is_satisfied_by(self, value):
        return (isinstance(value, dict) and all(isinstance(k, str) for k in value) and set(value) <= set(self.spec)
                and all(is_valid(v, self.spec[k]) for k, v in value.items()))

    def __str__(self):
        return "a mapping with " + ", ".join(f"{k}: {describe(c)}" for k, c in self.spec.items())


AUGMENT_SPEC = {
    "rotation": Interval("real", 0, 0.5),
    "flip": BOOLEAN,
    "contrast": Interval("real", 0, 1),
}

# name -> (default, (check, description)). Defaults are the origin project's recipe.
MEMBER_SPEC = {
    "name": (None, _MEMBER_NAME),
    "backbone": ("resnet50", Options(("resnet50", "densenet121", "efficientnetb0"))),
    "weights": ("imagenet", (None, Options(("imagenet",)), Predicate(lambda v: isinstance(v, str) and v.endswith(".h5"),
                                                                     "the path of a '.h5' weights file"))),
    "image_size": (224, Interval("int", 32, 1024)),
    "seed": (0, _SEED),
    "balancing": ("smote", Options(("smote", "class_weight", "oversample", "none"))),
    "bootstrap": (False, BOOLEAN),
    "augment": ({"rotation": 0.03, "flip": True, "contrast": 0.1}, Mapping(AUGMENT_SPEC)),
    "dense_units": ([512, 128], ListOf(Interval("int", 1, 8192), min_length=1, max_length=8)),
    "dropout": (0.5, Interval("real", 0, 1, closed="left")),
    "l2": (1e-4, Interval("real", 0, 1)),
    "bn_momentum": (None, (None, _FRACTION_OPEN)),
    "learning_rate": (1e-4, _LEARNING_RATE),
    "batch_size": (32, Interval("int", 1, 4096)),
    "epochs_frozen": (25, Interval("int", 0, 10_000)),
    "epochs_finetune": (10, Interval("int", 0, 10_000)),
    "finetune_learning_rate": (1e-5, _LEARNING_RATE),
    "finetune_from": ("conv5_block1_1_conv", Predicate(lambda v: isinstance(v, str) and 0 < len(v) <= 128,
                                                       "a layer name or 'all'")),
    "early_stopping_patience": (5, Interval("int", 0, 10_000)),
    "reduce_lr_patience": (2, Interval("int", 0, 10_000)),
    "reduce_lr_factor": (0.2, _FRACTION_OPEN),
    "min_learning_rate": (1e-7, Interval("real", 0, 1)),
    "recalibrate_bn": (False, BOOLEAN),
    "max_train_images": (None, (None, Interval("int", 4, None))),
    "precision": ("float32", Options(("float32", "mixed_bfloat16", "mixed_float16", "auto"))),
    "force_precision": (False, BOOLEAN),
    "schedule": ("plateau", Options(("plateau", "cosine", "onecycle"))),
    "snapshots": (1, Interval("int", 1, 100)),
    "label_smoothing": (0.0, Interval("real", 0, 0.5)),
    "weight_decay": (0.0, Interval("real", 0, 1)),
    "progressive_sizes": (None, (None, ListOf(Interval("int", 32, 1024), min_length=1, max_length=8))),
    "input_norm": ("none", Options(("none", "standardize"))),
    "random_crop": (0.0, Interval("real", 0, 0.5)),
    "jit_compile": ("auto", (Options(("auto",)), BOOLEAN)),
    "cache_features": (False, BOOLEAN),
    # Registered by `pneumoxai import`: never trained, retrained or overwritten by pneumoxai.
    "imported": (False, BOOLEAN),
}

DATA_SPEC = {
    "val_fraction": (0.2, _FRACTION_OPEN),
    "split_seed": (0, _SEED),
    "test_split": ("test", Options(("test", "val"))),
    "max_per_class": (None, (None, Interval("int", 2, None))),
    "subset_seed": (0, _SEED),
    # How files are resized to a member's input (pneumoxai.data.INTERPOLATIONS): match an imported model's training.
    "interpolation": ("auto", Options(INTERPOLATIONS)),
}

EVALUATE_SPEC = {
    "n_boot": (1000, Interval("int", 0, 100_000)),
    "ci": (0.95, _FRACTION_OPEN),
    "threshold": ("youden", (Options(("youden", "f1", "sensitivity")), _FRACTION_OPEN)),
    "target_sensitivity": (0.95, Interval("real", 0, 1, closed="right")),
    "stacking_cv": (5, Interval("int", 2, 100)),
    "tta": (False, BOOLEAN),
    "deployment_prevalence": (None, (None, _FRACTION_OPEN)),
    "batch_size": (64, Interval("int", 1, 4096)),
    # Files decoded at once wherever a split is read (predictions, embeddings, image features): memory, not results.
    "chunk_size": (DEFAULT_CHUNK_SIZE, Interval("int", 1, None)),
}

EXPLAIN_SPEC = {
    # layercam / hirescam: fused over each member's stage outputs (explain.fusion_layers), maps at 1/8 of the input.
    "methods": (["gradcam", "gradcam++", "shap"],
                ListOf(Options(("gradcam", "gradcam++", "layercam", "hirescam", "scorecam", "shap", "saliency")),
                       min_length=1, unique=True)),
    "max_images": (24, Interval("int", 1, 10_000)),
    "layer_choice_images": (24, Interval("int", 0, 10_000)),
    "shap_background": (32, Interval("int", 2, 10_000)),
    "shap_samples": (64, Interval("int", 1, 10_000)),
    "seed": (0, _SEED),
}

SLICES_SPEC = {
    "min_size": (20, Interval("int", 1, None)),
    "max_order": (2, Options((1, 2))),
    "alpha": (0.05, _FRACTION_OPEN),
    "n_clusters": (6, Interval("int", 2, 100)),
    "n_bins": (DEFAULT_N_BINS, Interval("int", 2, 1000)),
    # Layer whose activations are clustered into the 'cluster' slicing column; null leaves it out.
    "embedding_layer": ("head_dense2", (None, Predicate(lambda v: isinstance(v, str) and 0 < len(v) <= 128,
                                                        "a layer name"))),
}

SECTION_SPECS = {
    "data": DATA_SPEC,
    "defaults": MEMBER_SPEC,
    "evaluate": EVALUATE_SPEC,
    "explain": EXPLAIN_SPEC,
    "slices": SLICES_SPEC,
}
TOP_LEVEL_KEYS = tuple(SECTION_SPECS) + ("members",)


def _check_keys(values, spec, where):
    if not isinstance(values, dict):
        raise ConfigError(f"Config section '{where}' must be a mapping; got {type(values).__name__}.")
    not_text = [k for k in values if not isinstance(k, str)]
    if not_text:
        raise ConfigError(f"Config keys in '{where}' must be names; got {short_repr(not_text)}.")
    unknown = sorted(set(values) - set(spec))
    if unknown:
        raise ConfigError(f"Unknown config key(s) {short_repr(unknown)} in '{where}'; valid keys: {sorted(spec)}.")


def _check_section(section, values, spec, where):
    _check_keys(values, spec, where)
    resolved = {}
    for key, (default, constraint) in spec.items():
        value = values.get(key, copy.deepcopy(default))
        if isinstance(value, float) and value.is_integer() and isinstance(default, int) and not isinstance(default, bool):
            value = int(value)
        if key == "name" and section == "defaults" and value is None:
            resolved[key] = value
            continue
        if isinstance(constraint, Mapping) and isinstance(value, dict):
            _check_keys(value, constraint.spec, f"{where}.{key}")
            for inner_key, inner_value in value.items():
                check_param(None, inner_key, inner_value, constraint.spec[inner_key], where=f"{where}.{key}")
        resolved[key] = check_param(None, key, value, constraint, where=where)
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
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS), key=str)  # keys of any type: 1 beside 'foo'
    if unknown:
        raise ConfigError(f"Unknown config section(s) {short_repr(unknown)}; valid sections: "
                          f"{sorted(TOP_LEVEL_KEYS)}.")
    config = {name: _check_section(name, raw.get(name) or {}, spec, name) for name, spec in SECTION_SPECS.items()}
    entries = raw.get("members")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("A config needs a non-empty 'members' list, each entry with at least a 'name'.")
    members, seen = [], set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"members[{index}] must be a mapping with a 'name'; got {entry!r}.")
        _check_keys(entry, MEMBER_SPEC, f"members[{index}]")
        member = _check_section("members", {**(raw.get("defaults") or {}), **entry}, MEMBER_SPEC, f"members[{index}]")
        try:
            check_training_modes(member)
        except ConfigError as exc:
            raise ConfigError(f"members[{index}] ({member['name']}): {exc}") from None
        members.append(member)
    for member in analysis_members({"members": members}):
        if member["name"] in seen:
            raise ConfigError(f"Member name {member['name']!r} is used twice (snapshot members are named "
                              "'<name>_snap<k>'); names must be unique.")
        seen.add(member["name"])
    config["members"] = members
    return config


def check_training_modes(member):
    """Refuse member options that cannot train together (checked before any data is read).

    Snapshot ensembles need one cosine cycle per snapshot, ending at an epoch end, in one
    training phase (``weights=None``); progressive resizing needs that one phase too.
    """
    pretrained = member["weights"] is not None
    snapshots = member["snapshots"]
    epochs = member["epochs_frozen"] + member["epochs_finetune"]
    if snapshots > 1:
        if member["schedule"] != "cosine":
            raise ConfigError(f"snapshots={snapshots} needs schedule='cosine' (one cosine cycle per snapshot); "
                              f"got schedule={member['schedule']!r}.")
        if pretrained:
            raise ConfigError("snapshots > 1 needs weights=None (one training phase); pretrained members train "
                              "in two phases.")
        if epochs % snapshots:
            raise ConfigError(f"snapshots={snapshots} must divide the epochs ({epochs}) so that every cycle ends "
                              "at an epoch end.")
    if member["progressive_sizes"] and pretrained:
        raise ConfigError("progressive_sizes needs weights=None (one training phase).")


def snapshot_name(name, index):
    """Name of snapshot ``index`` (1-based) of member ``name``: ``f"{name}_snap{index}"``."""
    return f"{name}_snap{index}"


def analysis_members(config):
    """The members the analyses see, in order: each trained or imported member, or, for a
    member trained as a snapshot ensemble (``snapshots > 1``), its snapshot members.

    One training run of a snapshot member yields ``snapshots`` models (Huang et al. 2017),
    each predicted, combined and explained like an independent member. Each entry is the
    member's config plus ``trained_as`` (the name of the training run) and ``snapshot``
    (its 1-based index, or None).

    Examples
    --------
    >>> snapshot_run = {"weights": None, "schedule": "cosine", "snapshots": 2, "epochs_frozen": 4, "epochs_finetune": 0}
    >>> cfg = parse_config({"members": [{"name": "a", **snapshot_run}, {"name": "b", "weights": None}]})
    >>> [(m["name"], m["trained_as"], m["snapshot"]) for m in analysis_members(cfg)]
    [('a_snap1', 'a', 1), ('a_snap2', 'a', 2), ('b', 'b', None)]
    """
    expanded = []
    for member in config["members"]:
        count = member.get("snapshots", 1)
        if count > 1:
            expanded += [dict(member, name=snapshot_name(member["name"], k), trained_as=member["name"], snapshot=k)
                         for k in range(1, count + 1)]
        else:
            expanded.append(dict(member, trained_as=member["name"], snapshot=None))
    return expanded


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


_MAX_CONFIG_BYTES = 1 << 20  # a run config is a few KiB; anything near this is not one


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: ``*name`` references let a few hundred bytes
    expand into gigabytes once the document is walked (the "billion laughs" attack)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in a config",
                                              event.start_mark)
        return super().compose_node(parent, index)


def _read_config_file(path):
    kind = "JSON" if path.suffix == ".json" else "YAML"
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise ConfigError(f"Config file {str(path)!r} is {path.stat().st_size} bytes; a config is at most "
                          f"{_MAX_CONFIG_BYTES} bytes.")
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if kind == "JSON" else yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (safe loader)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Config file {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    except RecursionError:
        raise ConfigError(f"Config file {str(path)!r} is nested too deeply to be a config.") from None
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"Config file {str(path)!r} is not valid {kind}: {short_repr(first, 300)}") from None


def load_config(path=None, overrides=()):
    """Read a YAML or JSON config file (safe loader, no aliases), apply overrides, validate.

    Parameters
    ----------
    path : str or path-like, default=None
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
        if path.is_dir():
            raise ConfigError(f"Config file {str(path)!r} is a folder; pass a YAML or JSON file, e.g. "
                              "experiments/configs/smoke.yaml.")
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} does not exist.")
        raw = _read_config_file(path)
    try:
        return parse_config(apply_overrides(raw, overrides))
    except RecursionError:
        raise ConfigError("The config is nested too deeply to be a config.") from None


def config_hash(obj):
    """Stable hash of a (sub-)config, used to tell whether cached work is still valid."""
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
