"""The contact sheet of a batch: results in a grid, the content images as row headers and
the style images as column headers."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from .atomic import atomic_path

CELL = 192
GAP = 6


def _thumb(path: Path | None) -> Image.Image | None:
    if path is None or not Path(path).is_file():
        return None
    try:  # the draft decodes a JPEG at 1/8 scale: a huge result costs little memory
        img = Image.open(path)
        img.draft("RGB", (CELL, CELL))
        return ImageOps.contain(img.convert("RGB"), (CELL, CELL), Image.LANCZOS)
    except Exception:  # noqa: BLE001 - an unreadable or bomb-sized result is a grey cell
        return None


def contact_sheet(rows: list[Path], cols: list[Path], cells: dict[tuple[int, int], Path | None],
                  target: Path) -> Path:
    """``cells[(r, c)]``: the result for content ``rows[r]`` and style ``cols[c]``; missing or
    failed ones stay grey, crossed."""
    step = CELL + GAP
    sheet = Image.new("RGB", (step * (len(cols) + 1) + GAP, step * (len(rows) + 1) + GAP),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)

    def paste(img: Image.Image | None, r: int, c: int) -> None:
        x, y = GAP + c * step, GAP + r * step
        if img is None:
            draw.rectangle([x, y, x + CELL, y + CELL], fill=(220, 220, 220))
            draw.line([x, y, x + CELL, y + CELL], fill=(160, 160, 160), width=2)
            draw.line([x, y + CELL, x + CELL, y], fill=(160, 160, 160), width=2)
            return
        sheet.paste(img, (x + (CELL - img.width) // 2, y + (CELL - img.height) // 2))

    for c, style in enumerate(cols, start=1):
        paste(_thumb(style), 0, c)
    for r, content in enumerate(rows, start=1):
        paste(_thumb(content), r, 0)
        for c in range(1, len(cols) + 1):
            paste(_thumb(cells.get((r - 1, c - 1))), r, c)
    with atomic_path(target) as tmp:
        sheet.save(tmp, format="JPEG", quality=88)
    return target
