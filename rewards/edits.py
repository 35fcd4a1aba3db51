"""A reward request's edits, checked and decoded within bounds (the server's first step for every edit).

`check_edit` reads only PNG headers: missing parts, non-PNG bytes, sizes that differ or exceed the pixel
limit, 16-bit or alpha images, a mask that is not single-channel; it returns what the decoded images will
take, so the server can budget a request before decoding any of it. `decode_edit` then decodes one edit
into the `DecodedEdit` a Scorer sees. Both raise ValueError naming the field; the server turns that into
a per-edit error. `check_outcome` is the other end: a scorer's answer that cannot go on the wire.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

from cocoedit.protos import reward_pb2
from cocoedit.rewards.base import DecodedEdit, EditOutcome, Scorer
from cocoedit.rewards.images import ImageDecodeError, PngHeader, check_png_header, decode_png, read_png_header


def _header(data: bytes, field: str, max_pixels: int) -> PngHeader:
    try:
        return check_png_header(read_png_header(data), max_pixels)
    except ImageDecodeError as e:
        raise ValueError(f"{field}: {e}") from None


def _same_size(header: PngHeader, field: str, source: PngHeader) -> None:
    if (header.width, header.height) != (source.width, source.height):
        raise ValueError(
            f"{field}: {header.width}x{header.height} (WxH) does not match source_image "
            f"{source.width}x{source.height}"
        )


def _image_header(data: bytes, field: str, max_pixels: int) -> PngHeader:
    header = _header(data, field, max_pixels)
    if header.color_type in (4, 6):
        raise ValueError(
            f"{field}: has {header.channels} channels ({header.describe()}); send RGB (3) or grey (1) PNGs "
            "(drop the alpha channel)"
        )
    return header


class _Images(NamedTuple):
    """The PNG bytes of an edit, read once (every read of a bytes field of a message copies it)."""

    source: bytes
    edited: bytes
    mask: bytes
    target: bytes

    @classmethod
    def of(cls, edit: reward_pb2.Edit) -> _Images:
        return cls(edit.source_image, edit.edited_image, edit.edit_mask, edit.target_image)


def expand_groups(request: reward_pb2.ScoreRequest) -> list[reward_pb2.Edit]:
    """The request's edits, each with the images of its group (`ScoreRequest.groups`, sent once per
    group) where it carries no source_image of its own; edits of other requests pass unchanged."""
    edits = list(request.edits)
    groups = {g.group_id: g for g in request.groups}
    for edit in edits:
        group = groups.get(edit.group_id)
        if group is not None and not edit.source_image:
            edit.source_image, edit.edit_mask = group.source_image, group.edit_mask
            edit.target_image = group.target_image
    return edits


def check_edit(edit: reward_pb2.Edit, scorer: Scorer, max_image_pixels: Optional[int] = None) -> int:
    """Check an edit from its PNG headers alone (nothing is decoded); return the bytes its decoded images
    will take. Raises ValueError naming the field: missing parts, non-PNG bytes, sizes that differ or are
    over `max_image_pixels`, 16-bit or alpha images, a mask that is not single-channel."""
    return _check(edit, _Images.of(edit), scorer, max_image_pixels)


def _check(edit: reward_pb2.Edit, images: _Images, scorer: Scorer, max_image_pixels: Optional[int]) -> int:
    limit = max_image_pixels or 2**62
    if scorer.needs_instruction and not edit.instruction.strip():
        raise ValueError(f"instruction: empty, but the {scorer.service} service needs the edit instruction")
    for name, data in (("source_image", images.source), ("edited_image", images.edited)):
        if not data:
            raise ValueError(f"{name}: missing (empty bytes)")
    source = _image_header(images.source, "source_image", limit)
    _same_size(_image_header(images.edited, "edited_image", limit), "edited_image", source)
    per_pixel = 3 + 3  # source and edited, uint8 RGB (grey is expanded)
    if images.mask:
        mask = _header(images.mask, "edit_mask", limit)
        if mask.channels != 1:
            raise ValueError(
                f"edit_mask: has {mask.channels} channels ({mask.describe()}); send a single-channel (grey) "
                "PNG, 255 = edit"
            )
        _same_size(mask, "edit_mask", source)
        per_pixel += 1 + 4  # decoded uint8, kept as float32
    elif scorer.needs_mask:
        raise ValueError(f"edit_mask: missing, but the {scorer.service} service needs the edit mask")
    if images.target:
        _same_size(_image_header(images.target, "target_image", limit), "target_image", source)
        per_pixel += 3
    elif scorer.needs_target:
        raise ValueError(f"target_image: missing, but the {scorer.service} service needs the target image")
    return source.pixels * per_pixel


def _decode_rgb(data: bytes, field: str) -> np.ndarray:
    """[H, W, 3] uint8 from PNG bytes of RGB, grey or palette (header already checked)."""
    try:
        image = decode_png(data)
    except ImageDecodeError as e:
        raise ValueError(f"{field}: {e}") from None
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] != 3:
        raise ValueError(
            f"{field}: has {image.shape[2]} channels; send RGB (3) or grey (1) PNGs (drop the alpha channel)"
        )
    return image


def decode_edit(edit: reward_pb2.Edit, scorer: Scorer, max_image_pixels: Optional[int] = None) -> DecodedEdit:
    """Check (check_edit) then decode one edit for `scorer`; raise ValueError naming the field on bad input."""
    images = _Images.of(edit)
    _check(edit, images, scorer, max_image_pixels)
    source = _decode_rgb(images.source, "source_image")
    edited = _decode_rgb(images.edited, "edited_image")
    warnings: list[str] = []
    mask = None
    if images.mask:
        try:
            raw = decode_png(images.mask)
        except ImageDecodeError as e:
            raise ValueError(f"edit_mask: {e}") from None
        if raw.ndim != 2:
            raise ValueError(
                f"edit_mask: has {raw.shape[2]} channels; send a single-channel (grey) PNG, 255 = edit"
            )
        # raw + 1 wraps 255 to 0: only 0 and 255 stay <= 1 (one pass, unlike np.isin)
        if np.any(raw + np.uint8(1) > 1):
            warnings.append("edit_mask was not binary (values other than 0 and 255); binarised at 0.5")
        mask = (raw >= 128).astype(np.float32)  # 128/255 >= 0.5 > 127/255
    target = _decode_rgb(images.target, "target_image") if images.target else None
    return DecodedEdit(
        edit_id=edit.edit_id,
        group_id=edit.group_id,
        policy_version=edit.policy_version,
        instruction=edit.instruction,
        source_image=source,
        edited_image=edited,
        edit_mask=mask,
        target_image=target,
        warnings=warnings,
    )


def check_outcome(outcome: EditOutcome) -> Optional[str]:
    """Why a scorer's outcome cannot go on the wire as is, or None."""
    if (outcome.score is None) == (outcome.error is None):
        return "scorer returned neither or both of score and error"
    if outcome.error is not None:
        return None
    assert outcome.score is not None  # exactly one of score and error is set (checked above)
    if not math.isfinite(outcome.score):
        return f"scorer returned a non-finite score ({outcome.score})"
    if not -1e-6 <= outcome.score <= 1 + 1e-6:
        return f"scorer returned score {outcome.score}, outside [0, 1]"
    bad = {k: v for k, v in outcome.components.items() if not math.isfinite(v)}
    if bad:
        return f"scorer returned non-finite components {bad}"
    return None
