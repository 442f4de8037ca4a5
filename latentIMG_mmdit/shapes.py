"""The procedural captioned-shapes set and the pixel probe that reads it back.

An image shows two objects on black, one in each half along an axis: "a red circle above a blue
square" puts the red circle in the top half and the blue square in the bottom one ("left of" /
"right of": the left and right halves). Colour x shape x relation x colour x shape = 4 x 3 x 4 x 4
x 3 = 576 captions; positions and sizes jitter a little, seeded.

The probe is deterministic and reads pixels only: the caption says which half holds which object;
in each half the foreground (pixels whose brightest channel exceeds ``FG``) gives a colour (the
palette entry nearest the median foreground pixel) and a shape (foreground / bounding-box area:
a square fills ~1, a circle pi/4, a triangle 1/2). ``score`` is the fraction of the caption's four
attributes read back. Scored against another record's caption it is the chance level: what an
image that ignores its caption gets. On the generated images themselves it reads 100 %
(``tests/test_image_mmdit.py``), so a shortfall of a model's samples is the model's.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

PALETTE = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (235, 220, 40)}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("above", "below", "left of", "right of")
FG = 80  # uint8: brighter than this in some channel = an object pixel (the background is 0)
_CAPTION = re.compile(r"^a (\w+) (\w+) (above|below|left of|right of) a (\w+) (\w+)$")


class Scene(NamedTuple):
    colours: tuple[str, str]  # the caption's first and second object
    shapes: tuple[str, str]
    relation: str

    @property
    def caption(self) -> str:
        return f"a {self.colours[0]} {self.shapes[0]} {self.relation} a {self.colours[1]} {self.shapes[1]}"

    def halves(self) -> tuple[str, int, int]:
        """(axis, half of the first object, half of the second): axis "v" = top (0) / bottom (1),
        "h" = left (0) / right (1)."""
        axis = "v" if self.relation in ("above", "below") else "h"
        first = 0 if self.relation in ("above", "left of") else 1
        return axis, first, 1 - first


def parse(caption: str) -> Scene | None:
    """The scene a shapes caption describes, or None (not a shapes caption)."""
    m = _CAPTION.match(caption.strip().lower())
    if not m or m[1] not in PALETTE or m[4] not in PALETTE or m[2] not in SHAPES or m[5] not in SHAPES:
        return None
    return Scene((m[1], m[4]), (m[2], m[5]), m[3])


def random_scene(rng: np.random.Generator) -> Scene:
    colours = list(PALETTE)
    return Scene((colours[rng.integers(4)], colours[rng.integers(4)]),
                 (SHAPES[rng.integers(3)], SHAPES[rng.integers(3)]), RELATIONS[rng.integers(4)])


def draw(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``[size, size, 3]``."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), (0, 0, 0))
    d = ImageDraw.Draw(im)
    axis, first, second = scene.halves()
    for obj, half in ((0, first), (1, second)):
        r = size * (0.16 + 0.03 * rng.random())  # half the object's extent: a third of a half, about
        jitter = size / 16
        along = size * (0.25 + 0.5 * half) + rng.uniform(-jitter, jitter) / 2  # centre of its half
        across = size / 2 + rng.uniform(-jitter, jitter)
        cx, cy = (across, along) if axis == "v" else (along, across)
        box = (cx - r, cy - r, cx + r, cy + r)
        colour = PALETTE[scene.colours[obj]]
        if scene.shapes[obj] == "circle":
            d.ellipse(box, fill=colour)
        elif scene.shapes[obj] == "square":
            d.rectangle(box, fill=colour)
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return np.asarray(im)


class Reading(NamedTuple):
    colours: tuple[str | None, str | None]  # what the probe read in the halves the caption names
    shapes: tuple[str | None, str | None]


def _read_half(px: np.ndarray) -> tuple[str | None, str | None]:
    """(colour, shape) of the object in one half ``[h, w, 3]`` uint8; None where there is none."""
    fg = px.max(-1) > FG
    n = int(fg.sum())
    if n < max(4, fg.size // 40):  # nothing there (an object covers over a tenth of its half)
        return None, None
    med = np.median(px[fg].astype(np.float32), axis=0)
    names = list(PALETTE)
    colour = names[int(np.argmin([((med - np.array(PALETTE[c])) ** 2).sum() for c in names]))]
    rows, cols = np.nonzero(fg)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    fill = n / box
    shape = "square" if fill > 0.88 else "circle" if fill > 0.64 else "triangle"
    return colour, shape


def read(image: np.ndarray, scene: Scene) -> Reading:
    """What image ``[H, W, 3]`` uint8 shows in the halves ``scene``'s caption names."""
    axis, first, second = scene.halves()
    h, w = image.shape[:2]
    halves = ((image[: h // 2], image[h // 2:]) if axis == "v" else (image[:, : w // 2], image[:, w // 2:]))
    (c1, s1), (c2, s2) = _read_half(halves[first]), _read_half(halves[second])
    return Reading((c1, c2), (s1, s2))


def score(image: np.ndarray, caption: str) -> float | None:
    """The fraction of the caption's 4 attributes (2 colours, 2 shapes, each in its half) the
    probe reads in ``image``; None when the caption is not a shapes caption."""
    scene = parse(caption)
    if scene is None:
        return None
    r = read(image, scene)
    hits = sum(a == b for a, b in zip(r.colours, scene.colours)) + sum(a == b for a, b in zip(r.shapes, scene.shapes))
    return hits / 4


def generate(n: int, size: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """``n`` (image uint8 [size, size, 3], caption) pairs."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in range(n):
        scene = random_scene(rng)
        images.append(draw(scene, size, rng))
        captions.append(scene.caption)
    return images, captions
