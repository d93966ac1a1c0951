"""Which onnxruntime build nst-onnx depends on is chosen when it is installed.

onnxruntime and onnxruntime-gpu install the same ``onnxruntime`` module and overwrite each
other, so exactly one may be a dependency. ``NST_ONNX_RUNTIME`` picks it:

    pip install .                          # cpu (default): onnxruntime
    NST_ONNX_RUNTIME=cuda pip install .    # onnxruntime-gpu with NVIDIA's CUDA 13 and cuDNN 9
                                           #   pip wheels (driver >= 580, Turing or newer)
    NST_ONNX_RUNTIME=cuda12 pip install .  # the CUDA 12 builds (driver >= 525; Pascal, Volta)
    NST_ONNX_RUNTIME=none pip install .    # bring your own build (OpenVINO, ROCm, ...)

Everything else is static, in pyproject.toml.
"""

import os

from setuptools import setup

COMMON = ["onnx>=1.15", "numpy>=1.24", "scipy>=1.10", "pillow>=10", "typer>=0.12"]
RUNTIMES = {
    "cpu": ["onnxruntime>=1.21"],
    "cuda": ["onnxruntime-gpu[cuda,cudnn]>=1.27"],
    "cuda12": ["onnxruntime-gpu[cuda,cudnn]>=1.21,<1.27"],
    "none": [],
}

choice = os.environ.get("NST_ONNX_RUNTIME", "cpu").strip().lower() or "cpu"
if choice not in RUNTIMES:
    raise SystemExit(f"NST_ONNX_RUNTIME={choice!r}: use one of {', '.join(RUNTIMES)}")
setup(install_requires=COMMON + RUNTIMES[choice])
