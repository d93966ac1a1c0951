"""Would a tiled run show its tiles? Step sizes across the tile boundaries of a finished
picture, against every other step in it, and a 100% crop where four tiles meet.

A seam is a jump between two neighbouring rows or columns that the picture's content does
not explain: it would put the mean absolute step across a tile boundary at the top of the
steps between all neighbouring columns (or rows). Each boundary's step is printed with its
percentile among them, and among the steps at the same place on the 16 px pooling grid.

    python scripts/seams.py print.tif --tile-size 1536 --crop docs/print_4096_corner.jpg
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

GRID = 16  # tile boundaries lie on VGG's pooling grid, where the picture's own steps differ
#           (a 2× upscaled start alternates too): compare like with like as well


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) float64 in [0, 1]; 16-bit TIFFs through tifffile (Pillow reads 8 bits)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        a = tifffile.imread(path)
        return a[..., :3].astype(np.float64) / np.iinfo(a.dtype).max
    return np.asarray(Image.open(path).convert("RGB"), np.float64) / 255.0


def boundaries(n: int, core: int) -> list[int]:
    """Where one core ends and the next begins along a side of n px (the tiler's own plan)."""
    from nst_onnx.run.tiled import plan_tiles

    return [t.core[1] for t in plan_tiles(n, 1, core, 0)][:-1]


def steps(img: np.ndarray, axis: int) -> np.ndarray:
    """Mean absolute difference between neighbouring columns (axis 1) or rows (axis 0)."""
    return np.abs(np.diff(img, axis=axis)).mean(axis=(2, 1 - axis))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", type=Path)
    ap.add_argument("--tile-size", type=int, required=True, help="the run's core side, px")
    ap.add_argument("--crop", type=Path, help="write a 100%% crop centred on a corner here")
    ap.add_argument("--crop-size", type=int, default=384)
    args = ap.parse_args()
    img = read_rgb(args.image)
    h, w, _ = img.shape
    report = {"image": str(args.image), "shape": [h, w], "tile_size": args.tile_size}
    for name, axis, n in (("columns", 1, w), ("rows", 0, h)):
        s = steps(img, axis)
        grid = np.arange(len(s)) % GRID
        report[name] = [{"boundary": b, "step": float(s[b - 1]),
                         "percentile": float((s < s[b - 1]).mean() * 100),
                         "percentile_on_grid": float(
                             (s[grid == (b - 1) % GRID] < s[b - 1]).mean() * 100),
                         "median_step": float(np.median(s))}
                        for b in boundaries(n, args.tile_size)]
    print(json.dumps(report, indent=1))
    if args.crop:
        cols, rows = boundaries(w, args.tile_size), boundaries(h, args.tile_size)
        if not cols or not rows:
            raise SystemExit("no corner where four tiles meet")
        cy, cx, r = rows[0], cols[0], args.crop_size // 2
        crop = img[max(0, cy - r):cy + r, max(0, cx - r):cx + r]
        Image.fromarray(np.round(crop * 255).astype(np.uint8)).save(args.crop, quality=90)
        print(f"wrote {args.crop}: rows {max(0, cy - r)}–{cy + r}, columns {max(0, cx - r)}–"
              f"{cx + r} (the corner at row {cy}, column {cx})")


if __name__ == "__main__":
    main()
