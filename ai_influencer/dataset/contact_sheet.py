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


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


FONT_PX, LINE_PX = 12, 15
MAX_LABEL_LINES = 4  # per tile, under its file name; a longer label is shortened by whole words


def wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: float) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels, broken between words. A single word wider than
    that (a long file name) goes on over the next lines, whole: nothing is ever cut off."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while len(word) > 1 and font.getlength(word) > width:
                fits = max((i for i in range(1, len(word)) if font.getlength(word[:i]) <= width), default=1)
                lines.append(word[:fits])
                word = word[fits:]
            line = word
        lines.append(line)
    return lines


def shorten(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: float, max_lines: int) -> list[str]:
    """``wrap``, then, if that takes more than ``max_lines``, words dropped from the end (marked "…")
    until it fits: a number or a file name is shown whole or not at all, never cut."""
    lines = wrap(text, font, width)
    if len(lines) <= max_lines:
        return lines
    words = text.replace("\n", " \n ").split(" ")
    for keep in range(len(words) - 1, 0, -1):
        head = " ".join(words[:keep]).replace(" \n ", "\n").rstrip()
        lines = wrap(f"{head} …", font, width)
        if len(lines) <= max_lines:
            return lines
    return wrap("…", font, width)


def tile_lines(
    tile: Tile, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: float, max_lines: int = MAX_LABEL_LINES
) -> list[str]:
    """What is written under a tile: its file name (whole, wrapped if long), then its label."""
    return wrap(tile.path.name, font, width) + shorten(tile.label, font, width, max_lines)


def render_contact_sheet(
    sections: Sequence[tuple[str, Sequence[Tile]]],
    out: Path,
    *,
    thumb: int = 160,
    columns: int = 8,
    max_per_section: int = 64,
) -> Path:
    """Thumbnails in sections, each with its file name and label under it, wrapped to the tile's width
    (labels were cut at 28 characters, mid-number, and tiles did not say which file they were)."""
    title_h, pad = 34, 6
    font, title_font = _font(FONT_PX), _font(18)
    blocks = []
    texts: dict[int, list[str]] = {}
    for title, tiles in sections:
        shown = list(tiles)[:max_per_section]
        rows = max(1, -(-len(shown) // columns))
        blocks.append((title, shown, len(tiles), rows))
        for tile in shown:
            texts[id(tile)] = tile_lines(tile, font, thumb - 4)
    label_h = LINE_PX * max((len(t) for t in texts.values()), default=1) + 4
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
            name_lines = len(wrap(tile.path.name, font, thumb - 4))
            for line_no, line in enumerate(texts[id(tile)]):
                fill = (60, 60, 60) if line_no < name_lines else colour
                draw.text((x + 2, ty + thumb + 2 + line_no * LINE_PX), line, fill=fill, font=font)
        y += rows * (thumb + label_h + pad) + pad
    buf = io.BytesIO()
    # zlib level 3: optimize=True (level 9, every filter tried) took 1.63 s of QC's 1.82 s publishing on 60 images
    # (bench/qc.py), level 3 takes 0.2 s for a file 9 % larger; the sheet is a preview written on every QC run.
    sheet.save(buf, format="PNG", compress_level=3)
    return atomic_write_bytes(out, buf.getvalue())
