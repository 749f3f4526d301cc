import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest_xray"


def pytest_collection_modifyitems(items):
    """Every test that reads the real data set is a slow test (CI still runs them once)."""
    for item in items:
        if "real_data_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def missing_real_data(root, environ):
    """Why the real-data tests cannot run (None when they can), and whether that fails the run.

    In CI (``CI=true``) a missing data set fails: its tests hold the only full ``pneumoxai run``
    and the real-image audit chain, and a skip there would pass unnoticed. Locally it skips.

    Returns
    -------
    None or (str, bool)
        The reason and ``True`` when the tests must fail rather than skip.
    """
    if (Path(root) / "train").is_dir():
        return None
    in_ci = environ.get("CI", "").strip().lower() in ("true", "1", "yes")
    return f"real data not found at {root}" + (" (required when CI=true)" if in_ci else ""), in_ci


@pytest.fixture(scope="session")
def real_data_root():
    """The read-only Kermany copy beside the repo (skips when absent locally, fails in CI)."""
    missing = missing_real_data(REAL_DATA, os.environ)
    if missing is not None:
        reason, fail = missing
        (pytest.fail if fail else pytest.skip)(reason)
    return REAL_DATA


def write_image(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise RuntimeError(f"could not write {path}")
    return path


def make_tree(parent, n_per_class=12, size=48, splits=("train", "test"), seed=0, patients_per_class=None):
    """Build a small Kaggle-layout tree of generated radiograph-like images under ``parent/chest_xray``.

    Pneumonia images carry a bright blob in the left half, normal ones do not, so a
    tiny network can learn the task in an epoch or two.
    """
    rng = np.random.default_rng(seed)
    root = Path(parent) / "chest_xray"
    for split in splits:
        for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
            for i in range(n_per_class):
                base = rng.normal(90, 20, (size, size)).clip(0, 255)
                if label:
                    y, x = rng.integers(size // 4, 3 * size // 4), rng.integers(size // 6, size // 2)
                    cv2.circle(base, (int(x), int(y)), size // 6, 230, -1)
                patient = i if patients_per_class is None else i % patients_per_class
                name = (f"person{patient + 1000 * (split == 'test')}_bacteria_{i}.jpeg" if label
                        else f"IM-{patient + 1000 * (split == 'test'):04d}-{i:04d}.jpeg")
                write_image(root / split / cls / name, base.astype(np.uint8))
    return root


@pytest.fixture
def make_kaggle_tree(tmp_path):
    """:func:`make_tree` under this test's ``tmp_path``."""

    def make(**kwargs):
        return make_tree(tmp_path, **kwargs)

    return make
