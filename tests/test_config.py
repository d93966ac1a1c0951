"""config: each dataclass checks its own values (one line, BadInput), and what a result
records (settings_dict) and what its fingerprint hashes leave out the right fields."""

from __future__ import annotations

import pytest

from nst_onnx.config import (
    DEFAULT_SIZE,
    EngineOptions,
    LossSpec,
    LossWeights,
    RunOptions,
    fingerprint_settings,
    settings_dict,
    split_engine,
    split_settings,
)
from nst_onnx.errors import BadInput


@pytest.mark.parametrize("bad, message", [
    (dict(size=0), "--size must be a whole number ≥ 1"),
    (dict(optimizer="sgd"), "unknown optimizer"),
    (dict(history=0), "--history must be between"),
    (dict(lr=float("nan")), "--lr must be"),
    (dict(iterations=[5, 0]), "--iterations must be ≥ 1"),
    (dict(stop_tolerance=1.0), "--stop-tolerance must be between"),
    (dict(checkpoint_every=-1.0), "--checkpoint-every must be"),
    (dict(init="no-such-file.png"), "--init 'no-such-file.png'"),
])
def test_run_options_refuse_bad_values(bad, message):
    with pytest.raises(BadInput, match=message):
        RunOptions(**bad).validate()


@pytest.mark.parametrize("bad, message", [
    (dict(content_weight=-1.0), "--content-weight must be"),
    (dict(style_scale=0.0), "--style-scale must be"),
    (dict(preserve_colors="sepia"), "unknown --preserve-colors"),
    (dict(style_blend=[1.0]), "--style-blend has 1 weights for 2"),
    (dict(style_blend=[0.0, 0.0]), "not all zero"),
    (dict(style_layer_weights=[1.0]), "--style-layer-weights has 1 values for 5"),
])
def test_loss_weights_refuse_bad_values(bad, message):
    with pytest.raises(BadInput, match=message):
        LossWeights(**bad).validate(n_styles=2, n_style_layers=5)


def test_engine_and_spec_refuse_bad_values():
    for bad in (dict(device="tpu"), dict(threads=0), dict(gpu_mem_limit_mb=10.0)):
        with pytest.raises(BadInput):
            EngineOptions(**bad).validate()
    with pytest.raises(BadInput, match="unknown pooling"):
        LossSpec(pooling="min")
    with pytest.raises(BadInput, match="no style layers"):
        LossSpec(style_layers=())


def test_settings_record_what_decides_the_picture():
    run = RunOptions(force=True, checkpoint_every=5.0, max_image_pixels=1000)
    s = settings_dict(run, LossWeights(), LossSpec())
    assert "force" not in s and "checkpoint_every" not in s  # do not change the pixels
    assert s["size"] == DEFAULT_SIZE and s["max_image_pixels"] == 1000  # recorded …
    f = fingerprint_settings(run, LossWeights(), LossSpec())
    assert "max_image_pixels" not in f and f["size"] == DEFAULT_SIZE  # … not fingerprinted
    assert fingerprint_settings(RunOptions(size=DEFAULT_SIZE), LossWeights(), LossSpec()) == f


def test_keyword_settings_find_their_dataclass():
    run, weights = split_settings(size=64, style_weight=3.0, checkpoint_every=0.0)
    assert (run.size, run.checkpoint_every, weights.style_weight) == (64, 0.0, 3.0)
    with pytest.raises(TypeError, match="unknown setting"):
        split_settings(sizes=64)
    engine, spec = split_engine(device="cpu", pooling="avg")
    assert engine.device == "cpu" and spec.pooling == "avg"


def test_jobs_file_cells_parse_as_their_options_do():
    from nst_onnx.config import parse_cell

    assert parse_cell("size", "256") == 256 and parse_cell("iterations", "120,35") == [120, 35]
    assert parse_cell("iterations", "300") == 300 and parse_cell("style_weight", "5") == 5.0
    assert parse_cell("size_consistent", "no") is False and parse_cell("seed", " ") is None
    assert parse_cell("max_image_pixels", "0") is None  # 0: no limit, as on the command line
    with pytest.raises(BadInput, match="unknown setting 'sizes'"):
        parse_cell("sizes", "3")
    with pytest.raises(BadInput, match="size 'big': a number of pixels or native"):
        parse_cell("size", "big")
    assert parse_cell("size", "native") == "native" and parse_cell("tile_size", "0") is None
    assert parse_cell("tile_size", "auto") == "auto" and parse_cell("tile_size", 512) == 512
    with pytest.raises(BadInput, match="whole number"):
        parse_cell("size", 64.7)


@pytest.mark.parametrize("command", ["stylize", "batch", "bench", "export", "info"])
def test_every_declared_option_is_on_its_commands(command):
    """One field + its Option is all a new option takes: the command line follows."""
    import typer

    from nst_onnx.cli import app
    from nst_onnx.config import options_of

    cmd = typer.main.get_command(app).commands[command]
    flags = {o for p in cmd.params for o in p.opts + p.secondary_opts}
    for _, option in options_of(command):
        assert set(option.flag.split("/")) <= flags, option.flag


def test_values_that_used_to_pass_silently_are_refused():
    from nst_onnx.config import parse_cell

    for bad, message in [(dict(seed=-1), "--seed must be ≥ 0"),
                         (dict(max_image_pixels=-5), "--max-image-pixels must be ≥ 1")]:
        with pytest.raises(BadInput, match=message):
            RunOptions(**bad).validate()
    with pytest.raises(BadInput, match="size: expected a whole number, got 64.7"):
        parse_cell("size", 64.7)  # a JSON jobs file's number
    with pytest.raises(BadInput, match="--iterations: expected a whole number, got True"):
        parse_cell("iterations", True)
    assert parse_cell("size", 64.0) == 64 and parse_cell("style_weight", 2) == 2
