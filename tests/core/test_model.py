"""Model structure, encoder weights, authors' checkpoint loading, primitives API."""
import pytest
import torch

from neural_parts.models import FrozenBatchNorm2d, NeuralParts, ResNet18, load_authors_state_dict


def authors_layout(model: NeuralParts) -> dict:
    """Our state dict rewritten as the authors' FlexiblePrimitives checkpoint would store it."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("feature_extractor."):
            if k.endswith("num_batches_tracked"):
                continue  # their FrozenBatchNorm2d has no counter
            if k.endswith("running_var"):
                v = v + 1e-5  # and stores var + eps
            k = "feature_extractor._feature_extractor." + k[len("feature_extractor."):]
        elif k.startswith("invertible_network.projection."):
            k = "invertible_network._projection." + k[len("invertible_network.projection."):]
        out[k] = v.clone()
    return out


def test_parameter_counts_match_the_authors():
    model = NeuralParts(n_primitives=6)
    assert sum(p.numel() for p in model.invertible_network.parameters()) == 2_275_746
    assert sum(p.numel() for p in model.parameters()) == 13_847_778


def test_authors_checkpoint_loads_strictly_and_reproduces_outputs():
    torch.manual_seed(0)
    src = NeuralParts(n_primitives=2, feature_size=16, hidden_size=16, proj_dims=8)
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_()
    state = authors_layout(src)
    assert sum(k.endswith("projection.proj.0.weight") for k in state) == 5  # _projection + 4 layers
    dst = NeuralParts(n_primitives=2, feature_size=16, hidden_size=16, proj_dims=8)
    missing, unexpected = load_authors_state_dict(dst, state)
    assert missing == [] and unexpected == []
    images = torch.randn(2, 3, 32, 32)
    a, b = src.predict(images), dst.predict(images)
    x = torch.rand(2, 20, 3) - 0.5
    torch.testing.assert_close(a.implicit(x).value, b.implicit(x).value, rtol=1e-5, atol=1e-5)
    for layer_a, layer_b in zip(src.invertible_network.layers, dst.invertible_network.layers):
        assert torch.equal(layer_a.mask, layer_b.mask)


def test_authors_checkpoint_errors_list_keys():
    model = NeuralParts(n_primitives=2, feature_size=16, hidden_size=16, proj_dims=8)
    state = authors_layout(model)
    del state["primitive_embedding"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="primitive_embedding") as err:
        load_authors_state_dict(model, state)
    assert "extra.weight" in str(err.value)
    missing, unexpected = load_authors_state_dict(model, state, strict=False)
    assert missing == ["primitive_embedding"] and unexpected == ["extra.weight"]
    state = authors_layout(model)
    state["invertible_network.layers.2.projection.proj.0.weight"] += 1
    with pytest.raises(ValueError, match="shared projection"):
        load_authors_state_dict(model, state)
    state = authors_layout(model)
    state["primitive_embedding"] = torch.zeros(3, 16)
    with pytest.raises(ValueError, match="shape"):
        load_authors_state_dict(model, state, strict=False)


def test_torchvision_weights_load_strictly_and_skip_fc(tmp_path):
    encoder = ResNet18(feature_size=32)
    tv = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in encoder.state_dict().items()
          if not k.startswith("fc.")}
    tv["fc.weight"], tv["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    path = tmp_path / "resnet18.pth"
    torch.save(tv, path)
    skipped = encoder.load_torchvision_weights(path)
    assert skipped == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(encoder.layer3[1].conv2.weight, tv["layer3.1.conv2.weight"])
    del tv["layer1.0.bn1.running_mean"]
    with pytest.raises(ValueError, match="layer1.0.bn1.running_mean"):
        encoder.load_torchvision_weights(tv)
    with pytest.raises(FileNotFoundError):
        encoder.load_torchvision_weights(tmp_path / "missing.pth")


def test_frozen_batchnorm_keeps_statistics_in_train_mode():
    frozen, live = ResNet18(8, freeze_bn=True), ResNet18(8, freeze_bn=False)
    frozen.train(), live.train()
    before = frozen.bn1.running_mean.clone()
    frozen(torch.randn(2, 3, 32, 32)), live(torch.randn(2, 3, 32, 32))
    assert torch.equal(frozen.bn1.running_mean, before)
    assert not torch.equal(live.bn1.running_mean, before)


def test_primitives_surface_points_lie_on_their_primitive():
    torch.manual_seed(0)
    model = NeuralParts(n_primitives=3, feature_size=16, hidden_size=16, proj_dims=8, encoder="latent", n_shapes=2)
    prims = model.predict(torch.tensor([0, 1]))
    y = prims.to_world(prims.sample_sphere(64))
    assert y.shape == (2, 64, 3, 3)
    g = prims.implicit(y.reshape(2, -1, 3), per_primitive=True).per_primitive.view(2, 64, 3, 3)
    own = torch.diagonal(g, dim1=2, dim2=3)
    assert own.abs().max() < 1e-5  # a surface point has g ~ 0 in its own primitive
    on_excl = prims.union_mask(y)
    on_incl = prims.union_mask(y, test_own_primitive=True)
    assert torch.all(on_incl <= on_excl)  # testing the own primitive can only drop points
    verts, faces = prims.meshes(200)
    assert verts.shape[:2] == (2, 3) and faces.shape[1] == 3


def test_latent_encoder_and_bad_arguments():
    with pytest.raises(ValueError, match="n_shapes"):
        NeuralParts(encoder="latent")
    with pytest.raises(ValueError, match="encoder"):
        NeuralParts(encoder="vgg")
    with pytest.raises(ValueError, match="n_primitives"):
        NeuralParts(n_primitives=0)


def test_primitives_points_and_export(tmp_path):
    pytest.importorskip("trimesh")
    torch.manual_seed(0)
    model = NeuralParts(n_primitives=2, feature_size=8, hidden_size=16, proj_dims=8, encoder="latent", n_shapes=1)
    prims = model.predict(torch.tensor([0]))
    points, on = prims.points(32)
    assert points.shape == (1, 32, 2, 3) and on.shape == (1, 32, 2) and on.dtype == torch.bool
    assert torch.equal(on, prims.union_mask(points))
    written = prims.export(tmp_path, min_vertices=100)
    assert sorted(p.name for p in written) == ["part_000.obj", "part_001.obj", "parts.ply"]
    assert all(p.stat().st_size > 0 for p in written)


def test_atlasnet_ablation_maps_sphere_and_labels_by_containment():
    torch.manual_seed(0)
    model = NeuralParts(n_primitives=2, feature_size=8, encoder="latent", n_shapes=1, network="atlasnet")
    model.eval()
    prims = model(torch.tensor([0]))
    y = prims.to_world(prims.sample_sphere(50))
    assert y.shape == (1, 50, 2, 3) and y.abs().max() < 1
    verts, faces = prims.meshes(200)
    centre = verts[0, 0].mean(0)  # inside primitive 0 (the image of a sphere is star-shaped here)
    far = torch.tensor([5.0, 5.0, 5.0])
    u = prims.implicit(torch.stack([centre, far])[None], per_primitive=True)
    assert u.per_primitive[0, 0, 0] == -0.25 and (u.per_primitive[0, 1] == 0.25).all()
    with pytest.raises(ValueError, match="no inverse"):
        prims.owner_implicit(far.view(1, 1, 3), torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="network"):
        NeuralParts(network="realnvp")


def test_atlasnet_training_step_learns_through_forward_map():
    from neural_parts.config import LossConfig
    from neural_parts.objective import compute_losses

    torch.manual_seed(0)
    model = NeuralParts(n_primitives=2, feature_size=8, encoder="latent", n_shapes=1, network="atlasnet")
    batch = {"volume_points": torch.rand(1, 64, 3) - 0.5, "volume_labels": (torch.rand(1, 64) > 0.5).float(),
             "volume_weights": torch.ones(1, 64), "surface_points": torch.rand(1, 32, 3) - 0.5,
             "surface_normals": torch.nn.functional.normalize(torch.randn(1, 32, 3), dim=-1)}
    cfg = LossConfig(weights={"chamfer": 0.3, "occupancy": 1.0, "coverage": 0.01, "overlap": 0.1},
                     n_points_on_sphere=16)
    out = compute_losses(model(torch.tensor([0])), batch, cfg)
    out["total"].backward()
    assert model.invertible_network.linear_layers[0].weight.grad.abs().sum() > 0


def test_atlasnet_implicit_leaves_batchnorm_alone_and_meshes_the_trained_surface():
    """The containment mesh is the icosphere mapped with the BatchNorm statistics of the training forward
    (the surface the losses saw); computing it moves no running statistic."""
    from neural_parts.geometry import icosphere

    torch.manual_seed(0)
    model = NeuralParts(n_primitives=2, feature_size=8, encoder="latent", n_shapes=1, network="atlasnet").train()
    net = model.invertible_network
    prims = model(torch.tensor([0]))
    z = prims.sample_sphere(64)
    prims.to_world(z)  # the training forward
    stats = [(bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)) for bn in net.batch_norms]
    x = torch.rand(1, 300, 3) * 2 - 1
    g = prims.implicit(x, per_primitive=True).per_primitive
    for bn, (mean, var, n) in zip(net.batch_norms, stats):
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
        assert int(bn.num_batches_tracked) == n
    # the same mesh by hand: the icosphere goes through the MLP with the training batch's statistics
    v, faces = icosphere(net.mesh_vertices, net.radius)
    verts = net._map(v[None, :, None].expand(1, -1, 2, -1), prims.cond, fixed=net._trained_stats)
    from npkernels import inside_mesh
    for m in range(2):
        inside = inside_mesh(verts[0, :, m].detach(), faces, x[0])
        assert torch.equal(g[0, :, m] < 0, inside)
    batch_stats = net._trained_stats[0]
    first = net.map_to_feature_dims(z.permute(0, 2, 3, 1).reshape(2, 3, 64)) + prims.cond.reshape(2, -1, 1)
    torch.testing.assert_close(batch_stats[0], first.mean((0, 2)))


def test_projection_init_gain_scales_only_the_first_projection_weights():
    """projection_layer.init_gain multiplies the first Linear's default initial weights; everything else,
    and the random stream (so gain 1 is the model as before), is unchanged."""
    from neural_parts.config import load_config

    models = {}
    for gain in (1.0, 4.0):
        torch.manual_seed(0)
        cfg = load_config("default", [f"projection_layer.init_gain={gain}"])
        models[gain] = NeuralParts.from_config(cfg).state_dict()
    torch.manual_seed(0)
    plain = NeuralParts(n_primitives=5, feature_size=128, hidden_size=128, proj_dims=64,
                        freeze_bn=False).state_dict()
    first = "projection.proj.0.weight"  # the shared projection, under each coupling layer too
    for name, value in models[1.0].items():
        torch.testing.assert_close(value, plain[name], rtol=0, atol=0)
        expected = 4.0 * value if name.endswith(first) else value
        torch.testing.assert_close(models[4.0][name], expected, rtol=0, atol=0)
    # PyTorch's default bound for 3 inputs is 1/sqrt(3)
    assert models[4.0]["invertible_network." + first].abs().max() > 1.0
