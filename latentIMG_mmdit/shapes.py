"""The procedural captioned-shapes set and the pixel probe that reads it back.

Two objects on black, one in each half along an axis: "a red circle above a blue square" puts the
red circle in the top half and the blue square in the bottom one ("left of" / "right of": the left
and right halves); colour x shape x relation x colour x shape = 4 x 3 x 4 x 4 x 3 = 576 captions.
Or one object (``objects=1``) in one half: "a red circle at the top" (at the bottom, on the left,
on the right); 4 x 3 x 4 = 48 captions. Positions and sizes jitter a little, seeded.

The probe is deterministic and reads pixels only: the caption says which half holds which object;
in each half the foreground (pixels whose brightest channel exceeds ``FG``) gives a colour (the
palette entry nearest the median foreground pixel) and a shape (foreground / bounding-box area:
a square fills ~1, a circle pi/4, a triangle 1/2). ``score`` is the fraction of the caption's
attributes read back: each object's colour and shape in its half (an object in the wrong half is
not found), and for one object, that the other half is empty (else painting it everywhere would
pass). Scored against another record's caption it is the chance level: what an image that ignores
its caption gets. On the generated images themselves it reads 100 % (tests/test_image_mmdit.py),
so a shortfall of a model's samples is the model's.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

PALETTE = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (235, 220, 40)}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("above", "below", "left of", "right of")  # two objects
PLACES = ("at the top", "at the bottom", "on the left", "on the right")  # one object
FG = 80  # uint8: brighter than this in some channel = an object pixel (the background is 0)
_TWO = re.compile(r"^a (\w+) (\w+) (above|below|left of|right of) a (\w+) (\w+)$")
_ONE = re.compile(r"^a (\w+) (\w+) (at the top|at the bottom|on the left|on the right)$")


class Scene(NamedTuple):
    colours: tuple[str, ...]  # the caption's objects, in caption order
    shapes: tuple[str, ...]
    relation: str  # a RELATIONS entry (two objects) or a PLACES entry (one)

    @property
    def caption(self) -> str:
        if len(self.colours) == 1:
            return f"a {self.colours[0]} {self.shapes[0]} {self.relation}"
        return f"a {self.colours[0]} {self.shapes[0]} {self.relation} a {self.colours[1]} {self.shapes[1]}"

    def halves(self) -> tuple[str, tuple[int, ...]]:
        """(axis, the half of each object): axis "v" = top (0) / bottom (1), "h" = left (0) / right (1)."""
        axis = "v" if self.relation in ("above", "below", "at the top", "at the bottom") else "h"
        first = 0 if self.relation in ("above", "left of", "at the top", "on the left") else 1
        return axis, (first,) if len(self.colours) == 1 else (first, 1 - first)


def parse(caption: str) -> Scene | None:
    """The scene a shapes caption describes, or None (not a shapes caption)."""
    text = caption.strip().lower()
    two, one = _TWO.match(text), _ONE.match(text)
    if two:
        scene = Scene((two[1], two[4]), (two[2], two[5]), two[3])
    elif one:
        scene = Scene((one[1],), (one[2],), one[3])
    else:
        return None
    ok = all(c in PALETTE for c in scene.colours) and all(s in SHAPES for s in scene.shapes)
    return scene if ok else None


def random_scene(rng: np.random.Generator, objects: int = 2) -> Scene:
    colours = list(PALETTE)
    cs = tuple(colours[rng.integers(4)] for _ in range(objects))
    ss = tuple(SHAPES[rng.integers(3)] for _ in range(objects))
    return Scene(cs, ss, (RELATIONS if objects == 2 else PLACES)[rng.integers(4)])


def draw(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``[size, size, 3]``."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), (0, 0, 0))
    d = ImageDraw.Draw(im)
    axis, halves = scene.halves()
    for obj, half in enumerate(halves):
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
    colours: tuple[str | None, ...]  # what the probe read in the halves the caption names
    shapes: tuple[str | None, ...]
    other_empty: bool | None  # one object: nothing in the other half (None with two objects)


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
    axis, where = scene.halves()
    h, w = image.shape[:2]
    halves = ((image[: h // 2], image[h // 2:]) if axis == "v" else (image[:, : w // 2], image[:, w // 2:]))
    read = [_read_half(halves[k]) for k in where]
    empty = _read_half(halves[1 - where[0]])[0] is None if len(where) == 1 else None
    return Reading(tuple(c for c, _ in read), tuple(s for _, s in read), empty)


def score(image: np.ndarray, caption: str) -> float | None:
    """The fraction of the caption's attributes (each object's colour and shape, in its half) the
    probe reads in ``image``; None when the caption is not a shapes caption."""
    scene = parse(caption)
    if scene is None:
        return None
    r = read(image, scene)
    hits = sum(a == b for a, b in zip(r.colours, scene.colours)) + sum(a == b for a, b in zip(r.shapes, scene.shapes))
    if r.other_empty is None:  # two objects: 2 colours + 2 shapes
        return hits / 4
    return (hits + int(r.other_empty)) / 3  # one object: colour, shape, the other half empty


def generate(n: int, size: int, seed: int, objects: int = 2) -> tuple[list[np.ndarray], list[str]]:
    """``n`` (image uint8 [size, size, 3], caption) pairs of ``objects`` (1 or 2) objects each."""
    if objects not in (1, 2):
        raise ValueError(f"objects must be 1 or 2, got {objects}")
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in range(n):
        scene = random_scene(rng, objects)
        images.append(draw(scene, size, rng))
        captions.append(scene.caption)
    return images, captions
