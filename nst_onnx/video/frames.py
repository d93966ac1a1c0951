"""Frames in and a video out: a video file (what OpenCV's bundled FFmpeg reads) or a folder
or glob of images, read lazily and in order; the stylised frames assembled into a video file
with a codec the wheel can write.

Frames are decoded one at a time as the run reaches them, so a frame that cannot be decoded
stops the run there with every earlier frame kept; what can be checked before any frame is
stylised (the input opens, has frames, the selection is not empty, a folder's frames share
one size) is checked by :func:`open_frames`.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import MAX_PIXELS
from ..errors import BadInput
from ..io.images import load_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
# what opencv-python-headless's FFmpeg writes (it has no H.264 encoder): MPEG-4 Part 2 for
# .mp4/.mov, Motion JPEG for .avi, VP8 for .webm, lossless FFV1 for .mkv
CODECS = {".mp4": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".webm": "VP80", ".mkv": "FFV1"}
FOLDER_FPS = 24.0


def cv2():
    """OpenCV, or the one line that installs it."""
    try:
        import cv2 as module
    except ImportError:
        raise BadInput("nst video needs OpenCV: pip install 'nst-onnx[video]' (or "
                       "opencv-python-headless)") from None
    return module


def natural_key(path: Path) -> list:
    """frame2 before frame10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


@dataclass
class Frames:
    """The selected frames of one input: ``numbers`` (1-based, in the input), their size
    and frame rate; :meth:`__iter__` decodes them in order."""

    source: str
    numbers: list[int]
    size: tuple[int, int]  # (W, H)
    fps: float
    files: list[Path] | None = None  # a folder's frames, all of them; None: a video file
    max_pixels: int | None = MAX_PIXELS

    def __len__(self) -> int:
        return len(self.numbers)

    def __iter__(self) -> Iterator[tuple[int, Image.Image]]:
        """(input frame number, RGB image); a frame that does not decode is a BadInput
        naming it."""
        if self.files is not None:
            for n in self.numbers:
                path = self.files[n - 1]
                try:
                    img = load_image(path, f"frame {n}", self.max_pixels)
                    img.load()
                except (OSError, ValueError) as e:
                    raise BadInput(f"frame {n} ({path.name}) cannot be decoded ({e})") from None
                yield n, img
            return
        capture = cv2().VideoCapture(self.source)
        try:
            wanted, at = iter(self.numbers), 0
            n = next(wanted, None)
            while n is not None:
                ok, bgr = capture.read()
                at += 1
                if not ok:
                    raise BadInput(f"frame {at} of {self.source} cannot be decoded (corrupt, "
                                   "or the file is shorter than its header says)")
                if at == n:
                    yield n, Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
                    n = next(wanted, None)
        finally:
            capture.release()


def _select(count: int, start: int, end: int | None, every: int, source: str) -> list[int]:
    if count == 0:
        raise BadInput(f"{source} has no frames")
    if start > count:
        raise BadInput(f"--start {start} is beyond the end: {source} has {count} frames")
    return list(range(start, min(end or count, count) + 1, every))


def _image_files(source: str) -> list[Path] | None:
    """A folder's images or a glob's matches (naturally sorted); None for anything else."""
    path = Path(source)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    elif glob.has_magic(source):
        files = [Path(p) for p in glob.glob(source) if Path(p).is_file()]
    else:
        return None
    return sorted(files, key=natural_key)


def open_frames(source: str | os.PathLike, start: int = 1, end: int | None = None,
                every: int = 1, max_pixels: int | None = MAX_PIXELS) -> Frames:
    """The frames ``start``, ``start + every``, … ≤ ``end`` of a video file, a folder of
    images or a glob; refused in one line when it cannot be read, has no frames, the
    selection is empty, or a folder's frames differ in size (from their headers alone)."""
    source = str(source)
    files = _image_files(source)
    if files is not None:
        numbers = _select(len(files), start, end, every, source)
        sizes = {}
        for n in numbers:
            try:
                with Image.open(files[n - 1]) as img:
                    sizes.setdefault(img.size, files[n - 1].name)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise BadInput(f"frame {n} ({files[n - 1].name}) is not a readable image "
                               f"({e.__class__.__name__})") from None
        if len(sizes) > 1:
            (a, fa), (b, fb) = list(sizes.items())[:2]
            raise BadInput(f"the frames differ in size: {fa} is {a[0]}×{a[1]}, {fb} is "
                           f"{b[0]}×{b[1]}; give frames of one size")
        return Frames(source, numbers, next(iter(sizes)), FOLDER_FPS, files, max_pixels)
    path = Path(source)
    if not path.exists():
        raise BadInput(f"input not found: {source}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise BadInput(f"{source} is one image, not a video: give a video file, a folder of "
                       "frames or a glob (frames/*.png); for one picture use nst stylize")
    cv = cv2()
    capture = cv.VideoCapture(source)
    try:
        if not capture.isOpened():
            raise BadInput(f"cannot read {source} as a video (not a video, or a codec this "
                           "OpenCV lacks)")
        count = int(capture.get(cv.CAP_PROP_FRAME_COUNT))
        w, h = int(capture.get(cv.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv.CAP_PROP_FRAME_HEIGHT))
        fps = float(capture.get(cv.CAP_PROP_FPS)) or FOLDER_FPS
        if count <= 0 or w <= 0 or h <= 0 or not capture.read()[0]:
            raise BadInput(f"{source} has no frames OpenCV can decode")
    finally:
        capture.release()
    if max_pixels is not None and w * h > max_pixels:
        raise BadInput(f"{source} has {w}×{h} frames, more than --max-image-pixels")
    return Frames(source, _select(count, start, end, every, source), (w, h), fps, None,
                  max_pixels)


def check_writable(output: Path) -> None:
    """Refuse, before any frame, an output video whose format this OpenCV cannot write."""
    codec = CODECS.get(output.suffix.lower())
    if codec is None:
        raise BadInput(f"cannot write {output.suffix or 'a file without an extension'} video: "
                       "use " + ", ".join(CODECS) + " (or only --frames-dir)")
    probe = output.with_name(f".{output.stem}.probe{output.suffix}")
    try:
        writer = _writer(output.suffix, probe, 24.0, (16, 16))
        ok = writer.isOpened()
        writer.release()
    finally:
        probe.unlink(missing_ok=True)
    if not ok:
        raise BadInput(f"this OpenCV cannot write {output.suffix} ({codec}): use "
                       + ", ".join(s for s in CODECS if s != output.suffix.lower()))


def _writer(suffix: str, path: Path, fps: float, size: tuple[int, int]):
    cv = cv2()
    return cv.VideoWriter(str(path), cv.VideoWriter_fourcc(*CODECS[suffix.lower()]), fps, size)


def write_video(frames: list[Path], output: Path, fps: float) -> None:
    """The frames (PNG files, one size) → ``output``, atomically: written under a temporary
    name with the same extension (the container follows it), then renamed."""
    with Image.open(frames[0]) as first:
        size = first.size
    tmp = output.with_name(f".{output.name}.{os.getpid()}.partial{output.suffix}")
    writer = _writer(output.suffix, tmp, fps, size)
    try:
        if not writer.isOpened():
            raise BadInput(f"cannot open {output} for writing")
        for path in frames:
            with Image.open(path) as img:
                writer.write(np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1]))
        writer.release()
        os.replace(tmp, output)
    finally:
        writer.release()
        tmp.unlink(missing_ok=True)
