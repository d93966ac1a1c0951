"""nst-onnx: neural style transfer (Gatys et al.) on onnxruntime, no PyTorch.

    from nst_onnx import StyleTransfer
    st = StyleTransfer(device="cpu")
    image = st.stylize("photo.jpg", "painting.jpg", size=512, iterations=500)
"""

__version__ = "0.1.0"

from .api import Problem, Result, StyleTransfer  # noqa: E402
from .errors import BadInput, NstError  # noqa: E402

__all__ = ["StyleTransfer", "Problem", "Result", "NstError", "BadInput", "__version__"]
