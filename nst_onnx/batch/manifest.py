"""The output folder's ``manifest.jsonl``: one JSON record per finished job, appended.

Appends are one ``write`` on an O_APPEND descriptor, then fsync, so a crash leaves whole
lines and at most one torn last line. Reading is tolerant: a torn line, one that is not
UTF-8 or not a record is skipped and counted (never an error that would stop every re-run),
and the next append starts on a fresh line so it is not glued onto the torn one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..io.atomic import regular_file

MANIFEST = "manifest.jsonl"


def read_manifest(outdir: Path, skipped: list[int] | None = None,
                  status: str | None = None) -> dict[str, dict]:
    """The last record per output file (of that ``status``, when given); lines that are not
    records are skipped (their count appended to ``skipped`` when given)."""
    out: dict[str, dict] = {}
    path = outdir / MANIFEST
    try:
        data = regular_file(path, "manifest").read_bytes() if path.exists() else b""
    except OSError:
        data = b""
    bad = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            if status is None or rec.get("status") == status:
                out[str(rec["output"])] = rec
        except (ValueError, KeyError, TypeError):
            bad += 1
    if skipped is not None:
        skipped.append(bad)
    return out


def append_record(outdir: Path, record: dict) -> None:
    """One line, one ``write`` on an O_APPEND descriptor, then fsync (module docstring)."""
    data = (json.dumps(record, default=str, ensure_ascii=False) + "\n").encode()
    fd = os.open(outdir / MANIFEST, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        if not _ends_a_line(fd):
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_a_line(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"


def already_done(output: Path, fp: str, records: dict[str, dict]) -> bool:
    """The output exists and was made by these settings, inputs and model (manifest, or the
    PNG's own metadata when the manifest is gone)."""
    from ..io.atomic import sha256_file

    if not output.is_file():
        return False
    rec = records.get(str(output))
    if rec and rec.get("fingerprint") == fp and rec.get("status") in ("done", "skipped"):
        return rec.get("output_sha256") in (None, sha256_file(output))
    try:
        from PIL import Image

        with Image.open(output) as img:
            meta = json.loads(img.info.get("nst-onnx", "{}"))
        return isinstance(meta, dict) and meta.get("fingerprint") == fp
    except Exception:  # noqa: BLE001 — an unreadable output is simply not done
        return False
