"""Loading PyTorch modules and checkpoints, saving back into PyTorch, folding BatchNorm.

The loading matrix (each module type x state-dict variant) and the folding checks compare
with PyTorch itself and skip when it is not installed; the prefix, key and dtype handling of
``load_state_dict`` is also checked without it.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnorm


def _torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")


def modules(torch):
    """(name, module, input shape): every module type with its hyperparameter variants."""
    nn = torch.nn
    out = [
        ("BatchNorm1d", nn.BatchNorm1d(5), (4, 5, 7)),
        ("BatchNorm1d no affine, momentum None", nn.BatchNorm1d(5, affine=False, momentum=None), (4, 5)),
        ("BatchNorm2d eps 1e-3", nn.BatchNorm2d(6, eps=1e-3, momentum=0.3), (3, 6, 4, 5)),
        ("BatchNorm2d no running stats", nn.BatchNorm2d(6, track_running_stats=False), (3, 6, 4, 5)),
        ("BatchNorm3d float64", nn.BatchNorm3d(3).double(), (2, 3, 2, 3, 4)),
        ("SyncBatchNorm", nn.SyncBatchNorm(4), (3, 4, 5)),
        ("InstanceNorm1d", nn.InstanceNorm1d(5), (3, 5, 8)),
        ("InstanceNorm2d affine, running", nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
         (3, 4, 5, 6)),
        ("InstanceNorm3d eps", nn.InstanceNorm3d(2, eps=1e-2, affine=True), (2, 2, 3, 4, 5)),
        ("GroupNorm", nn.GroupNorm(3, 6), (2, 6, 4, 5)),
        ("GroupNorm no affine eps", nn.GroupNorm(2, 6, eps=1e-3, affine=False), (2, 6, 7)),
        ("LayerNorm", nn.LayerNorm(8), (3, 5, 8)),
        ("LayerNorm 2-D, no bias", nn.LayerNorm((4, 8), bias=False), (3, 4, 8)),
        ("LayerNorm no affine", nn.LayerNorm(8, elementwise_affine=False, eps=1e-2), (3, 8)),
        ("RMSNorm", nn.RMSNorm(8), (3, 5, 8)),
        ("RMSNorm eps, no affine", nn.RMSNorm((4, 8), eps=1e-3, elementwise_affine=False), (3, 4, 8)),
    ]
    gen = torch.Generator().manual_seed(0)
    for _, module, shape in out:  # trained-looking state: random parameters and statistics
        with torch.no_grad():
            for tensor in module.state_dict().values():
                if tensor.dtype.is_floating_point:
                    tensor.copy_(torch.rand(tensor.shape, generator=gen, dtype=tensor.dtype) + 0.5)
            if getattr(module, "num_batches_tracked", None) is not None:
                module.num_batches_tracked.fill_(7)
    return out


def _compare(layer, module, x, torch, tol):
    got = layer(x.numpy())
    want = module(x).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_from_torch_matches_every_module(mode):
    torch = _torch()
    for name, module, shape in modules(torch):
        module.train(mode == "train")
        layer = fastnorm.from_torch(module)
        assert layer.training == module.training, name
        assert layer.eps == module.eps, name
        dtype = torch.float64 if "float64" in name else torch.float32
        x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1)) * 3 + 1
        _compare(layer, module, x, torch, 1e-5 if dtype == torch.float32 else 1e-12)
        for key, value in module.state_dict().items():  # the same state afterwards, too
            if key == "num_batches_tracked" and "InstanceNorm" in name:
                continue  # fastnorm's InstanceNorm counts batches, PyTorch's does not (docs/user-guide/inference.md)
            np.testing.assert_allclose(layer.state_dict()[key], value.numpy(), rtol=1e-6, err_msg=f"{name} {key}")


def test_from_torch_modules_of_a_model_and_channels_last():
    torch = _torch()
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Sequential(nn.GroupNorm(2, 6), nn.Flatten(), nn.LayerNorm(96))).eval()
    layers = fastnorm.from_torch_modules(model)
    assert list(layers) == ["1", "3.0", "3.2"]
    assert isinstance(layers["1"], fastnorm.BatchNorm2d) and layers["3.0"].num_groups == 2
    nhwc = fastnorm.from_torch(model[1], axis=-1)
    x = torch.randn(2, 6, 4, 4)
    got = nhwc(np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), model[1](x).detach().numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="PyTorch normalization module"):
        fastnorm.from_torch(nn.ReLU())


@pytest.mark.parametrize("variant", ["prefixed model dict", "no num_batches_tracked", "float16",
                                     "bfloat16", "float64 numpy"])
def test_checkpoint_variants_load(variant):
    torch = _torch()
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 2)
    state = model.state_dict()
    layer = fastnorm.BatchNorm1d(6).eval()
    prefix = "1."
    if variant == "no num_batches_tracked":
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    elif variant in ("float16", "bfloat16"):
        cast = getattr(torch, variant)
        state = {k: v.to(cast) if v.dtype.is_floating_point else v for k, v in state.items()}
    elif variant == "float64 numpy":
        state = {k: v.double().numpy() if v.dtype.is_floating_point else v.numpy() for k, v in state.items()}
    result = layer.load_state_dict(state, prefix=prefix)
    assert result.missing_keys == [] and result.unexpected_keys == []
    tol = {"float16": 1e-3, "bfloat16": 1e-2}.get(variant, 1e-7)
    for key in ("weight", "bias", "running_mean", "running_var"):
        np.testing.assert_allclose(layer.state_dict()[key], model[1].state_dict()[key].numpy(), rtol=tol, atol=tol)


def test_state_goes_back_into_torch():
    torch = _torch()
    for name, module, shape in modules(torch):
        layer = fastnorm.from_torch(module)
        for array in (getattr(layer, n, None) for n in ("weight", "bias", "running_mean", "running_var")):
            if array is not None:
                array[...] = np.random.default_rng(0).uniform(0.5, 2, array.shape)
        module.load_state_dict({k: torch.as_tensor(v) for k, v in layer.state_dict().items()})
        for key, value in layer.state_dict().items():
            np.testing.assert_array_equal(module.state_dict()[key].numpy(), value, err_msg=f"{name} {key}")
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    bn = fastnorm.BatchNorm2d(3)
    bn.running_mean[:] = [1, 2, 3]
    merged = {**model.state_dict(), **{k: torch.as_tensor(v) for k, v in bn.state_dict(prefix="1.").items()}}
    model.load_state_dict(merged)
    np.testing.assert_array_equal(model[1].running_mean.numpy(), [1, 2, 3])


def test_load_state_dict_keys_and_errors():
    """Without PyTorch: prefixes, missing/unexpected keys, errors naming the key."""
    bn = fastnorm.BatchNorm1d(3)
    full = {"features.0.weight": np.ones(3), "features.0.bias": np.zeros(3),
            "features.0.running_mean": np.zeros(3), "features.0.running_var": np.ones(3),
            "features.1.weight": np.ones(5)}
    assert bn.load_state_dict(full, prefix="features.0.") == ([], [])
    result = bn.load_state_dict({"bn.weight": np.ones(3), "bn.extra": np.ones(1)}, strict=False, prefix="bn.")
    assert result.missing_keys == ["bn.bias", "bn.running_mean", "bn.running_var"]
    assert result.unexpected_keys == ["bn.extra"]
    with pytest.raises(ValueError, match=r"missing \['bias'"):
        bn.load_state_dict({"weight": np.ones(3)})
    before = bn.state_dict()
    with pytest.raises(ValueError, match=r"state_dict\['x.running_var'\] has shape"):
        bn.load_state_dict({"x.weight": np.full(3, 2.0), "x.bias": np.zeros(3), "x.running_mean": np.zeros(3),
                            "x.running_var": np.ones(4)}, prefix="x.")
    with pytest.raises(TypeError, match=r"state_dict\['bias'\] cannot be read"):
        bn.load_state_dict({"weight": np.ones(3), "bias": [1, [2]], "running_mean": np.zeros(3),
                            "running_var": np.ones(3)})
    for key, value in before.items():  # failed loads change nothing
        np.testing.assert_array_equal(bn.state_dict()[key], value)
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed")
    bn.load_state_dict({"weight": np.full(3, 1.5, ml_dtypes.bfloat16), "bias": np.zeros(3, np.float16),
                        "running_mean": np.zeros(3), "running_var": np.ones(3)})
    np.testing.assert_array_equal(bn.weight, 1.5)


# -- folding ------------------------------------------------------------------------------------


def _bn(c, rng):
    bn = fastnorm.BatchNorm(c, eps=1e-3).eval()
    bn.running_mean[:] = rng.standard_normal(c)
    bn.running_var[:] = rng.uniform(0.5, 2, c)
    bn.weight[:] = rng.uniform(0.5, 2, c)
    bn.bias[:] = rng.standard_normal(c)
    return bn


def test_fold_into_numpy_linear_layers(rng):
    """Against the unfolded sequence, in float64: x @ W (out on -1), W @ x (out on 0)."""
    bn = _bn(6, rng)
    x = rng.standard_normal((10, 4))
    w, b = rng.standard_normal((4, 6)), rng.standard_normal(6)
    w64, b64 = w.astype(np.float64), b
    fw, fb = fastnorm.fold_batch_norm(w64, b64, bn, out_axis=-1)
    unfused = bn(x @ w64 + b64)
    np.testing.assert_allclose(x @ fw + fb, unfused, rtol=1e-6, atol=1e-6)  # bn's float32 state
    fw0, fb0 = fastnorm.fold_batch_norm(w64.T, None, running_mean=bn.running_mean,
                                        running_var=bn.running_var, bn_weight=bn.weight, bn_bias=bn.bias,
                                        eps=bn.eps)
    np.testing.assert_allclose(x @ fw0.T + fb0, bn(x @ w64), rtol=1e-6, atol=1e-6)
    assert fw0.dtype == np.float64
    with pytest.raises(ValueError, match="bn has 6 channels"):
        fastnorm.fold_batch_norm(w, b, bn, out_axis=0)
    with pytest.raises(TypeError, match="either bn or its arrays"):
        fastnorm.fold_batch_norm(w, b, bn, eps=1e-5, out_axis=-1)


def test_fold_matches_torch_fusion(rng):
    torch = _torch()
    from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

    bn = _bn(6, rng)
    t = {k: torch.as_tensor(v) for k, v in bn.state_dict().items()}
    conv_w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    conv_b = rng.standard_normal(6).astype(np.float32)
    want_w, want_b = fuse_conv_bn_weights(torch.as_tensor(conv_w), torch.as_tensor(conv_b), t["running_mean"],
                                          t["running_var"], bn.eps, t["weight"], t["bias"])
    got_w, got_b = fastnorm.fold_batch_norm(conv_w, conv_b, bn)
    np.testing.assert_allclose(got_w, want_w.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_b, want_b.detach().numpy(), rtol=1e-6, atol=1e-6)
    # channels-last kernel (kh, kw, in, out): the same numbers
    hwio_w, _ = fastnorm.fold_batch_norm(np.ascontiguousarray(conv_w.transpose(2, 3, 1, 0)), conv_b, bn,
                                         out_axis=-1)
    np.testing.assert_allclose(hwio_w.transpose(3, 2, 0, 1), got_w, rtol=1e-7)
    lin_w = rng.standard_normal((6, 5)).astype(np.float32)
    want_w, want_b = fuse_linear_bn_weights(torch.as_tensor(lin_w), None, t["running_mean"], t["running_var"],
                                            bn.eps, t["weight"], t["bias"])
    got_w, got_b = fastnorm.fold_batch_norm(lin_w, None, bn)
    np.testing.assert_allclose(got_w, want_w.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_b, want_b.detach().numpy(), rtol=1e-6, atol=1e-6)
    # and the folded convolution equals conv -> bn in PyTorch
    conv = torch.nn.Conv2d(3, 6, 3)
    seq_bn = torch.nn.BatchNorm2d(6, eps=bn.eps).eval()
    seq_bn.load_state_dict(t)
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(conv_w))
        conv.bias.copy_(torch.as_tensor(conv_b))
        x = torch.randn(2, 3, 8, 8)
        unfused = seq_bn(conv(x))
        conv.weight.copy_(torch.as_tensor(fastnorm.fold_batch_norm(conv_w, conv_b, bn)[0]))
        conv.bias.copy_(torch.as_tensor(fastnorm.fold_batch_norm(conv_w, conv_b, bn)[1]))
        np.testing.assert_allclose(conv(x).numpy(), unfused.numpy(), rtol=1e-4, atol=1e-5)


def test_end_to_end_example():
    """examples/torch_to_numpy_inference.py: a residual CNN (BatchNorm folded, GroupNorm) and a
    transformer block (LayerNorm, RMSNorm) trained in PyTorch, run in NumPy + fastnorm in
    inference mode, match PyTorch's evaluation within 1e-4."""
    _torch()
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "torch_to_numpy_inference.py"
    spec = importlib.util.spec_from_file_location("torch_to_numpy_inference", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    diffs = example.run()
    assert set(diffs) == {"cnn", "block"}
    assert all(d < 1e-4 for d in diffs.values()), diffs
