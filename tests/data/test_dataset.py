"""NeuralPartsDataset: item contents, the equal sampler at load time, views, workers and collation."""

import pytest
import torch

from neural_parts.data import NeuralPartsDataset
from neural_parts.data.images import IMAGENET_MEAN, IMAGENET_STD


def test_item_contents(synthetic_dir):
    ds = NeuralPartsDataset(synthetic_dir / "train.h5", n_volume=2000, n_surface=700, image_size=32)
    item = ds[1]
    shapes = {k: tuple(v.shape) for k, v in item.items()}
    assert shapes == {
        "image": (3, 32, 32),
        "volume_points": (2000, 3),
        "volume_labels": (2000,),
        "volume_weights": (2000,),
        "surface_points": (700, 3),
        "surface_normals": (700, 3),
        "index": (),
    }
    assert all(v.dtype == torch.float32 for k, v in item.items() if k != "index") and item["index"] == 1
    white = torch.from_numpy((1 - IMAGENET_MEAN) / IMAGENET_STD)
    assert torch.allclose(item["image"][:, 0, 0], white, atol=1e-5)  # white background, normalised
    assert torch.allclose(item["surface_normals"].norm(dim=1), torch.ones(700), atol=1e-5)
    rec = ds.record(1)
    labels = item["volume_labels"].bool()
    assert abs(labels.float().mean().item() - 0.5) < 0.05  # equal: half inside
    f_in = rec["inside_fraction"]
    assert torch.allclose(item["volume_weights"][labels], torch.tensor(2 * f_in), rtol=1e-3)
    assert torch.allclose(item["volume_weights"][~labels], torch.tensor(2 * (1 - f_in)), rtol=1e-3)
    assert rec["volume_points"].shape == (4000, 3) and rec["images"].shape == (2, 64, 64, 3)


def test_uniform_sampling_and_seeded_draws(synthetic_dir):
    uniform = NeuralPartsDataset(
        synthetic_dir / "train.h5", n_volume=3000, equal=False, image_size=64, seed=3
    )
    item = uniform[0]
    assert (item["volume_weights"] == 1).all()
    assert abs(item["volume_labels"].mean().item() - uniform.record(0)["inside_fraction"]) < 0.05
    again = uniform[0]
    assert all(torch.equal(item[k], again[k]) for k in item)  # seeded: a fixed draw per index
    fresh = NeuralPartsDataset(synthetic_dir / "train.h5", image_size=64)
    assert not torch.equal(fresh[0]["volume_points"], fresh[0]["volume_points"])


def test_views_and_categories(synthetic_dir):
    fixed = NeuralPartsDataset(synthetic_dir / "train.h5", image_size=64, seed=0)
    rand = NeuralPartsDataset(synthetic_dir / "train.h5", image_size=64, random_view=True)
    view0 = fixed[0]["image"]
    assert any(not torch.equal(rand[0]["image"], view0) for _ in range(20))
    humans = NeuralPartsDataset(synthetic_dir / "train.h5", categories=["humanoid"])
    assert len(humans) == 3 and {humans.record(i)["category"] for i in range(3)} == {"humanoid"}
    with pytest.raises(ValueError, match="no records of categories"):
        NeuralPartsDataset(synthetic_dir / "train.h5", categories=["dragon"])


def test_dataloader_with_workers(synthetic_dir):
    ds = NeuralPartsDataset(synthetic_dir / "train.h5", n_volume=512, n_surface=256, image_size=32)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, shuffle=True)
    batches = list(loader)
    assert len(batches) == 2
    assert batches[0]["image"].shape == (3, 3, 32, 32) and batches[0]["volume_points"].shape == (3, 512, 3)
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(6))


def test_pickles_for_spawned_workers(synthetic_dir):
    import pickle

    ds = NeuralPartsDataset(synthetic_dir / "train.h5", n_volume=64, n_surface=32, image_size=16, seed=1)
    ds[0]  # the handle is open in this process; the pickle must not carry it
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.records._file is None
    assert torch.equal(clone[0]["volume_points"], ds[0]["volume_points"])
