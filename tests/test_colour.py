"""Colour control (Gatys et al. 2016, Preserving Color): the --preserve-colors modes."""

from __future__ import annotations

import numpy as np
import pytest

from nst_onnx.io.color import RGB_TO_YIQ


def _stats(x_nchw):
    p = x_nchw[0].reshape(3, -1).astype(np.float64)
    return p.mean(axis=1), np.cov(p)


@pytest.mark.parametrize("mode", ["histogram", "histogram-sym"])
def test_histogram_mode_gives_style_the_content_colour_statistics(st, images, mode):
    plain = st.prepare(images["tubingen"], images["starry_night"], size=64)
    p = st.prepare(images["tubingen"], images["starry_night"], size=64, preserve_colors=mode)
    mu_c, cov_c = _stats(p.content)
    mu_s, cov_s = _stats(p.styles[0])
    mu_0, _ = _stats(plain.styles[0])
    assert np.abs(mu_s - mu_c).max() < 3.0 < np.abs(mu_0 - mu_c).max()
    assert np.abs(cov_s - cov_c).max() < 0.1 * np.abs(cov_c).max()


@pytest.mark.parametrize("mode", ["luminance", "post"])
def test_luminance_and_post_modes_keep_the_content_chroma(st, images, mode):
    p = st.prepare(images["tubingen"], images["starry_night"], size=64, preserve_colors=mode)
    out = np.asarray(st.run(p, iterations=5).image, dtype=np.float64)
    rgb = (p.content_rgb if p.content_rgb is not None else p.content)[0].transpose(1, 2, 0)
    iq_out = (out @ RGB_TO_YIQ.T)[..., 1:]
    iq_content = (rgb.astype(np.float64) @ RGB_TO_YIQ.T)[..., 1:]
    inside = (out > 1).all(-1) & (out < 254).all(-1)  # where clipping did not intervene
    assert inside.mean() > 0.8
    assert np.abs(iq_out - iq_content)[inside].max() < 1.5  # rounding to 8 bits only
    if mode == "luminance":  # the optimisation itself saw only luminance
        assert np.allclose(p.content[0][0], p.content[0][1]) and \
            np.allclose(p.styles[0][0][0], p.styles[0][0][2])



def test_luminance_mode_starts_grey_from_any_init(st, images):
    """Luminance-only transfer optimises a grey image: an init image or noise in colour is
    made grey (as the content and styles are) instead of leaving the optimiser to remove it."""
    from PIL import Image

    p = st.prepare(images["tubingen"], images["starry_night"], size=64,
                   preserve_colors="luminance")
    for init in (Image.open(images["starry_night"]), "noise"):
        x = p.initial(init)
        assert np.abs(x[0] - x[1]).max() == 0 and np.abs(x[1] - x[2]).max() == 0
        assert x.std() > 10  # not flattened away
    plain = st.prepare(images["tubingen"], images["starry_night"], size=64)
    assert np.abs(plain.initial("noise")[0] - plain.initial("noise")[1]).mean() > 10
