"""nst-onnx: neural style transfer (Gatys et al.) on onnxruntime, no PyTorch.

    from nst_onnx import StyleTransfer
    st = StyleTransfer(device="cpu")
    image = st.stylize("photo.jpg", "painting.jpg", size=512, iterations=500)

The public names are imported on first use (PEP 562), so that ``nst`` can configure the
process (BLAS threads, see ``nst_onnx.cli``) before numpy is loaded.
"""

from ._version import __version__

__all__ = ["StyleTransfer", "Problem", "Result", "NstError", "BadInput", "__version__"]


def __getattr__(name: str):
    if name in ("StyleTransfer", "Problem", "Result"):
        from . import api

        return getattr(api, name)
    if name in ("NstError", "BadInput"):
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'nst_onnx' has no attribute {name!r}")
