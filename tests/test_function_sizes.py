"""No function in the package is longer than 60 lines of code (experiments/check_function_sizes.py)."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_function_sizes", ROOT / "experiments" / "check_function_sizes.py")
sizes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sizes)


def test_counts_code_lines_without_docstring_comments_or_blanks(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('def f(x):\n    """Doc\n\n    more doc.\n    """\n    # a comment\n\n    y = (x +\n         1)\n'
                    '    return y\n\n\nclass C:\n    def g(self):\n        return 1\n')
    assert sizes.function_sizes(path) == [("f", 1, 4), ("C.g", 14, 2)]
    assert sizes.oversized([path], limit=3) == [(str(path), "f", 1, 4)]


# models.py becomes the members package on the branch that splits it (issue 26); until then its
# train_member is over the limit. Remove this entry when the branches are merged.
_PENDING = {ROOT / "pneumoxai" / "models.py": "train_member is split with the members package (issue 26)"}


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.xfail(reason=_PENDING[p], strict=False)) if p in _PENDING else p
    for p in sorted((ROOT / "pneumoxai").rglob("*.py"))], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_function_over_the_limit(path):
    over = sizes.oversized([path])
    assert not over, "\n".join(f"{name} (line {line}): {n} code lines > {sizes.LIMIT}" for _, name, line, n in over)
