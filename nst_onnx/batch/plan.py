"""A batch's jobs: every content × style pair of files, folders or globs (or a jobs file's
rows), each with an output inside ``-o``.

Planning refuses, before any job runs, what would write where it should not: an output
outside ``-o`` (``..``, an absolute path, a symlink leading out), over an input of any job
(content, style, mask, init), over the manifest or the contact sheet, or a name template that
reaches attributes. Names too long for the file system (the temporary and checkpoint names
derived from them included) are shortened with a hash when we made them from the template,
and fail their own job when the jobs file gave them.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import INITS, LossWeights, RunOptions, parse_cell, split_settings
from ..errors import BadInput
from ..io.atomic import name_max, regular_file
from ..io.checkpoint import longest_derived_name
from ..io.images import FORMATS, bit_depth
from .manifest import MANIFEST, read_manifest

SHEET = "contact_sheet.jpg"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
TEMPLATE_FIELDS = ("content", "style", "index")
HASH_CHARS = 8  # the suffix that keeps shortened names apart


@dataclass
class Job:
    index: int
    content: Path
    styles: list[Path]
    output: Path
    run: RunOptions
    weights: LossWeights
    masks: list[Path] | None = None
    row: int = 0  # position on the contact sheet
    col: int = 0
    problem: str | None = None  # why it cannot run (its own failure), found in planning
    named: bool = False  # the output name was given (jobs file), not made from the template


def expand(items: list[str | os.PathLike], what: str, log: Callable[[str], None],
           earlier: Callable[[Path], bool] = lambda p: False) -> tuple[list[Path], int]:
    """Files, folders (their images, sorted; other files skipped with a notice) and globs →
    image paths, and how many non-image files were skipped. Images a folder or glob finds
    that are ``earlier`` results of this batch are skipped too (said once)."""
    paths, skipped, results = [], 0, 0
    for item in items:
        item = str(item)
        if Path(item).is_dir():
            found = sorted(p for p in Path(item).iterdir() if p.is_file())
            images = [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
            for p in found:
                if p not in images and not p.name.startswith("."):
                    skipped += 1
                    log(f"note: skipping {p} (not an image file)")
            if not images:
                raise BadInput(f"{what} folder {item} has no image files")
            kept = [p for p in images if not earlier(p)]
            if not kept:
                raise BadInput(f"{what} folder {item} holds only this batch's own results: "
                               "choose another -o folder")
            results += len(images) - len(kept)
            paths += kept
        elif Path(item).is_file():
            paths.append(Path(item))
        else:
            matches = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            if not matches:
                raise BadInput(f"{what} {item} not found (no file, folder or glob match)")
            kept = [p for p in matches if not earlier(p)]
            results += len(matches) - len(kept)
            paths += kept
    if results:
        log(f"note: skipping {results} {what} images that are this batch's own results")
    return list(dict.fromkeys(paths)), skipped


def check_template(template: str) -> None:
    """Plain ``{content}``, ``{style}`` and ``{index}`` fields only (a format spec such as
    ``{index:03d}`` is fine): no attribute or index access, no conversions."""
    try:
        fields = [(f, conv, spec) for _, f, spec, conv in string.Formatter().parse(template)
                  if f is not None]
    except ValueError as e:
        raise BadInput(f"--name template {template!r}: {e}") from None
    for f, conv, spec in fields:
        if f not in TEMPLATE_FIELDS or conv or "{" in (spec or ""):
            raise BadInput(f"--name template {template!r}: {{{f}}} is not allowed; use "
                           "{content}, {style} and {index}")


def _name(template: str, content: Path, styles: list[Path], index: int) -> str:
    try:
        name = template.format(content=content.stem, style="+".join(s.stem for s in styles),
                               index=index)
    except (KeyError, IndexError, ValueError) as e:
        raise BadInput(f"--name template {template!r}: {e}; use {{content}}, {{style}}, "
                       "{index}") from None
    if Path(name).suffix.lower() not in FORMATS:
        name += ".png"
    return name


class Outputs:
    """Where a batch may write: inside ``-o`` (its real path: ``..`` and symlinks
    resolved), not the manifest or the contact sheet, within the file system's name limit."""

    def __init__(self, outdir: Path):
        self.outdir = outdir
        self.real = outdir.resolve()
        self.reserved = {self.real / MANIFEST, self.real / SHEET}
        self.name_max = name_max(self.real)

    def place(self, name: str, where: str) -> Path:
        """``name`` inside -o as ``outdir/…``, normalised; BadInput if it leads out."""
        if not name or Path(name).is_absolute():
            raise BadInput(f"{where}: output {name!r} is not a name inside -o {self.outdir}")
        real = (self.real / name).resolve()
        if real == self.real or not real.is_relative_to(self.real):
            raise BadInput(f"{where}: output {name!r} leads outside -o {self.outdir}: give a "
                           "name inside it")
        if real in self.reserved:
            raise BadInput(f"{where}: output {name!r} is the batch's own {real.name}: choose "
                           "another name")
        return self.outdir / real.relative_to(self.real)

    def fit(self, job: Job) -> None:
        """Shorten a made-up name that the file system would refuse (with a hash of the whole
        name, so names stay apart); a given one fails its job instead."""
        rel = job.output.relative_to(self.outdir)
        for part in rel.parts[:-1]:
            if len(part.encode()) > self.name_max:
                job.problem = f"output folder name {part[:40]}… is too long for this file system"
                return
        name = rel.name
        if longest_derived_name(name) <= self.name_max:
            return
        if job.named:
            job.problem = (f"output name {name[:40]}… is too long for this file system "
                           f"({len(name.encode())} bytes; at most "
                           f"{self.name_max - longest_derived_name('')} here, leaving room for "
                           "its temporary and checkpoint names)")
            return
        suffix = Path(name).suffix
        tag = "-" + hashlib.sha256(name.encode()).hexdigest()[:HASH_CHARS]
        room = self.name_max - longest_derived_name(tag + suffix)
        stem = Path(name).stem.encode()[:room].decode(errors="ignore")
        job.output = job.output.with_name(stem + tag + suffix)

    def earlier(self, records: dict[str, dict]) -> Callable[[Path], bool]:
        """Whether a found input is this batch's own result: the contact sheet, an output in
        the manifest, or an image inside -o made by nst-onnx."""
        made = {Path(o).resolve() for o in records} | self.reserved

        def test(p: Path) -> bool:
            real = p.resolve()
            if real in made:
                return True
            return real.is_relative_to(self.real) and _made_by_us(real)
        return test


def _made_by_us(path: Path) -> bool:
    if path.suffix.lower() != ".png":
        return False
    try:
        from PIL import Image

        with Image.open(path) as img:
            return "nst-onnx" in img.info
    except Exception:  # noqa: BLE001 — any unreadable file is simply not ours
        return False


def read_jobs_file(path: Path) -> list[dict]:
    """CSV (a header row; columns content, style or styles, optionally output, masks and any
    setting) or JSON lines (the same keys). Paths are relative to the file's folder."""
    if not path.is_file():
        raise BadInput(f"jobs file not found: {path}")
    regular_file(path, "jobs file")
    try:  # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInput(f"jobs file {path} is not UTF-8 text (byte {e.start}): save it as "
                       "UTF-8") from None
    rows: list[dict] = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise BadInput(f"jobs file {path} line {n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise BadInput(f"jobs file {path} line {n}: expected an object")
            rows.append(row | {"_row": f"line {n}"})
    else:
        reader = csv.DictReader(io.StringIO(text))
        for n, row in enumerate(reader, start=2):
            rows.append({k.strip(): v for k, v in row.items() if k} | {"_row": f"row {n}"})
    if not rows:
        raise BadInput(f"jobs file {path} lists no jobs")
    return rows


def plan(contents: list, styles: list, outdir: Path, template: str, run: RunOptions,
         weights: LossWeights, jobs_file: Path | None = None,
         log: Callable[[str], None] = print) -> tuple[list[Job], int]:
    """The jobs (every content × style, or the jobs file's rows) and the count of non-image
    files skipped in folders; BadInput for anything that would write where it should not."""
    check_template(template)
    outputs = Outputs(outdir)
    if jobs_file is None:
        earlier = outputs.earlier(read_manifest(outdir))
        cs, sk1 = expand(contents, "content", log, earlier)
        ss, sk2 = expand(styles, "style", log, earlier)
        skipped = sk1 + sk2
        jobs = [Job(r * len(ss) + k, c, [s], outputs.place(
                    _name(template, c, [s], r * len(ss) + k), "--name"), run, weights,
                    row=r, col=k)
                for r, c in enumerate(cs) for k, s in enumerate(ss)]
    else:
        jobs, skipped = _from_jobs_file(jobs_file, outputs, template, run, weights), 0
    _disambiguate(jobs)
    for job in jobs:
        outputs.fit(job)
    _check_inputs_untouched(jobs)
    for job in jobs:
        try:
            bit_depth(job.output, job.run.bit_depth)
        except BadInput as e:
            raise BadInput(f"job {job.index + 1}: {e}") from None
    return jobs, skipped


def _from_jobs_file(jobs_file: Path, outputs: Outputs, template: str, run: RunOptions,
                    weights: LossWeights) -> list[Job]:
    base = jobs_file.parent
    jobs: list[Job] = []
    content_index: dict[Path, int] = {}
    style_index: dict[tuple, int] = {}
    for row in read_jobs_file(jobs_file):
        where = f"jobs file {jobs_file} {row.pop('_row')}"
        try:
            content = _resolve(base, row.pop("content", None), "content")
            job_styles = [_resolve(base, s, "style") for s in
                          _cells(row.pop("styles", None) or row.pop("style", None))]
            if not job_styles:
                raise BadInput("no style")
            masks = [_resolve(base, m, "mask") for m in _cells(row.pop("masks", None))]
            output = row.pop("output", None)
            job_run, job_weights = row_settings(row, run, weights, len(job_styles), base)
        except (BadInput, ValueError, TypeError) as e:
            raise BadInput(f"{where}: {e}") from None
        i = len(jobs)
        name = str(output) if output else _name(template, content, job_styles, i)
        jobs.append(Job(i, content, job_styles, outputs.place(name, where), job_run,
                        job_weights, masks or None,
                        row=content_index.setdefault(content, len(content_index)),
                        col=style_index.setdefault(tuple(job_styles), len(style_index)),
                        named=bool(output)))
    return jobs


def row_settings(row: dict, run: RunOptions, weights: LossWeights, styles: int,
                 base: Path) -> tuple[RunOptions, LossWeights]:
    """A job's settings (a jobs file row's columns, or ``nst serve``'s form: setting name →
    text or JSON value) over ``run`` and ``weights``, validated as the command line's are;
    an init image's path is relative to ``base``."""
    overrides = {}
    for key, value in row.items():
        value = parse_cell(key, value)
        if key == "init" and value not in (None, *INITS):
            value = str(_resolve(base, value, "init image"))
        if value is not None:
            overrides[key] = value
    job_run, job_weights = split_settings(run, weights, **overrides)
    job_run.validate()
    job_weights.validate(styles, 1 << 30)
    return job_run, job_weights


def _cells(value) -> list[str]:
    """A list (JSON) or ';'-separated text (CSV)."""
    if isinstance(value, list):
        return value
    return [v for v in str(value or "").split(";") if v.strip()]


def _disambiguate(jobs: list[Job]) -> None:
    """Two jobs never write one file: later ones get -2, -3, … before the extension."""
    seen: set[Path] = set()
    for job in jobs:
        out, k = job.output, 2
        while out in seen:
            out = job.output.with_name(f"{job.output.stem}-{k}{job.output.suffix}")
            k += 1
        seen.add(out)
        job.output = out


def _check_inputs_untouched(jobs: list[Job]) -> None:
    """No output is an input of any job (content, style, mask, init image)."""
    inputs: dict[Path, str] = {}
    for job in jobs:
        init = [Path(job.run.init)] if job.run.init not in INITS else []
        for kind, paths in (("content", [job.content]), ("style", job.styles),
                            ("mask", job.masks or []), ("init image", init)):
            for p in paths:
                inputs.setdefault(p.resolve(), f"{kind} {p}")
    for job in jobs:
        hit = inputs.get(job.output.resolve())
        if hit:
            raise BadInput(f"job {job.index + 1}: output {job.output} would overwrite the "
                           f"{hit}: choose another -o folder or --name")


def _resolve(base: Path, value, what: str) -> Path:
    if not value:
        raise BadInput(f"no {what} given")
    p = Path(str(value)).expanduser()
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise BadInput(f"{what} {p} not found")
    return regular_file(p, what)
