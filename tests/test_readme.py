"""The README's Python API and command line name things that exist."""

import importlib
import re
from pathlib import Path

import pytest

from pneumoxai import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
FROM_IMPORTS = [(m.group(1), name.strip().split(" as ")[0])
                for block in PYTHON_BLOCKS
                for m in re.finditer(r"^from (pneumoxai[\w.]*) import (.+)$", block, flags=re.M)
                for name in m.group(2).split(",")]
COMMANDS = sorted(set(re.findall(r"`pneumoxai (\w+) ", README)))


def test_readme_has_the_sections_these_tests_read():
    assert len(FROM_IMPORTS) >= 10 and {"run", "evaluate", "explain"} <= set(COMMANDS)


@pytest.mark.parametrize("module, name", FROM_IMPORTS, ids=[f"{m}.{n}" for m, n in FROM_IMPORTS])
def test_every_name_the_readme_imports_is_public(module, name):
    mod = importlib.import_module(module)
    assert hasattr(mod, name), f"README imports {name} from {module}, which has no such name"
    assert name in getattr(mod, "__all__", [name]), f"{module}.{name} is used by the README but not in __all__"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_the_readme_shows_exists(command):
    subcommands = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    assert command in subcommands
