"""The test suite's own decisions: when the real-data tests may skip."""

from pathlib import Path

import pytest

from conftest import missing_real_data

pytest_plugins = ["pytester"]
CONFTEST = Path(__file__).with_name("conftest.py")


@pytest.mark.parametrize("environ, fails", [
    ({}, False), ({"CI": "false"}, False), ({"CI": ""}, False),
    ({"CI": "true"}, True), ({"CI": "TRUE"}, True), ({"CI": "1"}, True),
])
def test_missing_real_data_skips_locally_and_fails_in_ci(tmp_path, environ, fails):
    reason, fail = missing_real_data(tmp_path / "chest_xray", environ)
    assert fail is fails and str(tmp_path / "chest_xray") in reason
    assert ("required when CI=true" in reason) is fails


@pytest.mark.parametrize("environ", [{}, {"CI": "true"}])
def test_present_real_data_runs_whatever_the_environment(tmp_path, environ):
    (tmp_path / "chest_xray" / "train").mkdir(parents=True)
    assert missing_real_data(tmp_path / "chest_xray", environ) is None


def test_a_ci_run_without_the_data_set_fails_its_real_data_tests(pytester, monkeypatch):
    """Through the fixture itself: a real-data test errors under CI=true when the data is gone, skips otherwise."""
    pytester.makeconftest(
        "import importlib.util, pathlib\n"
        f"spec = importlib.util.spec_from_file_location('repo_conftest', {str(CONFTEST)!r})\n"
        "repo_conftest = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(repo_conftest)\n"
        f"repo_conftest.REAL_DATA = pathlib.Path({str(pytester.path / 'absent')!r})\n"
        "real_data_root = repo_conftest.real_data_root\n")
    pytester.makepyfile("def test_real(real_data_root):\n    pass\n")
    monkeypatch.setenv("CI", "true")
    failed = pytester.runpytest_subprocess()
    failed.assert_outcomes(errors=1)
    failed.stdout.fnmatch_lines(["*real data not found at*absent (required when CI=true)*"])
    monkeypatch.setenv("CI", "false")
    skipped = pytester.runpytest_subprocess("-rs")
    skipped.assert_outcomes(skipped=1)
    skipped.stdout.fnmatch_lines(["*real data not found at*absent*"])
