"""Train in PyTorch, run with NumPy + fastnorm: a small residual CNN and a transformer block.

    pip install -e . torch
    python examples/torch_to_numpy_inference.py

Both models train for a few steps in PyTorch and are exported as a state dict of NumPy arrays.
The NumPy versions run the convolutions, matrix products and attention in plain NumPy and every
normalization with fastnorm:

* the CNN folds its first BatchNorm into the convolution before it (``fold_batch_norm``) and
  runs the second with the layer ``from_torch_modules`` made, with the residual block's tail
  ``relu(bn(conv(h)) + h)`` fused into the normalization's pass (``activation="relu"``,
  ``shortcut=h``); a GroupNorm follows;
* the transformer block (pre-norm: LayerNorm before attention, RMSNorm before the MLP) takes
  its layers from ``from_torch_modules`` too; the attention's residual add and the RMSNorm
  after it run as one pass (``residual=``, which returns the normalized value and the sum);

all inside ``fastnorm.inference_mode()``, so no layer keeps its input.  Outputs match PyTorch's
evaluation mode within 1e-4 (float32).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import fastnorm


class ResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8, eps=1e-3)
        self.gn = nn.GroupNorm(2, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)) + h)
        return self.head(self.gn(h).mean(dim=(2, 3)))


class Block(nn.Module):
    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.ln = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.rms = nn.RMSNorm(d, eps=1e-6)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln(x)).split(d, dim=-1)
        split = lambda a: a.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.proj((att @ split(v)).transpose(1, 2).reshape(b, t, d))
        return x + self.down(nn.functional.gelu(self.up(self.rms(x))))


def train(model: nn.Module, make_batch, steps: int = 5) -> nn.Module:
    """A few SGD steps (they move the running statistics and parameters off their defaults)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        x, target = make_batch()
        loss = ((model(x) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# -- NumPy + fastnorm --------------------------------------------------------------------------


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pad: int) -> np.ndarray:
    """``(N, C, H, W)`` convolution with stride 1, in NumPy."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, w.shape[2:], axis=(2, 3))
    y = np.einsum("nchwij,ocij->nohw", windows, w, optimize=True)
    return y if b is None else y + b[None, :, None, None]


def cnn_numpy(state: dict, norms: dict, x: np.ndarray) -> np.ndarray:
    w1, b1 = fastnorm.fold_batch_norm(state["conv1.weight"], None, norms["bn1"])  # conv1 + bn1
    h = np.maximum(conv2d(x, w1, b1, 1), 0)
    bn2 = norms["bn2"]
    bn2.activation = "relu"  # relu(bn2(conv2(h)) + h) in one pass over memory
    h = bn2(conv2d(h, state["conv2.weight"], state["conv2.bias"], 1), shortcut=h)
    pooled = norms["gn"](h).mean(axis=(2, 3))
    return pooled @ state["head.weight"].T + state["head.bias"]


def gelu(a: np.ndarray) -> np.ndarray:
    from math import erf, sqrt

    return 0.5 * a * (1.0 + np.vectorize(erf)(a / sqrt(2.0)).astype(a.dtype))


def block_numpy(state: dict, norms: dict, x: np.ndarray, heads: int = 2) -> np.ndarray:
    b, t, d = x.shape
    linear = lambda a, name: a @ state[f"{name}.weight"].T + state[f"{name}.bias"]
    q, k, v = np.split(linear(norms["ln"](x), "qkv"), 3, axis=-1)
    split = lambda a: a.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)
    scores = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(d // heads)
    att = np.exp(scores - scores.max(axis=-1, keepdims=True))
    att /= att.sum(axis=-1, keepdims=True)
    attended = linear((att @ split(v)).transpose(0, 2, 1, 3).reshape(b, t, d), "proj")
    normed, x = norms["rms"](attended, residual=x)  # x = x + attended; normed = rms(x)
    return x + linear(gelu(linear(normed, "up")), "down")


def run() -> dict[str, float]:
    """Train, export, run both ways; returns the largest absolute difference per model."""
    torch.manual_seed(0)
    cnn = train(ResidualCNN(), lambda: (torch.randn(8, 3, 12, 12), torch.randn(8, 10)))
    block = train(Block(), lambda: (torch.randn(4, 6, 16), torch.randn(4, 6, 16)))
    diffs = {}
    for name, model, x in (("cnn", cnn, torch.randn(5, 3, 12, 12)), ("block", block, torch.randn(3, 6, 16))):
        state = {k: v.detach().numpy() for k, v in model.state_dict().items()}  # the export
        norms = fastnorm.from_torch_modules(model)
        with torch.no_grad():
            want = model(x).numpy()
        with fastnorm.inference_mode():
            got = (cnn_numpy if name == "cnn" else block_numpy)(state, norms, x.numpy())
        assert all(layer._saved is None for layer in norms.values())  # nothing kept
        diffs[name] = float(np.max(np.abs(got - want)))
    return diffs


if __name__ == "__main__":
    for model, diff in run().items():
        print(f"{model}: NumPy + fastnorm vs PyTorch eval, max |difference| {diff:.1e}")
