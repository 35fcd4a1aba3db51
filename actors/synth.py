"""The synthetic edit task: coloured shapes on textured backgrounds, generated in code.

Every item has an exact edit mask and an exact target image, so instruction following can be scored
exactly (rewards/synthetic.py) and a tiny editor can learn the task on CPU. Four edit types, balanced
(item i has task TASKS[i % 4]), tagged in `EditItem.task`:

    recolour    "make the red circle blue"          mask = the object's footprint
    remove      "remove the red circle"             mask = the object's footprint (background known)
    add         "add a green square at top left"    mask = the new object's footprint
    background  "make the background black"         mask = every pixel outside the objects

The visual vocabulary is deliberately small (3 shapes x 4 colours, 4 background colours, 5 places), and
instructions are short (at most MAX_INSTRUCTION_CHARS non-space characters) for the tiny editors.
Shapes never overlap (their bounding boxes are disjoint), so removing one reveals the background that
was generated first and kept. Everything is deterministic from (seed, item index): item i is the same
whatever `num` is.

    cocoedit data synth --out DIR --num 64 --size 64 --seed 0
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cocoedit.actors.types import EditItem, SynthRef

TASKS = ("recolour", "remove", "add", "background")
SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 220),
    "yellow": (235, 200, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (225, 225, 225),
    "gray": (128, 128, 128),
    "black": (35, 35, 35),
    "beige": (205, 185, 145),
}
PLACES = ("top left", "top right", "lower left", "lower right", "center")
TEMPLATES: dict[str, tuple[str, ...]] = {
    "recolour": (
        "make the {colour} {shape} {new_colour}",
        "turn the {colour} {shape} {new_colour}",
        "paint the {colour} {shape} {new_colour}",
    ),
    "remove": ("remove the {colour} {shape}", "delete the {colour} {shape}", "erase the {colour} {shape}"),
    "add": ("add a {colour} {shape} {where}", "put a {colour} {shape} {where}"),
    "background": (
        "make the background {new_colour}",
        "turn the background {new_colour}",
        "change the background to {new_colour}",
    ),
}
# The tiny editors tokenize by character (one token per non-space character, plus BOS/EOS) with a
# 32-token budget: every instruction stays within this many non-space characters so none is truncated.
MAX_INSTRUCTION_CHARS = 30
MIN_SIZE = 24  # below this, shapes of radius >= 5 px do not fit in a quadrant
TEXTURE_WAVE = 12.0  # amplitude of the low-frequency background wave (uint8 levels)
TEXTURE_NOISE = 6  # per-pixel uniform noise in [-TEXTURE_NOISE, TEXTURE_NOISE]


@dataclass(frozen=True)
class Shape:
    """One object: `kind` in SHAPES, `colour` in COLOURS, center (cx, cy) in pixels, box half-size r.

    The shape fits in the box [cx - r, cx + r] x [cy - r, cy + r] (pixel-center coordinates)."""

    kind: str
    colour: str
    cx: int
    cy: int
    r: int


@dataclass(frozen=True)
class SynthExample:
    """One generated item with the scene that explains it (for tests and debugging)."""

    item: EditItem
    background: str  # background colour name of the source
    objects: tuple[Shape, ...]  # objects in the source image
    edited: Optional[Shape]  # the object recoloured / removed / added (None for background)


def rasterize(shape: Shape, size: int) -> np.ndarray:
    """Footprint of `shape` on a size x size grid: bool [size, size], tested at pixel centers."""
    footprint = np.zeros((size, size), dtype=bool)
    # only the shape's bounding box can be inside; testing just that keeps 512 px scenes cheap
    y0, y1 = max(shape.cy - shape.r - 1, 0), min(shape.cy + shape.r + 2, size)
    x0, x1 = max(shape.cx - shape.r - 1, 0), min(shape.cx + shape.r + 2, size)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy = xs - shape.cx, ys - shape.cy
    r = float(shape.r)
    if shape.kind == "circle":
        inside = dx**2 + dy**2 <= (r + 0.3) ** 2  # +0.3: no one-pixel nubs at the four extremes
    elif shape.kind == "square":
        inside = (np.abs(dx) <= 0.9 * r) & (np.abs(dy) <= 0.9 * r)
    elif shape.kind == "triangle":
        # apex (0, -r), base corners (+-r, r): inside when below both slanted edges and above the base
        inside = (dy <= r) & (2 * dx - dy <= r) & (-2 * dx - dy <= r)
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r}; expected one of {SHAPES}")
    footprint[y0:y1, x0:x1] = inside
    return footprint


def background_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Zero-mean luminance texture int16 [size, size]: a low-frequency wave plus per-pixel noise."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    fx, fy = rng.uniform(0.5, 2.0, size=2) * rng.choice([-1.0, 1.0], size=2)
    phase = rng.uniform(0.0, 2 * np.pi)
    wave = TEXTURE_WAVE * np.sin(2 * np.pi * (fx * xs + fy * ys) / size + phase)
    noise = rng.integers(-TEXTURE_NOISE, TEXTURE_NOISE + 1, size=(size, size))
    return (np.round(wave) + noise).astype(np.int16)


def render(background: str, texture: np.ndarray, objects: tuple[Shape, ...] | list[Shape]) -> np.ndarray:
    """Image uint8 [size, size, 3]: the textured background colour, then every object as a solid fill."""
    base = np.asarray(BACKGROUNDS[background], dtype=np.int16)
    image = np.clip(base[None, None, :] + texture[:, :, None], 0, 255).astype(np.uint8)
    for shape in objects:
        image[rasterize(shape, texture.shape[0])] = COLOURS[shape.colour]
    return image


def _radius_range(size: int) -> tuple[int, int]:
    r_min = max(5, round(0.14 * size))
    r_max = max(r_min, min(round(0.2 * size), (size - 2) // 4))
    return r_min, r_max


def _place_box(place: str, size: int, r: int) -> tuple[int, int, int, int]:
    """(x_lo, x_hi, y_lo, y_hi) inclusive range of centers whose box lies inside the named place."""
    half = size // 2
    if place == "center":
        lo, hi = size // 4 + r, size - size // 4 - 1 - r
        return lo, hi, lo, hi
    x_lo, x_hi = (r, half - 1 - r) if place.endswith("left") else (half + r, size - 1 - r)
    y_lo, y_hi = (r, half - 1 - r) if place.startswith("top") else (half + r, size - 1 - r)
    return x_lo, x_hi, y_lo, y_hi


def _disjoint(a: Shape, b: Shape) -> bool:
    gap = 2  # pixels between bounding boxes, so shapes read as separate objects
    return abs(a.cx - b.cx) > a.r + b.r + gap or abs(a.cy - b.cy) > a.r + b.r + gap


def _random_shape(
    rng: np.random.Generator,
    size: int,
    taken: list[Shape],
    box: Optional[tuple[int, int, int, int]] = None,
    r: Optional[int] = None,
) -> Optional[Shape]:
    """A new shape with a (colour, kind) not in `taken`, disjoint from it; None if none fits in 100 tries."""
    r_min, r_max = _radius_range(size)
    used = {(s.colour, s.kind) for s in taken}
    free = [(c, k) for c in COLOURS for k in SHAPES if (c, k) not in used]
    colour, kind = free[rng.integers(len(free))]
    r = int(rng.integers(r_min, r_max + 1)) if r is None else r
    x_lo, x_hi, y_lo, y_hi = box if box is not None else (r + 1, size - 2 - r, r + 1, size - 2 - r)
    for _ in range(100):
        shape = Shape(kind, colour, int(rng.integers(x_lo, x_hi + 1)), int(rng.integers(y_lo, y_hi + 1)), r)
        if all(_disjoint(shape, s) for s in taken):
            return shape
    return None


def _scatter(rng: np.random.Generator, size: int, count: int, taken: list[Shape]) -> list[Shape]:
    """Up to `count` more disjoint shapes (fewer when the image is full)."""
    shapes = list(taken)
    for _ in range(count):
        shape = _random_shape(rng, size, shapes)
        if shape is not None:
            shapes.append(shape)
    return shapes[len(taken) :]


def _tensor_image(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def synthetic_example(index: int, size: int, seed: int) -> SynthExample:
    """Item `index` of the synthetic task for `seed`, at size x size pixels (deterministic)."""
    _check_size(size)
    rng = np.random.default_rng([seed, index])
    task = TASKS[index % len(TASKS)]
    background = str(rng.choice(list(BACKGROUNDS)))
    texture = background_texture(rng, size)
    template = str(rng.choice(TEMPLATES[task]))
    edited: Optional[Shape] = None

    if task == "add":
        place = str(rng.choice(PLACES))
        r_min = _radius_range(size)[0]
        new = _random_shape(rng, size, [], _place_box(place, size, r_min), r=r_min)
        assert new is not None  # an empty scene always has room for one shape in its place
        objects = tuple(_scatter(rng, size, int(rng.integers(1, 3)), [new]))
        edited = new
        source = render(background, texture, objects)
        target = render(background, texture, (*objects, new))
        mask = rasterize(new, size)
        instruction = template.format(colour=new.colour, shape=new.kind, where=place_phrase(place))
    else:
        objects = tuple(_scatter(rng, size, int(rng.integers(1, 4)), []))
        source = render(background, texture, objects)
        if task == "background":
            new_bg = str(rng.choice([b for b in BACKGROUNDS if b != background]))
            target = render(new_bg, texture, objects)
            mask = ~np.any([rasterize(s, size) for s in objects], axis=0)
            instruction = template.format(new_colour=new_bg)
        else:
            k = int(rng.integers(len(objects)))
            edited = objects[k]
            rest = objects[:k] + objects[k + 1 :]
            if task == "remove":
                target = render(background, texture, rest)
                instruction = template.format(colour=edited.colour, shape=edited.kind)
            else:
                used = {(s.colour, s.kind) for s in rest}
                choices = [c for c in COLOURS if c != edited.colour and (c, edited.kind) not in used]
                new_colour = str(rng.choice(choices))
                target = render(background, texture, (*rest, replace(edited, colour=new_colour)))
                instruction = template.format(colour=edited.colour, shape=edited.kind, new_colour=new_colour)
            mask = rasterize(edited, size)

    item = EditItem(
        item_id=SynthRef(index, size, seed).item_id,
        instruction=instruction,
        source_image=_tensor_image(source),
        edit_mask=torch.from_numpy(mask.astype(np.float32))[None],
        target_image=_tensor_image(target),
        task=task,
    )
    return SynthExample(item=item, background=background, objects=objects, edited=edited)


def _check_size(size: int) -> None:
    if size < MIN_SIZE:
        raise ValueError(f"synthetic image size {size} px is too small; use at least {MIN_SIZE} px")


def synthetic_items(num: int, size: int, seed: int) -> list[EditItem]:
    """`num` items of the synthetic task in memory: images uint8 [3, size, size], masks [1, size, size]."""
    if num < 1:
        raise ValueError(f"synthetic item count must be >= 1, got {num}")
    return [synthetic_example(i, size, seed).item for i in range(num)]


def synthetic_refs(num: int, size: int, seed: int) -> list[SynthRef]:
    """`num` items of the synthetic task as references, nothing generated: `load_synthetic(ref)` gives
    `synthetic_items(num, size, seed)[ref.index]`, bit for bit. Refuses what synthetic_items refuses."""
    if num < 1:
        raise ValueError(f"synthetic item count must be >= 1, got {num}")
    _check_size(size)
    return [SynthRef(i, size, seed) for i in range(num)]


def load_synthetic(ref: SynthRef) -> EditItem:
    """The item `ref` names, generated: images uint8 [3, size, size], mask float32 [1, size, size]."""
    return synthetic_example(ref.index, ref.size, ref.seed).item


def place_phrase(place: str) -> str:
    """How an add instruction names a place in PLACES ("at top left", "in the center")."""
    return "in the center" if place == "center" else f"at {place}"


def vocabulary() -> list[str]:
    """Every word the synthetic instructions can use (for tokenizers built in code), sorted."""
    fills = {
        "{colour}": list(COLOURS),
        "{new_colour}": [*COLOURS, *BACKGROUNDS],
        "{shape}": list(SHAPES),
        "{where}": [w for p in PLACES for w in place_phrase(p).split()],
    }
    words = {w for ts in TEMPLATES.values() for t in ts for tok in t.split() for w in fills.get(tok, [tok])}
    return sorted(words)


def _save_png(array: np.ndarray, path: Path) -> None:
    from cocoedit.rewards.images import encode_png

    path.write_bytes(encode_png(array))  # same pixels -> same bytes: identical files on every run


def write_synthetic_dataset(out_dir: str | Path, num: int, size: int, seed: int) -> Path:
    """Write `num` items as PNGs (source, edit mask white = edit, target) and `manifest.jsonl`.

    Layout: OUT/manifest.jsonl, OUT/source/<id>.png, OUT/mask/<id>.png, OUT/target/<id>.png. The bytes
    are identical across runs for the same (num, size, seed). Returns the manifest path."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new directory or delete it first")
    for sub in ("source", "mask", "target"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    lines = []
    for item in synthetic_items(num, size, seed):
        paths = {sub: f"{sub}/{item.item_id}.png" for sub in ("source", "mask", "target")}
        assert item.target_image is not None
        _save_png(item.source_image.permute(1, 2, 0).numpy(), out / paths["source"])
        _save_png((item.edit_mask[0].numpy() * 255).astype(np.uint8), out / paths["mask"])
        _save_png(item.target_image.permute(1, 2, 0).numpy(), out / paths["target"])
        record = {
            "id": item.item_id,
            "source": paths["source"],
            "instruction": item.instruction,
            "mask": paths["mask"],
            "target": paths["target"],
            "task": item.task,
        }
        lines.append(json.dumps(record) + "\n")
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(lines), encoding="utf-8")
    return manifest


def cli_synth(args: argparse.Namespace) -> int:
    """`cocoedit data synth --out DIR --num N --size PX --seed S`."""
    try:
        manifest = write_synthetic_dataset(args.out, args.num, args.size, args.seed)
    except (FileExistsError, ValueError) as e:
        print(f"data synth: {e}")
        return 1
    tasks = Counter(TASKS[i % len(TASKS)] for i in range(args.num))
    summary = ", ".join(f"{t} {tasks[t]}" for t in TASKS if tasks[t])
    print(f"wrote {args.num} items ({args.size}x{args.size} px, seed {args.seed}; {summary}) to {manifest}")
    return 0
