"""The same network and loss in PyTorch, for benchmarks and comparisons only (never imported
by nst_onnx). Weights come from nst_onnx's numpy loader, so both sides use identical numbers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nst_onnx.config import LossSpec
from nst_onnx.graphs.weights import Weights
from nst_onnx.vgg19 import MEAN_BGR, convs_up_to


class TorchLoss:
    """Gatys loss on VGG19 exactly as docs/design.md defines it (autograd for the gradient).
    ``device``: 'cpu' or 'cuda' (TF32 follows torch's own switches)."""

    def __init__(self, weights: Weights, spec: LossSpec, threads: int, device: str = "cpu"):
        torch.set_num_threads(threads)
        self.spec = spec
        self.device = device
        self.convs = [(c, torch.from_numpy(weights.layers[c.name].weight.copy()).to(device),
                       torch.from_numpy(weights.layers[c.name].b.copy()).to(device))
                      for c in convs_up_to(list(spec.all_layers))]
        self.mean = torch.tensor(MEAN_BGR, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.targets: dict[str, torch.Tensor] = {}

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = x.flip(1) - self.mean  # RGB → BGR, Caffe mean
        out = {}
        for conv, w, b in self.convs:
            if conv.name.endswith("_1") and conv.name != "conv1_1":
                h = (F.max_pool2d if self.spec.pooling == "max" else F.avg_pool2d)(h, 2, 2)
            h = F.relu(F.conv2d(h, w, b, padding=1))
            out[conv.relu] = h
        return out

    @staticmethod
    def gram(f: torch.Tensor) -> torch.Tensor:
        fm = f.reshape(f.shape[1], -1)
        return fm @ fm.T / fm.numel()

    def set_targets(self, content: np.ndarray, style: np.ndarray) -> None:
        with torch.no_grad():
            fc = self.features(torch.from_numpy(content).float().to(self.device))
            fs = self.features(torch.from_numpy(style).float().to(self.device))
        self.targets = {n: fc[n] for n in self.spec.content_layers}
        self.targets |= {"gram_" + n: self.gram(fs[n]) for n in self.spec.style_layers}

    def loss(self, x: torch.Tensor, wc=5.0, ws=100.0, wtv=1e-3) -> torch.Tensor:
        f = self.features(x)
        total = sum(wc * torch.mean((f[n] - self.targets[n]) ** 2) for n in self.spec.content_layers)
        total = total + sum(ws * torch.mean((self.gram(f[n]) - self.targets["gram_" + n]) ** 2)
                            for n in self.spec.style_layers)
        dy = x[:, :, 1:, :] - x[:, :, :-1, :]
        dx = x[:, :, :, 1:] - x[:, :, :, :-1]
        return total + wtv * 0.5 * ((dy ** 2).sum() + (dx ** 2).sum())

    def set_fixed(self, fixed: dict[str, np.ndarray]) -> None:
        """Take the targets of an nst_onnx problem (``problem.evaluator.fixed``)."""
        self.targets = {n: torch.from_numpy(fixed[f"target_{n}"]).to(self.device)
                        for n in self.spec.content_layers}
        self.targets |= {"gram_" + n: torch.from_numpy(fixed[f"target_gram_{n}"]).to(self.device)
                         for n in self.spec.style_layers}

    def loss_and_grad(self, x_np: np.ndarray, **weights) -> tuple[float, np.ndarray]:
        x = torch.from_numpy(x_np).float().to(self.device).requires_grad_(True)
        loss = self.loss(x, **weights)
        loss.backward()
        return float(loss), x.grad.cpu().numpy()


def torch_lbfgs(tl: TorchLoss, x0: np.ndarray, iterations: int, history: int, **weights):
    """torch.optim.LBFGS without line search (as jcjohnson/neural-style), unbounded, from
    ``x0`` (1, 3, H, W): returns (x, iterations, evaluations, seconds)."""
    import time

    x = torch.from_numpy(np.ascontiguousarray(x0, np.float32)).to(tl.device).requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=iterations, history_size=history,
                            tolerance_grad=-1, tolerance_change=-1)
    evals = 0

    def closure():
        nonlocal evals
        evals += 1
        opt.zero_grad()
        loss = tl.loss(x, **weights)
        loss.backward()
        return loss
    t = time.perf_counter()
    opt.step(closure)
    if tl.device == "cuda":
        torch.cuda.synchronize()
    return x.detach(), opt.state[opt._params[0]]["n_iter"], evals, time.perf_counter() - t
