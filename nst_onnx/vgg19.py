"""The VGG19 layer table: names, channel counts, and where pooling happens.

Names follow Caffe and jcjohnson/neural-style: ``conv{b}_{c}`` is the convolution and
``relu{b}_{c}`` its rectified output (Caffe's in-place ReLU is why the paper's "conv4_2"
is ``relu4_2`` here); ``pool{b}`` ends block ``b``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BadInput

BLOCKS: tuple[int, ...] = (2, 2, 4, 4, 4)  # convolutions per block
CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
MEAN_BGR: tuple[float, float, float] = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Conv:
    block: int  # 1 … 5
    index: int  # position in its block, from 1
    in_channels: int
    out_channels: int

    @property
    def name(self) -> str:
        return f"conv{self.block}_{self.index}"

    @property
    def relu(self) -> str:
        return f"relu{self.block}_{self.index}"

    @property
    def keras_name(self) -> str:
        return f"block{self.block}_conv{self.index}"


def _table() -> tuple[list[Conv], list[str]]:
    convs, order = [], []
    cin = 3
    for b, (n, cout) in enumerate(zip(BLOCKS, CHANNELS), start=1):
        for c in range(1, n + 1):
            conv = Conv(b, c, cin, cout)
            convs.append(conv)
            order += [conv.name, conv.relu]
            cin = cout
        order.append(f"pool{b}")
    return convs, order


CONVS, LAYERS = _table()
"""All 16 convolutions, and every layer name in network order."""

TAPPABLE = [n for n in LAYERS if not n.startswith("pool")]


def canonical(layer: str) -> str:
    """Map a user's layer name to the tensor we tap: ``conv4_2`` → ``relu4_2``.

    Caffe's ReLU is in place, so the paper's ``conv{b}_{c}`` features are the rectified ones.
    """
    name = layer.strip().lower()
    if name.startswith("conv"):
        name = "relu" + name[4:]
    if name not in TAPPABLE:
        raise BadInput(
            f"unknown layer {layer!r}: use relu1_1 … relu5_4 (or conv1_1 … conv5_4)"
        )
    return name


def depth(layer: str) -> int:
    """Position of a layer in network order (for 'deepest chosen layer')."""
    return LAYERS.index(canonical(layer))


def channels(layer: str) -> int:
    name = canonical(layer)
    return next(c.out_channels for c in CONVS if c.relu == name)


def downsampling(layer: str) -> int:
    """How many 2×2 poolings lie between the image and this layer."""
    return int(canonical(layer)[4]) - 1


def pool_before(conv: Conv) -> str | None:
    """The pool that feeds this convolution (``pool1`` before ``conv2_1``), if any."""
    return f"pool{conv.block - 1}" if conv.index == 1 and conv.block > 1 else None


def convs_up_to(layers: list[str]) -> list[Conv]:
    """The convolutions needed to reach the deepest of ``layers``; nothing deeper."""
    deepest = max(depth(n) for n in layers)
    return [c for c in CONVS if LAYERS.index(c.relu) <= deepest]


def min_size(layers: list[str]) -> int:
    """Smallest image side for which every chosen layer has at least one pixel."""
    return 2 ** max(downsampling(n) for n in layers)


def halo(layers: list[str], grid: int = 16) -> int:
    """Pixels each side of a tile's core whose features of ``layers`` at the core are exact
    with: (receptive field − stride)/2 of the deepest layer (3×3 convolutions and 2×2 pools,
    the usual recurrence: relu5_1 156 px, stride 16 → 70), rounded up to the pooling grid."""
    rf, jump = 1, 1
    for conv in convs_up_to(layers):
        if pool_before(conv):
            rf, jump = rf + jump, jump * 2
        rf += 2 * jump
    need = (rf - jump) // 2
    return -(-need // grid) * grid
