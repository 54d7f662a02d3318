"""Fixtures of the data tests: the shared real meshes and a small prepared synthetic dataset."""

from pathlib import Path

import pytest

from neural_parts.data.process import RecordConfig

SHARED_MESHES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "meshes"
SMALL = dict(n_volume=4000, n_surface=3000, image_size=64, n_views=2)


@pytest.fixture
def shared_meshes() -> Path:
    if not SHARED_MESHES.is_dir():
        pytest.skip(f"real test meshes not found at {SHARED_MESHES} (needs the shared data checkout)")
    return SHARED_MESHES


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


def pytest_collection_modifyitems(items):
    """Tests that use the real meshes carry the ``needs_shared`` marker (select with -m)."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here) and "shared_meshes" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_shared)
