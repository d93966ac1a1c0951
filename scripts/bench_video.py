"""Temporal consistency of `nst video` against frame-by-frame stylisation, in one run.

Each clip is made by moving a virtual camera over a picture (scripts/camera_clip.py: a pan
and a slight zoom), so the true motion is known. Both modes stylise it with the same
settings and the default stop rule, through `nst video --json` in a child process
(`--temporal-weight 0` is frame by frame); then, per mode:

* warping error: the mean squared RGB difference between consecutive output frames, the
  earlier one carried along the true motion, over pixels visible in both;
* the per-frame style loss (final), and its ratio to frame-by-frame's;
* iterations of the first frame and of the later ones (their mean, and its share of the first);
* frames per minute.

    python scripts/bench_video.py --size 256 --frames 24 --json docs/measurements/video.json

``--strip FILE.webp``: the first clip as an animated WebP, frame by frame (left) beside
temporal (right), at most 160 px a side each (the README's).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import _bench  # noqa: F401  (first: BLAS threads)
import numpy as np
from _bench import EXAMPLES, ROOT, cpu_model, images_dir, run_nst
from camera_clip import camera_clip, warping_error
from PIL import Image


def one_mode(clip: Path, style: Path, out: Path, weight: float, args) -> dict:
    summary, wall, rss = run_nst(["video", str(clip), str(style), "--frames-dir", str(out),
                                  "--size", str(args.size), "--threads", str(args.threads),
                                  "--device", args.device,
                                  "--temporal-weight", str(weight)])
    recs = summary["records"]
    frames = [np.asarray(Image.open(out / r["file"]).convert("RGB")) for r in recs]
    its = [r["iterations"] for r in recs]
    return {"temporal_weight": weight, "wall_s": wall, "peak_rss_mb": rss,
            "frames_per_minute": summary["frames_per_minute"], "frames": frames,
            "iterations": its, "first_iterations": its[0],
            "later_iterations_mean": float(np.mean(its[1:])),
            "later_share_of_first": float(np.mean(its[1:]) / its[0]),
            "style_loss": [sum(v for n, v in r["final_terms"].items() if n.startswith("style"))
                           for r in recs]}


def bench_clip(name: str, picture: Path, style: Path, args, work: Path) -> dict:
    photo = Image.open(picture)
    frame = (args.size, round(args.size * 3 / 4))
    clip = work / f"{name}_clip"
    clip.mkdir()
    frames = camera_clip(photo, args.frames, frame)
    for i, f in enumerate(frames, 1):
        Image.fromarray(f).save(clip / f"frame{i}.png")
    modes, shown = {}, {}
    for label, weight in (("frame_by_frame", 0.0), ("temporal", args.temporal_weight)):
        m = one_mode(clip, style, work / f"{name}_{label}", weight, args)
        shown[label] = m["frames"]
        m["warping_error"] = warping_error(m.pop("frames"), photo.size)
        modes[label] = m
        print(f"{name} {label}: warping error {m['warping_error']:.1f}, style loss mean "
              f"{np.mean(m['style_loss']):.4g}, iterations first {m['first_iterations']} "
              f"later {m['later_iterations_mean']:.0f}, {m['frames_per_minute']:.2f} frames/min",
              flush=True)
    fbf, tmp = modes["frame_by_frame"], modes["temporal"]
    if args.strip and not args.strip.exists():  # the first clip's
        side_by_side(shown["frame_by_frame"], shown["temporal"], args.strip)
    return {"picture": picture.name, "style": style.name, **modes,
            "warping_error_ratio": tmp["warping_error"] / fbf["warping_error"],
            "style_loss_ratio": float(np.mean(np.asarray(tmp["style_loss"][1:])
                                              / np.asarray(fbf["style_loss"][1:]))),
            "content_warping_error": warping_error(frames, photo.size)}


def side_by_side(left: list[np.ndarray], right: list[np.ndarray], path: Path) -> None:
    """An animated WebP: each frame pair side by side (a seam of 4 px), 8 frames a second."""
    pics = []
    for a, b in zip(left, right):
        a, b = Image.fromarray(a), Image.fromarray(b)
        for im in (a, b):
            im.thumbnail((160, 160))
        pair = Image.new("RGB", (a.width + b.width + 4, max(a.height, b.height)), "white")
        pair.paste(a, (0, 0))
        pair.paste(b, (a.width + 4, 0))
        pics.append(pair)
    pics[0].save(path, save_all=True, append_images=pics[1:], duration=125, loop=0,
                 quality=80, method=6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--temporal-weight", type=float, default=1e3)
    ap.add_argument("--images", help="folder with tubingen.jpg and shipwreck.jpg (default: "
                    "examples/, where the second clip is made from the_scream.jpg)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--strip", type=Path, help="the first clip, both modes side by side, as "
                    "an animated WebP")
    args = ap.parse_args()
    pictures = images_dir(args.images)
    second = pictures / "shipwreck.jpg"
    if not second.exists():
        second = EXAMPLES / "the_scream.jpg"
    style = EXAMPLES / "starry_night.jpg"
    with tempfile.TemporaryDirectory() as tmp:
        clips = [bench_clip("tubingen", pictures / "tubingen.jpg", style, args, Path(tmp)),
                 bench_clip(second.stem, second, style, args, Path(tmp))]
    out = {"cpu": cpu_model(), "device": args.device, "size": args.size, "frames": args.frames,
           "threads": args.threads, "command": "python scripts/bench_video.py "
           f"--size {args.size} --frames {args.frames}", "clips": clips}
    for c in clips:
        print(f"{c['picture']}: warping error temporal/frame-by-frame "
              f"{c['warping_error_ratio']:.2f} (target ≤ 0.4), style loss ratio "
              f"{c['style_loss_ratio']:.3f} (≤ 1.15), later frames' iterations "
              f"{c['temporal']['later_share_of_first']:.0%} of the first (≤ 40%)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json.relative_to(ROOT) if args.json.is_relative_to(ROOT) else args.json}")


if __name__ == "__main__":
    main()
