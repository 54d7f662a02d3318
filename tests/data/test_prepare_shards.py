"""``prepare --shard I/N``: processes (machines) sharing the output folder split a build; a final run without
--shard assembles exactly what a one-machine build writes."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from neural_parts.data.build import PrepareError
from neural_parts.prepare import prepare

REPO = Path(__file__).resolve().parents[2]


def _args(output, n_train=4, n_val=2, *extra):
    return ["synthetic", "--n-train", str(n_train), "--n-val", str(n_val), "--n-test", "0", "--shard-size", "1",
            "--n-volume", "3000", "--n-surface", "2000", "--image-size", "32", "--workers", "1", "-q",
            "--output", str(output), *extra]


def _contents(path):
    """Every dataset and every attribute of an HDF5 file."""
    data = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda k, d: data.__setitem__(k, d[()]) if isinstance(d, h5py.Dataset) else None)
        attrs = dict(f.attrs)
    return data, attrs


@pytest.mark.slow
def test_concurrent_shard_builds_and_an_assembling_run_equal_a_one_machine_build(tmp_path):
    shared = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-m", "neural_parts.prepare", *_args(shared), "--shard", f"{i}/2"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        assert "run without --shard to assemble" in out
    assert not (shared / "train.h5").exists()  # parts assemble nothing
    assert len(list((shared / "train.parts").glob("[0-9]*.json"))) == 4
    assert len(list((shared / "val.parts").glob("[0-9]*.json"))) == 2

    summary = prepare(_args(shared))
    assert summary["built_records"] == 0  # the two parts built every shard
    assert summary["splits"]["train"]["records"] == 4 and not (shared / "train.parts").exists()
    prepare(_args(tmp_path / "one"))
    for split in ("train", "val"):
        (a, a_attrs), (b, b_attrs) = _contents(shared / f"{split}.h5"), _contents(tmp_path / "one" / f"{split}.h5")
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        assert a_attrs.keys() == b_attrs.keys()
        for key in a_attrs:  # the labeller too: the assembling run, which labelled nothing, keeps the parts'
            assert np.array_equal(a_attrs[key], b_attrs[key]), key
        assert (shared / f"{split}.h5").read_bytes() == (tmp_path / "one" / f"{split}.h5").read_bytes()


def test_a_part_accepts_the_shard_folder_another_machine_has_just_created(tmp_path):
    (tmp_path / "train.parts").mkdir(parents=True)  # made by a concurrent part that has not written config.json
    summary = prepare(_args(tmp_path, 2, 0, "--shard", "1/2"))
    assert summary["built_records"] == 1 and summary["shards_left"] == 1

    foreign = tmp_path / "foreign"
    (foreign / "train.parts").mkdir(parents=True)  # shards without the config that made them are not ours
    (foreign / "train.parts" / "0000.json").write_text("{}")
    with pytest.raises(PrepareError, match="holds shards of a different configuration"):
        prepare(_args(foreign, 2, 0, "--shard", "1/2"))
