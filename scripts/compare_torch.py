"""Quality and wall time against a plain PyTorch implementation of the same loss.

nst-onnx (--optimizer, by default scipy's L-BFGS-B with history 10, bounds [0, 255]) against torch.optim.LBFGS
(history 100, no line search — as jcjohnson/neural-style), same weights, same targets, same
initial image, same iteration budget. Prints both final losses (on the same objective) and
wall times, and writes content | nst-onnx | torch side by side.

    python scripts/compare_torch.py --size 256 --iterations 300 -o compare.png

PyTorch is a benchmark-only dependency: `pip install torch==2.13.0`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the `nst` command does (see cli.py)

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--content", default=str(ROOT / "examples/tubingen.jpg"))
    ap.add_argument("--style", default=str(ROOT / "examples/starry_night.jpg"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--history", type=int, default=10)
    ap.add_argument("--optimizer", default="lbfgs", help="ours: lbfgs (scipy L-BFGS-B, the "
                    "figures in docs/benchmarks.md), lbfgs-onnx or adam")
    ap.add_argument("-o", "--output", default="compare_torch.png")
    args = ap.parse_args()

    import torch
    from torch_reference import TorchLoss, torch_lbfgs

    from nst_onnx import StyleTransfer
    from nst_onnx.config import LossSpec
    from nst_onnx.graphs.export import export_model
    from nst_onnx.graphs.weights import load_weights
    from nst_onnx.io.images import to_pil

    weights = load_weights()
    models = Path(tempfile.mkdtemp(prefix="nst-compare-"))
    export_model(LossSpec(), models, weights=weights)
    st = StyleTransfer(device="cpu", threads=args.threads, models_dir=models)
    problem = st.prepare(args.content, args.style, size=args.size, size_consistent=False)

    t0 = time.perf_counter()
    ours = st.run(problem, iterations=args.iterations, history=args.history,
                  optimizer=args.optimizer)
    t_ours = time.perf_counter() - t0

    # torch: the very same targets (copied from our problem) and initial image
    tl = TorchLoss(weights, st.spec, args.threads)
    tl.set_fixed(problem.evaluator.fixed)
    x, iters_torch, evals, t_torch = torch_lbfgs(tl, problem.content, args.iterations, 100)
    with torch.no_grad():
        torch_loss = float(tl.loss(x))
        x_clipped = x.clamp(0, 255)
        torch_loss_clipped = float(tl.loss(x_clipped))
    ours_loss = problem.evaluate(ours.optimize.x).loss

    result = {
        "size": list(problem.shape[:2]), "iterations": args.iterations,
        "nst_onnx": {"final_loss": ours_loss, "seconds": t_ours,
                     "iterations": ours.optimize.iterations,
                     "evaluations": ours.optimize.evaluations, "history": args.history,
                     "optimizer": args.optimizer},
        "torch_lbfgs": {"final_loss": torch_loss, "final_loss_clipped_to_0_255": torch_loss_clipped,
                        "seconds": t_torch, "iterations": iters_torch, "evaluations": evals,
                        "history": 100},
        "loss_ratio": ours_loss / torch_loss,
        "time_ratio": t_ours / t_torch,
    }
    print(json.dumps(result, indent=2))
    content = to_pil(problem.content)
    torch_img = to_pil(x_clipped.detach().numpy())
    w, h = content.size
    side = Image.new("RGB", (3 * w, h))
    for i, img in enumerate((content, ours.image, torch_img)):
        side.paste(img, (i * w, 0))
    side.save(args.output)
    print(f"wrote {args.output}: content | nst-onnx | torch")


if __name__ == "__main__":
    main()
