"""Export the ONNX graphs (same as `nst export`; see `python scripts/export.py --help`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nst_onnx.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["export", *sys.argv[1:]])
