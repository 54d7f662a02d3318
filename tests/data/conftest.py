"""Fixtures of the data tests: a small record config and a small prepared synthetic dataset."""

from pathlib import Path

import pytest

from neural_parts.data.process import RecordConfig

SMALL = dict(n_volume=4000, n_surface=3000, image_size=64, n_views=2)


@pytest.fixture
def small_cfg() -> RecordConfig:
    return RecordConfig(**SMALL)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A prepared synthetic dataset: 6 train, 2 val, 2 test records of SMALL size, in-process."""
    from neural_parts.data import prepare_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    prepare_synthetic(out, n_train=6, n_val=2, n_test=2, workers=1, progress=False, **SMALL)
    return out
