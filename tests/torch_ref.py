"""float64 torch references for the algebra tests (ONNX pads, conv forms)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from onnxrep.algebra import ConvForm

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def t64(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64, order="C", copy=True))


def torch_pads(pads) -> list[int]:
    """ONNX ``(b_1..b_n, e_1..e_n)`` -> ``F.pad``'s ``(b_n, e_n, b_{n-1}, e_{n-1}, ...)``."""
    n = len(pads) // 2
    out: list[int] = []
    for ax in reversed(range(n)):
        out += [int(pads[ax]), int(pads[n + ax])]
    return out


def run_conv(form: ConvForm, x: np.ndarray) -> np.ndarray:
    """``form`` on ``x``: F.pad with the form's ONNX pads (negative = crop), then the conv."""
    xt = F.pad(t64(x), torch_pads(form.pads))
    y = CONV[form.n_spatial](xt, t64(form.weight), t64(form.bias), stride=tuple(form.strides),
                             padding=0, dilation=tuple(form.dilations), groups=form.groups)
    return y.numpy()


def assert_close(actual, ref, rtol: float = 1e-9) -> None:
    actual, ref = np.asarray(actual, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert actual.shape == ref.shape, (actual.shape, ref.shape)
    assert ref.size > 0
    err = float(np.max(np.abs(actual - ref)))
    bound = rtol * (1.0 + float(np.max(np.abs(ref))))
    assert err <= bound, f"max abs diff {err:.3e} > {bound:.3e}"


def assert_relative(y, ref, rtol: float = 1e-4) -> None:
    """``max |y - ref| <= rtol * max |ref|``: the reference networks' tolerance (same shapes, a reference
    that is not all zero)."""
    y, ref = np.asarray(y, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    err, scale = float(np.abs(y - ref).max()), float(np.abs(ref).max())
    assert scale > 0
    assert err <= rtol * scale, f"max abs err {err:.3e} > {rtol:g} * max|y| ({scale:.3e})"


def count_modules(model, cls) -> int:
    """Modules of type ``cls`` in ``model``."""
    return sum(isinstance(m, cls) for m in model.modules())


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def seeded_input(*shape, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    """A standard-normal input of ``shape`` from its own generator (independent of the global seed)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def randomized_eval(module, seed: int = 0):
    """``module`` with random BN statistics and affine parameters, in eval mode."""
    from models.common import randomize_bn_
    randomize_bn_(module, seed)
    return module.eval()
