"""Contact sheets: accepted vs rejected thumbnails with their scores, as one PNG.

A user judging identity quality needs to *see* what was rejected and why;
numbers in a CSV alone hide systematic failures (all profile shots, all one
outfit).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from ai_influencer.io import atomic_write_bytes


@dataclass
class Tile:
    path: Path
    label: str
    ok: bool
    thumbnail: bytes | None = None  # pre-rendered small image; avoids decoding the full file again


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def render_contact_sheet(
    sections: Sequence[tuple[str, Sequence[Tile]]],
    out: Path,
    *,
    thumb: int = 160,
    columns: int = 8,
    max_per_section: int = 64,
) -> Path:
    label_h, title_h, pad = 34, 34, 6
    font, title_font = _font(12), _font(18)
    blocks = []
    for title, tiles in sections:
        shown = list(tiles)[:max_per_section]
        rows = max(1, -(-len(shown) // columns))
        blocks.append((title, shown, len(tiles), rows))
    width = columns * (thumb + pad) + pad
    height = sum(title_h + rows * (thumb + label_h + pad) + pad for _, _, _, rows in blocks)
    sheet = Image.new("RGB", (width, height), (245, 245, 245))
    draw = ImageDraw.Draw(sheet)
    y = 0
    for title, shown, total, rows in blocks:
        more = f" (showing {len(shown)})" if total > len(shown) else ""
        draw.text((pad, y + 8), f"{title}: {total}{more}", fill=(20, 20, 20), font=title_font)
        y += title_h
        for i, tile in enumerate(shown):
            x = pad + (i % columns) * (thumb + pad)
            ty = y + (i // columns) * (thumb + label_h + pad)
            try:
                with Image.open(io.BytesIO(tile.thumbnail) if tile.thumbnail else tile.path) as im:
                    im = ImageOps.exif_transpose(im).convert("RGB")
                    im.thumbnail((thumb, thumb))
                    sheet.paste(im, (x + (thumb - im.width) // 2, ty + (thumb - im.height) // 2))
            except OSError:
                draw.rectangle((x, ty, x + thumb, ty + thumb), fill=(200, 200, 200))
            colour = (30, 150, 60) if tile.ok else (200, 40, 40)
            draw.rectangle((x, ty, x + thumb - 1, ty + thumb - 1), outline=colour, width=3)
            for line_no, line in enumerate(tile.label.splitlines()[:2]):
                draw.text((x + 2, ty + thumb + 2 + line_no * 15), line[:28], fill=colour, font=font)
        y += rows * (thumb + label_h + pad) + pad
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return atomic_write_bytes(out, buf.getvalue())
