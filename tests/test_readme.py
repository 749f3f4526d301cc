"""The README's and the documentation's Python and command line name things that exist, and their examples run."""

import importlib
import re
from pathlib import Path

import pytest

from pneumoxai import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The README and every Markdown page of docs/ (not the build output); the examples moved there from the README.
PAGES = {"README.md": README, **{str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "docs").rglob("*.md"))
                                 if "_build" not in p.parts}}
PYTHON_BLOCKS = [b for text in PAGES.values() for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)]
FROM_IMPORTS = [(m.group(1), name.strip().split(" as ")[0])
                for block in PYTHON_BLOCKS
                for m in re.finditer(r"^from (pneumoxai[\w.]*) import (.+)$", block, flags=re.M)
                for name in m.group(2).split(",")]
COMMANDS = sorted({c for text in PAGES.values() for c in re.findall(r"`pneumoxai (\w+) ", text)})


def test_readme_has_the_sections_these_tests_read():
    assert len(FROM_IMPORTS) >= 10 and {"run", "evaluate", "explain", "import", "analyse"} <= set(COMMANDS)


def test_readme_is_a_front_page_with_the_two_commands():
    assert len(README.splitlines()) <= 300
    assert "```bash\nbash scripts/run_cpu.sh --data ../shared/data/chest_xray\n```" in README
    assert "```bash\nbash scripts/test.sh\n```" in README
    assert "pneumoxai import " in README and "pneumoxai analyse --run" in README


@pytest.mark.parametrize("page", list(PAGES))
def test_every_relative_link_of_a_page_exists(page):
    links = re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", PAGES[page])
    missing = [link for link in links if not ((ROOT / page).parent / link).exists()]
    assert not missing, f"{page} links to missing files: {missing}"


@pytest.mark.parametrize("module, name", FROM_IMPORTS, ids=[f"{m}.{n}" for m, n in FROM_IMPORTS])
def test_every_name_the_readme_imports_is_public(module, name):
    mod = importlib.import_module(module)
    assert hasattr(mod, name), f"the docs import {name} from {module}, which has no such name"
    assert name in getattr(mod, "__all__", [name]), f"{module}.{name} is used by the docs but not in __all__"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_the_readme_shows_exists(command):
    subcommands = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    assert command in subcommands


# ---------------------------------------------------------------------------- the Python blocks, executed
#
# Every ```python block of the README and of docs/ runs here, on a tiny generated Kaggle-layout tree instead of the real
# data. Each block is named by its first line; the only edits are the substitutions listed below, each of
# which must still match the block's text (so a changed example cannot silently run unedited). A block that
# cannot run has to be listed in SKIPPED with its reason; a block that is an excerpt of one that runs (the
# README's API tour) is listed in EXCERPTS, and each of its lines must be a line of the block it excerpts.

_API = "import pneumoxai.data as data, pneumoxai.models as models"
_BYOM = "import keras"
_ISSUE14 = "from pneumoxai.explain import gradcam, fusion_layers, road, compare_layers, slice_explanations"
_SHIFT = "from pneumoxai.shift import output_shift_test, domain_classifier, feature_shift, estimate_prevalence"
_TOUR = "from pneumoxai.predict import predict_members"
SUBSTITUTIONS = {
    _API: [
        ('"../shared/data/chest_xray"', "str(DATA)"),  # 40 + 16 generated images instead of the real data set
        # The block elides training; three untrained members of the same recipe stand in for model_a..c.
        ("\n...  # train model_a, model_b, model_c like model: models.train_member(model, ...)\n",
         "\nmodel_a, (model_b, model_c) = model, (models.build_member(64, weights=None, seed=s, "
         "bn_momentum=0.9) for s in (1, 2))\n"),
    ],
    _BYOM: [
        ('"../shared/data/chest_xray"', "str(DATA)"),
        # One ResNet50 epoch on 64 real images becomes one step on 8 generated ones; 8 test images, not 32.
        (".groupby(\"label\").head(32)", ".groupby(\"label\").head(4)"),
        (".groupby(\"label\").head(16)", ".groupby(\"label\").head(4)"),
    ],
    _SHIFT: [
        # 4 validation images: two folds, not five, for the domain classifier.
        ("groups_target=test.patient_id)", "groups_target=test.patient_id, cv=2)"),
    ],
    _ISSUE14: [
        # After the API block, on 4 of its test images instead of 16 and 24 (a ResNet50 layer comparison).
        ("x_test[:16]", "x_test[:4]"),
        ("x_test[:24]", "x_test[:4]"),
    ],
}
RUNS_AFTER = {_ISSUE14: _API, _SHIFT: _API}  # use model_a, P_val, x_test, ... from the API block
SKIPPED = {}  # first line -> why it cannot run in the suite
EXCERPTS = {_TOUR: _API}  # the README's short tour: lines of the API guide's block, which runs


def _block(first_line):
    (block,) = [b for b in PYTHON_BLOCKS if b.splitlines()[0] == first_line]
    return block


def _edited(first_line):
    code = _block(first_line)
    for old, new in SUBSTITUTIONS[first_line]:
        assert code.count(old) >= 1, f"docs block {first_line!r} no longer contains {old!r}; update the harness"
        code = code.replace(old, new)
    return code


def test_every_python_block_is_executed_or_skipped_with_a_reason():
    first_lines = [b.splitlines()[0] for b in PYTHON_BLOCKS]
    assert sorted(first_lines) == sorted([*SUBSTITUTIONS, *SKIPPED, *EXCERPTS])
    assert all(SKIPPED.values())


@pytest.mark.parametrize("excerpt", list(EXCERPTS))
def test_an_excerpt_shows_only_lines_of_a_block_that_runs(excerpt):
    full = set(_block(EXCERPTS[excerpt]).splitlines())
    foreign = [line for line in _block(excerpt).splitlines() if line.strip() and line not in full]
    assert not foreign, f"lines of the excerpt {excerpt!r} that the executed block lacks: {foreign}"


@pytest.fixture(scope="module")
def readme_data(tmp_path_factory):
    from conftest import make_tree

    return make_tree(tmp_path_factory.mktemp("readme"), n_per_class=8, size=72, patients_per_class=4)


def _run(first_line, namespace):
    exec(compile(_edited(first_line), f"docs block {first_line!r}", "exec"), namespace)
    return namespace


@pytest.mark.slow  # ResNet50 members at 64 px: a minute of CPU
def test_readme_python_api_block_runs(readme_data, tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.chdir(tmp_path)  # its prediction cache goes to cache/
    ns = _run(_API, {"DATA": readme_data})
    assert ns["P_val"].shape == (len(ns["val"]), 3) and ns["P_test"].shape == (16, 3)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3
    assert ns["maps"].shape == (16, 64, 64) and 0 <= ns["maps"].min() and ns["maps"].max() <= 1
    assert ((ns["p_test_calibrated"] > 0) & (ns["p_test_calibrated"] < 1)).all()
    np.testing.assert_allclose(ns["p_test"], ns["P_test"] @ ns["ensemble"].weights_, atol=1e-12)
    # the shift and referral block, then the issue-14 block, on what the API block left behind
    _run(_SHIFT, ns)
    assert len(ns["features_val"]) == len(ns["val"]) and len(ns["features_test"]) == 16
    _run(_ISSUE14, ns)
    assert ns["morf"].shape == (4, 9) and ns["rests"].shape == (4,)
    assert set(ns["table"]["method"]) == {"gradcam", "layercam", "hirescam", "random"}


@pytest.mark.slow  # a ResNet50 trained for one step: a minute of CPU
def test_readme_bring_your_own_model_block_runs(readme_data, capsys):
    ns = _run(_BYOM, {"DATA": readme_data})
    assert ns["P"].shape == (8, 2) and abs(ns["P"][:, 1] - ns["own"]).max() < 1e-5
    assert ns["maps"].shape == (8, 64, 64)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[1].endswith("(8, 64, 64)")
