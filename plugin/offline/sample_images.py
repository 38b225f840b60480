"""Drawn images for the sample catalogue (``plugin.sample_catalog``): a gradient sky, a ground
band and shapes whose form follows the subject's category and whose colours follow the colour
words of its title and palette. The same row, size and seed always give the same pixels.
"""

from __future__ import annotations

import colorsys
import math
import random
from typing import Any

from PIL import Image, ImageDraw, ImageOps

from rewriters.errors import ConfigError

__all__ = ["draw_sample_image"]

_SIZE_RANGE = (16, 1024)

_COLOUR_WORDS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40), "pink": (235, 120, 170), "rose": (215, 90, 120),
    "orange": (240, 140, 40), "amber": (230, 160, 40), "golden": (225, 180, 60),
    "gold": (215, 175, 55), "yellow": (240, 215, 60), "mustard": (200, 160, 40),
    "green": (60, 160, 80), "emerald": (20, 140, 90), "sage": (150, 175, 140),
    "olive": (120, 130, 60), "mint": (160, 225, 190), "teal": (20, 140, 140),
    "blue": (50, 100, 210), "navy": (25, 40, 100), "icy": (190, 225, 245),
    "purple": (130, 60, 170), "lavender": (180, 160, 220), "lilac": (200, 170, 225),
    "burgundy": (120, 25, 45), "coral": (245, 120, 100), "peach": (250, 190, 150),
    "terracotta": (200, 100, 70), "beige": (225, 205, 175), "cream": (245, 235, 210),
    "brown": (120, 80, 45), "sepia": (160, 120, 80), "earth": (140, 100, 60),
    "charcoal": (55, 55, 60), "black": (20, 20, 20), "white": (245, 245, 245),
    "silver": (190, 195, 200), "neon": (255, 40, 200), "jewel": (90, 30, 140),
    "autumn": (190, 90, 30), "snowy": (240, 245, 250), "snow": (240, 245, 250),
}
# Palette words that change every colour rather than adding one.
_GREY = ("monochrome", "black and white", "desaturated")
_LIGHT = ("pastel", "soft", "candy", "icy", "faded")
_MUTED = ("muted", "faded", "sepia", "earth", "desaturated")
_VIVID = ("vibrant", "vivid", "rich", "neon", "high contrast", "bright", "candy")
# Setting words -> (sky top, sky bottom) gradient.
_SKIES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "night": ((10, 15, 40), (40, 50, 90)), "stars": ((5, 5, 25), (30, 30, 70)),
    "space": ((0, 0, 10), (20, 10, 50)), "moon": ((10, 15, 45), (50, 60, 100)),
    "twilight": ((40, 30, 90), (200, 110, 120)), "sunset": ((250, 120, 60), (120, 60, 140)),
    "sunrise": ((250, 170, 110), (150, 180, 230)), "dawn": ((220, 170, 190), (170, 200, 240)),
    "golden": ((250, 200, 110), (240, 150, 70)), "blue hour": ((30, 60, 140), (90, 110, 180)),
    "fog": ((200, 205, 210), (170, 175, 185)), "rain": ((110, 120, 135), (80, 90, 105)),
    "storm": ((50, 55, 70), (90, 95, 110)), "snow": ((215, 225, 240), (250, 250, 255)),
    "winter": ((200, 215, 235), (245, 248, 255)), "dark": ((15, 15, 20), (45, 45, 55)),
}
_GROUNDS: dict[str, tuple[int, int, int]] = {
    "beach": (230, 210, 160), "sand": (230, 210, 160), "desert": (225, 190, 130),
    "snow": (245, 248, 252), "winter": (240, 245, 250), "grass": (90, 160, 70),
    "meadow": (110, 170, 80), "forest": (40, 100, 50), "garden": (80, 150, 70),
    "water": (60, 120, 180), "lake": (60, 120, 180), "sea": (40, 100, 170),
    "wooden": (150, 100, 60), "marble": (225, 225, 230), "street": (90, 90, 95),
    "road": (80, 80, 85), "highway": (70, 70, 75), "autumn": (190, 110, 40),
}


def _words(text: str) -> list[str]:
    return text.lower().replace(",", " ").split()


def _check_size(size: Any) -> None:
    lo, hi = _SIZE_RANGE
    if isinstance(size, bool) or not isinstance(size, int) or not lo <= size <= hi:
        raise ConfigError(f"image_size={size!r} is out of range {lo}..{hi} pixels")


def _rgb_of(text: str) -> list[tuple[int, int, int]]:
    """Colours named in ``text``, in order ("teal and orange" -> [teal, orange])."""
    return [_COLOUR_WORDS[w] for w in _words(text) if w in _COLOUR_WORDS]


def _adjust(c: tuple[int, int, int], palette: str) -> tuple[int, int, int]:
    """Apply the palette's mood (pastel, muted, vivid, monochrome) to one colour."""
    h, s, v = colorsys.rgb_to_hsv(*(x / 255 for x in c))
    p = palette.lower()
    if any(k in p for k in _GREY):
        s = 0.0
    elif any(k in p for k in _VIVID):
        s, v = min(1.0, s * 1.3 + 0.1), min(1.0, v * 1.1 + 0.05)
    elif any(k in p for k in _MUTED):
        s, v = s * 0.45, v * 0.85
    if any(k in p for k in _LIGHT):
        s, v = s * 0.5, 0.65 + v * 0.35
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def _colours(row: dict[str, Any], rng: random.Random) -> list[tuple[int, int, int]]:
    """Four shape colours: those the title names first, then the palette's, then seeded hues."""
    named = _rgb_of(f"{row['title']} {row.get('palette', '')}")
    base = rng.random()
    while len(named) < 4:
        h = (base + 0.27 * len(named) + rng.uniform(-0.05, 0.05)) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.45, 0.85), rng.uniform(0.55, 0.95))
        named.append((round(r * 255), round(g * 255), round(b * 255)))
    return [_adjust(c, row.get("palette", "")) for c in named[:4]]


def _jitter(c: tuple[int, int, int], rng: random.Random, d: int = 18) -> tuple[int, int, int]:
    return tuple(max(0, min(255, x + rng.randint(-d, d))) for x in c)  # type: ignore[return-value]


def _backdrop(row: dict[str, Any], size: int, rng: random.Random) -> Image.Image:
    """Vertical sky gradient from the setting, ground band below the horizon."""
    text = f" {' '.join(_words(row['title'] + ' ' + row.get('setting', '')))} "
    sky = next((v for k, v in _SKIES.items() if f" {k} " in text), None)  # whole words
    if sky is None:
        h = rng.random()
        top = colorsys.hsv_to_rgb(h, 0.35, 0.95)
        bottom = colorsys.hsv_to_rgb((h + 0.08) % 1.0, 0.2, 0.8)
        sky = (tuple(round(x * 255) for x in top), tuple(round(x * 255) for x in bottom))
    top, bottom = (_adjust(_jitter(c, rng), row.get("palette", "")) for c in sky)
    im = ImageOps.colorize(Image.linear_gradient("L").resize((size, size)), top, bottom)
    ground = next((v for k, v in _GROUNDS.items() if f" {k} " in text), None)
    if ground is not None or rng.random() < 0.5:
        ground = ground or (_jitter((110, 130, 90), rng, 40))
        horizon = round(size * rng.uniform(0.6, 0.78))
        ImageDraw.Draw(im).rectangle([0, horizon, size, size],
                                     fill=_adjust(_jitter(ground, rng), row.get("palette", "")))
    return im


def _shapes(draw: ImageDraw.ImageDraw, category: str, cols: list, s: int,
            rng: random.Random) -> None:
    """Shapes whose form follows the category; ``s`` is the image side in pixels."""
    u = s / 96  # the geometry below is laid out for 96 px
    def box(x0, y0, x1, y1):  # a 96-px box, scaled and nudged a few pixels
        dx, dy = rng.uniform(-3, 3), rng.uniform(-3, 3)
        return [(x0 + dx) * u, (y0 + dy) * u, (x1 + dx) * u, (y1 + dy) * u]

    a, b, c, d = cols
    if category == "animals":
        draw.ellipse(box(22, 46, 70, 78), fill=a)  # body
        draw.ellipse(box(56, 28, 82, 54), fill=a)  # head
        draw.polygon([(60 * u, 34 * u), (62 * u, 18 * u), (68 * u, 30 * u)], fill=b)  # ears
        draw.polygon([(72 * u, 30 * u), (78 * u, 18 * u), (80 * u, 36 * u)], fill=b)
        draw.ellipse(box(70, 38, 74, 42), fill=(20, 20, 20))  # eye
    elif category == "landscapes":
        draw.ellipse(box(60, 10, 80, 30), fill=_adjust((250, 220, 120), ""))  # sun or moon
        for k, col in enumerate((b, a)):
            peak = (rng.uniform(20, 76) * u, rng.uniform(18, 40) * u + k * 10 * u)
            draw.polygon([(peak[0] - 45 * u, 80 * u), peak, (peak[0] + 45 * u, 80 * u)],
                         fill=col)
        draw.rectangle([0, 76 * u, s, s], fill=c)
    elif category == "architecture":
        x = 4 * u
        while x < s - 8 * u:
            w, h = rng.uniform(12, 22) * u, rng.uniform(30, 70) * u
            col = rng.choice((a, b, c))
            draw.rectangle([x, s - 10 * u - h, x + w, s - 10 * u], fill=col)
            for wy in range(int(s - 10 * u - h + 4 * u), int(s - 14 * u), max(1, int(8 * u))):
                draw.rectangle([x + 3 * u, wy, x + 6 * u, wy + 3 * u], fill=d)
            x += w + rng.uniform(1, 5) * u
    elif category == "food":
        draw.ellipse(box(14, 30, 82, 86), fill=(240, 240, 235), outline=d, width=max(1, int(2 * u)))
        draw.ellipse(box(24, 40, 72, 76), fill=a)
        for _ in range(rng.randint(3, 6)):
            x, y = rng.uniform(30, 62), rng.uniform(46, 66)
            draw.ellipse(box(x, y, x + 8, y + 8), fill=rng.choice((b, c)))
    elif category == "vehicles":
        draw.rectangle(box(14, 44, 82, 66), fill=a)  # body
        draw.polygon([(28 * u, 44 * u), (36 * u, 30 * u), (62 * u, 30 * u), (70 * u, 44 * u)],
                     fill=b)  # cabin
        for x in (22, 62):
            draw.ellipse(box(x, 58, x + 16, 74), fill=(25, 25, 25), outline=c,
                         width=max(1, int(3 * u)))
    elif category == "people":
        w = max(1, int(4 * u))
        draw.ellipse(box(40, 14, 56, 30), fill=_adjust((225, 185, 150), ""))  # head
        draw.rectangle(box(38, 32, 58, 60), fill=a)  # torso
        draw.line([(40 * u, 60 * u), (34 * u, 86 * u)], fill=b, width=w)  # legs
        draw.line([(56 * u, 60 * u), (62 * u, 86 * u)], fill=b, width=w)
        draw.line([(38 * u, 36 * u), (24 * u, 54 * u)], fill=a, width=w)  # arms
        draw.line([(58 * u, 36 * u), (72 * u, 50 * u)], fill=a, width=w)
    elif category == "objects":
        draw.rounded_rectangle(box(24, 30, 72, 78), radius=8 * u, fill=a, outline=d,
                               width=max(1, int(2 * u)))
        draw.ellipse(box(36, 40, 60, 64), fill=b)
        draw.rectangle(box(66, 40, 80, 50), fill=c)
    elif category == "plants":
        w = max(1, int(3 * u))
        draw.line([(48 * u, 90 * u), (48 * u, 44 * u)], fill=(50, 130, 60), width=w)  # stem
        draw.ellipse(box(48, 62, 64, 70), fill=(60, 150, 70))  # leaf
        for k in range(rng.randint(5, 8)):
            ang = 2 * math.pi * k / 7
            cx, cy = 48 + 11 * math.cos(ang), 38 + 11 * math.sin(ang)
            draw.ellipse(box(cx - 7, cy - 7, cx + 7, cy + 7), fill=a)  # petals
        draw.ellipse(box(42, 32, 54, 44), fill=b)  # centre
    elif category == "fantasy":
        for _ in range(rng.randint(12, 24)):
            x, y = rng.uniform(0, s), rng.uniform(0, s * 0.7)
            r = rng.uniform(0.5, 1.5) * u
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(250, 250, 230))  # stars
        draw.ellipse(box(28, 26, 68, 66), fill=a)  # planet
        draw.ellipse(box(16, 40, 80, 52), outline=b, width=max(1, int(2 * u)))  # ring
    else:  # a category added to the vocabulary later: generic shapes
        for col in (a, b, c):
            x, y = rng.uniform(10, 60), rng.uniform(20, 60)
            draw.ellipse(box(x, y, x + 26, y + 26), fill=col)


def draw_sample_image(row: dict[str, Any], size: int = 96, seed: int = 0) -> Image.Image:
    """Draw the picture for one :func:`sample_image_entries` row.

    Args:
        row: needs ``id``, ``title`` and ``category``; ``setting`` and ``palette`` are used
            when present.
        size: side in pixels, 16..1024.
        seed: with ``row['id']``, fixes the jitter; the same inputs give the same pixels.

    Returns:
        An RGB image of ``size`` x ``size``.
    """
    _check_size(size)
    rng = random.Random(f"udrl-sample-draw:{seed}:{row['id']}")
    im = _backdrop(row, size, rng)
    _shapes(ImageDraw.Draw(im), row.get("category", ""), _colours(row, rng), size, rng)
    return im


# --------------------------------------------------------------------------------- writing
