import pytest

from pneumoxai import config
from pneumoxai.errors import ConfigError


def test_defaults_are_the_origin_recipe():
    member = config.parse_config({"members": [{"name": "m"}]})["members"][0]
    assert member["backbone"] == "resnet50" and member["weights"] == "imagenet"
    assert (member["image_size"], member["learning_rate"], member["batch_size"]) == (224, 1e-4, 32)
    assert member["dense_units"] == [512, 128] and member["dropout"] == 0.5 and member["balancing"] == "smote"


def test_defaults_section_applies_under_member_entries():
    cfg = config.parse_config({"defaults": {"image_size": 64, "seed": 5},
                               "members": [{"name": "a"}, {"name": "b", "seed": 9}]})
    assert [m["image_size"] for m in cfg["members"]] == [64, 64]
    assert [m["seed"] for m in cfg["members"]] == [5, 9]


@pytest.mark.parametrize("raw, match", [
    ({"members": [{"name": "m", "epochs": 3}]}, r"Unknown config key\(s\) \['epochs'\] in 'members\[0\]'; valid keys"),
    ({"members": [{"name": "m"}], "trainer": {}}, r"Unknown config section\(s\) \['trainer'\]"),
    ({"members": [{"name": "m", "epochs_frozen": -1}]}, r"'epochs_frozen' option .* must be an int in \[0, 10000\]; got -1"),
    ({"members": [{"name": "m", "dropout": 1.5}]}, r"'dropout' option .* must be a number in \[0, 1\); got 1.5"),
    ({"members": [{"name": "m", "backbone": "vgg16"}]}, "'backbone' option .* must be one of"),
    ({"members": [{"name": "../escape"}]}, "'name' option"),
    ({"members": [{"name": "m"}, {"name": "m"}]}, "used twice"),
    ({"members": []}, "non-empty 'members' list"),
    ({"data": {"val_fraction": 0}, "members": [{"name": "m"}]}, "'val_fraction' option in 'data'"),
    ([1, 2], "must be a mapping"),
    # Values that used to reach float()/sorted() unchecked and fail with a traceback.
    ({"defaults": {"augment": {"rotation": "abc"}}, "members": [{"name": "m"}]},
     r"'rotation' option in 'defaults.augment' must be a number in \[0, 0.5\]; got 'abc'"),
    ({"defaults": {"augment": {"rotation": None}}, "members": [{"name": "m"}]}, "'rotation' option .* got None"),
    ({"defaults": {"augment": {"shear": 0.1}}, "members": [{"name": "m"}]},
     r"Unknown config key\(s\) \['shear'\] in 'defaults.augment'"),
    ({"defaults": {1: 2}, "members": [{"name": "m"}]}, "keys in 'defaults' must be names; got \\[1\\]"),
    ({"members": [{"name": "m0", 1: "x"}]}, r"Config keys in 'members\[0\]' must be names; got \[1\]"),
    ({1: "x", "foo": "y", "members": [{"name": "m"}]}, r"Unknown config section\(s\) \[1, 'foo'\]"),
    ({"members": [{"name": "m", "dense_units": [[8, 8]]}]}, "'dense_units' option .* non-empty list"),
    ({"members": [{"name": "m", "dense_units": []}]}, "'dense_units' option .* non-empty list"),
    ({"members": [{"name": "m", "dense_units": [10**9]}]}, r"'dense_units' option .* \[1, 8192\]"),
    ({"members": [{"name": "m", "seed": 2**40}]}, r"'seed' option .* an int in \[0, 2147483647\]"),
    ({"explain": {"methods": []}, "members": [{"name": "m"}]}, "'methods' option .* non-empty list"),
    ({"explain": {"methods": [["gradcam"]]}, "members": [{"name": "m"}]}, "'methods' option"),
    ({"members": [{"name": "m", "weights": "model.keras"}]}, r"'weights' option .* '\.h5' weights file"),
    ({"members": [{"name": "m", "dropout": "x" * 10**6}]}, r"got 'xxx.*\.\.\.\[1000002 chars\]\.$"),
])
def test_invalid_configs(raw, match):
    with pytest.raises(ConfigError, match=match):
        config.parse_config(raw)


def test_overrides_take_effect(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("defaults:\n  image_size: 64\nmembers:\n  - name: a\n  - name: b\n")
    cfg = config.load_config(path, ["defaults.epochs_frozen=2", "members.b.seed=7", "data.max_per_class=10",
                                    "defaults.weights=null"])
    assert [m["epochs_frozen"] for m in cfg["members"]] == [2, 2]
    assert [m["seed"] for m in cfg["members"]] == [0, 7]
    assert cfg["data"]["max_per_class"] == 10 and cfg["members"][0]["weights"] is None


@pytest.mark.parametrize("text, overrides, match", [
    ("members: [ {name: a", [], "not valid YAML"),
    ("members:\n  - name: a\n", ["defaults.epochs_frozen"], "must look like section.key=value"),
    ("members:\n  - name: a\n", ["members.zz.seed=1"], "names member 'zz'"),
    ("members:\n  - name: a\n", ["defaults.nonsense=1"], "Unknown config key"),
    ("!!python/object/apply:os.system ['echo hacked']\n", [], "not valid YAML"),
])
def test_bad_config_files(tmp_path, text, overrides, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        config.load_config(path, overrides)


@pytest.mark.parametrize("content, match", [
    (b"members:\n  - name: \xff\xfe\n", "not UTF-8"),
    (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply|not valid YAML"),
    (b"a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\nmembers: [{name: m}]\n", "aliases"),
])
def test_hostile_config_files_give_one_line(tmp_path, content, match):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=match) as info:
        config.load_config(path)
    assert "\n" not in str(info.value)


def test_deeply_nested_json_config(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ConfigError, match="nested too deeply|not valid JSON"):
        config.load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a folder; pass a YAML or JSON file"):
        config.load_config(tmp_path)


def test_shipped_configs_are_valid():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "experiments" / "configs"
    paths = sorted(folder.glob("*.yaml"))
    assert {p.name for p in paths} >= {"seed.yaml", "cpu.yaml", "smoke.yaml"}
    for path in paths:
        assert config.load_config(path)["members"]
