"""Measure average pooling's per-channel magnitude factors (nst_onnx/calibrate.py).

Calibrates on three pictures, then reports how well the factors carry over to two pictures
it did not see (the bundled examples), per pool: the median over channels of
|log(factor measured on the held-out picture / shipped factor)|.

    python scripts/calibrate_pooling.py                  # report only
    python scripts/calibrate_pooling.py --write          # update nst_onnx/avg_pool_scales.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "images"
CALIBRATE = ["shipwreck.jpg", "the_scream.jpg", "woman-with-hat-matisse.jpg"]
HELD_OUT = [ROOT / "examples" / "tubingen.jpg", ROOT / "examples" / "starry_night.jpg"]


def main() -> None:
    from nst_onnx.graphs.calibrate import SCALES_FILE, avg_pool_scales
    from nst_onnx.graphs.weights import load_weights
    from nst_onnx.io.images import fit_longest_side, load_image, to_nchw

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", nargs="+", default=[str(SHARED / n) for n in CALIBRATE])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--write", action="store_true", help=f"write {SCALES_FILE.name}")
    args = ap.parse_args()
    weights = load_weights(None, None, print)

    def load(path):
        return to_nchw(fit_longest_side(load_image(path, "image"), args.size))

    scales = avg_pool_scales(weights, [load(p) for p in args.images])
    for pool, f in scales.items():
        print(f"{pool}: median {np.median(f):.3f}  range {f.min():.2f}–{f.max():.2f}")
    for path in HELD_OUT:
        own = avg_pool_scales(weights, [load(path)])
        print(f"held out {path.name}: " + "  ".join(
            f"{p} {np.median(np.abs(np.log(own[p] / scales[p]))):.3f}" for p in scales))
    if args.write:
        about = {"images": [Path(p).name for p in args.images], "longest_side": args.size,
                 "weights": weights.source, "made_by": "scripts/calibrate_pooling.py"}
        data = {"about": about,
                "scales": {k: [round(float(v), 5) for v in f] for k, f in scales.items()}}
        SCALES_FILE.write_text(json.dumps(data) + "\n")
        print(f"wrote {SCALES_FILE}")


if __name__ == "__main__":
    main()
