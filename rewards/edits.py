"""A reward request's edits, checked and decoded within bounds (the server's first step for every edit).

`check_edit` reads only PNG headers: missing parts, non-PNG bytes, sizes that differ or exceed the pixel
limit, 16-bit or alpha images, a mask that is not single-channel; it returns what the decoded images will
take, so the server can budget a request before decoding any of it. `decode_edit` then decodes one edit
into the `DecodedEdit` a Scorer sees. Both raise ValueError naming the field; the server turns that into
a per-edit error. `RequestEdits` does both for a whole request: its budget and chunks (`plan`), and the
images an edit takes from its group (`ScoreRequest.groups`) decoded once for the group's edits (`decode`).
`check_outcome` is the other end: a scorer's answer that cannot go on the wire.
"""

from __future__ import annotations

import math
import threading
from typing import NamedTuple, Optional

import numpy as np

from cocoedit.protos import reward_pb2
from cocoedit.rewards.base import DecodedEdit, EditOutcome, Scorer
from cocoedit.rewards.images import ImageDecodeError, PngHeader, check_png_header, decode_png, read_png_header

MB = 1024 * 1024
NOT_BINARY = "edit_mask was not binary (values other than 0 and 255); binarised at 0.5"


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


class _Sizes(NamedTuple):
    """Bytes an edit's decoded images take: its edited image, and its source, mask and target."""

    edited: int
    rest: int


def expand_groups(request: reward_pb2.ScoreRequest) -> list[reward_pb2.Edit]:
    """The request's edits, each with the images of its group (`ScoreRequest.groups`, sent once per
    group) where it carries no source_image of its own; edits of other requests pass unchanged. This is
    what an edit sent with its group means; the server (`RequestEdits`) reads the group's bytes instead
    of copying them into every edit, and decodes them once."""
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
    return sum(_check(edit, _Images.of(edit), scorer, max_image_pixels))


def _check(edit: reward_pb2.Edit, images: _Images, scorer: Scorer, max_image_pixels: Optional[int]) -> _Sizes:
    limit = max_image_pixels or 2**62
    if scorer.needs_instruction and not edit.instruction.strip():
        raise ValueError(f"instruction: empty, but the {scorer.service} service needs the edit instruction")
    for name, data in (("source_image", images.source), ("edited_image", images.edited)):
        if not data:
            raise ValueError(f"{name}: missing (empty bytes)")
    source = _image_header(images.source, "source_image", limit)
    _same_size(_image_header(images.edited, "edited_image", limit), "edited_image", source)
    per_pixel = 3  # source, uint8 RGB (grey is expanded); the edited image is the same size
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
    return _Sizes(source.pixels * 3, source.pixels * per_pixel)


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


def _decode_mask(data: bytes) -> tuple[np.ndarray, bool]:
    """([H, W] float32 in {0, 1}, whether the PNG was binary) from a grey PNG (header already checked)."""
    try:
        raw = decode_png(data)
    except ImageDecodeError as e:
        raise ValueError(f"edit_mask: {e}") from None
    if raw.ndim != 2:
        raise ValueError(
            f"edit_mask: has {raw.shape[2]} channels; send a single-channel (grey) PNG, 255 = edit"
        )
    # raw + 1 wraps 255 to 0: only 0 and 255 stay <= 1 (one pass, unlike np.isin)
    binary = not np.any(raw + np.uint8(1) > 1)
    return (raw >= 128).astype(np.float32), binary  # 128/255 >= 0.5 > 127/255


def decode_edit(edit: reward_pb2.Edit, scorer: Scorer, max_image_pixels: Optional[int] = None) -> DecodedEdit:
    """Check (check_edit) then decode one edit for `scorer`; raise ValueError naming the field on bad input."""
    images = _Images.of(edit)
    _check(edit, images, scorer, max_image_pixels)
    source = _decode_rgb(images.source, "source_image")
    edited = _decode_rgb(images.edited, "edited_image")
    mask = _decode_mask(images.mask) if images.mask else None
    target = _decode_rgb(images.target, "target_image") if images.target else None
    return _decoded(edit, source, edited, mask, target)


def _decoded(
    edit: reward_pb2.Edit,
    source: np.ndarray,
    edited: np.ndarray,
    mask: Optional[tuple[np.ndarray, bool]],
    target: Optional[np.ndarray],
) -> DecodedEdit:
    return DecodedEdit(
        edit_id=edit.edit_id,
        group_id=edit.group_id,
        policy_version=edit.policy_version,
        instruction=edit.instruction,
        source_image=source,
        edited_image=edited,
        edit_mask=None if mask is None else mask[0],
        target_image=target,
        warnings=[] if mask is None or mask[1] else [NOT_BINARY],
    )


class _Group(NamedTuple):
    """The PNG bytes a group's edits share, read once per request."""

    source: bytes
    mask: bytes
    target: bytes


class _SharedImages(NamedTuple):
    """A group's decoded images (read-only), or the per-edit errors decoding them gave: an edit raises
    `source_error` before decoding its edited image, `error` (the mask's, else the target's) after it,
    the order in which decode_edit meets them."""

    source: Optional[np.ndarray]  # [H, W, 3] uint8
    mask: Optional[tuple[np.ndarray, bool]]  # [H, W] float32, whether the PNG was binary
    target: Optional[np.ndarray]  # [H, W, 3] uint8
    source_error: Optional[str] = None
    error: Optional[str] = None


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _decode_shared(group: _Group) -> _SharedImages:
    try:
        source = _read_only(_decode_rgb(group.source, "source_image"))
    except ValueError as e:  # every edit of the group fails on its source before anything else
        return _SharedImages(None, None, None, source_error=str(e))
    try:
        mask = _decode_mask(group.mask) if group.mask else None
        target = _decode_rgb(group.target, "target_image") if group.target else None
    except ValueError as e:
        return _SharedImages(source, None, None, error=str(e))
    return _SharedImages(
        source,
        None if mask is None else (_read_only(mask[0]), mask[1]),
        None if target is None else _read_only(target),
    )


class _Shared:
    """A group's images, decoded once (by the first decode thread that needs them) for the `pending`
    edits planned to share them, and dropped here once they all took them (their DecodedEdits keep
    the arrays for as long as they live)."""

    def __init__(self, group: _Group) -> None:
        self.group = group
        self.pending = 0
        self._lock = threading.Lock()
        self._images: Optional[_SharedImages] = None

    def images(self) -> _SharedImages:
        with self._lock:
            if self._images is None:
                self._images = _decode_shared(self.group)
            return self._images

    def release(self) -> None:
        """One of the pending edits is done with its images."""
        with self._lock:
            self.pending -= 1
            if self.pending <= 0:
                self._images = None


class RequestEdits:
    """One ScoreRequest's edits as the server budgets and decodes them, each group's images decoded once.

        edits = RequestEdits(request, scorer, max_image_pixels)
        errors, chunks = edits.plan(max_request_decoded_mb, chunk_decoded_mb)  # headers only
        decoded = [edits.decode(i) for i in chunks[0]]  # thread-safe; ValueError as decode_edit

    An edit without a source_image of its own, of a group the request lists (`ScoreRequest.groups`),
    takes the group's source, mask and target (the edit `expand_groups` would make); the group's bytes
    are read once, checked with each edit (the same per-edit errors), and decoded once for the edits
    that share them: each gets the same arrays, read-only, so a scorer that writes into an image
    raises instead of changing its neighbours'. An edit with its own images is decoded by decode_edit.

    Budget: a group's images count once in `max_request_decoded_mb` (they are decoded once) and once in
    each chunk that holds edits of it (they are alive while such a chunk is decoded and scored). They
    are kept only over consecutive chunks: a group whose edits come back after a chunk without any is
    decoded (and counted) again, so decoded images still take ~2 chunks of memory.
    """

    def __init__(
        self, request: reward_pb2.ScoreRequest, scorer: Scorer, max_image_pixels: Optional[int] = None
    ) -> None:
        self.edits = list(request.edits)
        self.scorer = scorer
        self.max_image_pixels = max_image_pixels
        listed = {g.group_id: g for g in request.groups}
        read: dict[str, _Group] = {}
        self._groups: list[Optional[_Group]] = []  # per edit: the group it takes its images from
        for edit in self.edits:
            group = listed.get(edit.group_id)
            if group is not None and not edit.source_image:
                if edit.group_id not in read:
                    read[edit.group_id] = _Group(group.source_image, group.edit_mask, group.target_image)
                self._groups.append(read[edit.group_id])
            else:
                self._groups.append(None)
        self._shared: list[Optional[_Shared]] = [None] * len(self.edits)  # set by plan()

    def _images(self, i: int) -> _Images:
        group, edit = self._groups[i], self.edits[i]
        if group is None:
            return _Images.of(edit)
        return _Images(group.source, edit.edited_image, group.mask, group.target)

    def plan(
        self, max_request_decoded_mb: int, chunk_decoded_mb: int
    ) -> tuple[dict[int, str], list[list[int]]]:
        """From the PNG headers alone: per-edit errors by index (check_edit's, and every edit past the
        request's budget), and the chunks (lists of indices, in order) of the edits to decode, each of
        ~chunk_decoded_mb decoded bytes (at least one edit)."""
        budget, chunk_bytes = max_request_decoded_mb * MB, chunk_decoded_mb * MB
        errors: dict[int, str] = {}
        chunks: list[list[int]] = []
        spent = in_chunk = 0
        this: set[str] = set()  # groups with edits in the last chunk
        before: set[str] = set()  # ... in the chunk before it
        live: dict[str, _Shared] = {}  # group -> the images its next edits share
        for i, edit in enumerate(self.edits):
            group = self._groups[i]
            try:
                sizes = _check(edit, self._images(i), self.scorer, self.max_image_pixels)
            except ValueError as e:
                errors[i] = str(e)
                continue
            key = None if group is None else edit.group_id
            own, shared = (sum(sizes), 0) if group is None else sizes
            new_chunk = not chunks or in_chunk + own + (0 if key in this else shared) > chunk_bytes
            reuse = key in this or (key in before and not new_chunk)
            size = own if reuse else own + shared
            if spent + size > budget:
                errors[i] = (
                    f"request over its decoded-bytes budget: this edit decodes to {size / MB:.1f} MB and the "
                    f"edits before it to {spent / MB:.1f} MB, over max_request_decoded_mb="
                    f"{max_request_decoded_mb}; send it in another request (fewer edits per request)"
                )
                continue
            spent += size
            if new_chunk:
                chunks.append([])
                before, this, in_chunk = this, set(), 0
            chunks[-1].append(i)
            in_chunk += own if key in this else own + shared
            if group is not None and key is not None:
                if not reuse:
                    live[key] = _Shared(group)
                live[key].pending += 1
                self._shared[i] = live[key]
                this.add(key)
        return errors, chunks

    def decode(self, i: int) -> DecodedEdit:
        """Edit i, checked and decoded; raises ValueError naming the field, as decode_edit. Thread-safe."""
        group, edit = self._groups[i], self.edits[i]
        if group is None:
            return decode_edit(edit, self.scorer, self.max_image_pixels)
        shared = self._shared[i] or _Shared(group)  # an edit plan() did not lay out: decoded alone
        images = self._images(i)
        try:
            _check(edit, images, self.scorer, self.max_image_pixels)
            decoded = shared.images()
        finally:
            shared.release()
        if decoded.source_error is not None:
            raise ValueError(decoded.source_error)
        edited = _decode_rgb(images.edited, "edited_image")
        if decoded.error is not None:
            raise ValueError(decoded.error)
        assert decoded.source is not None  # source_error is None
        return _decoded(edit, decoded.source, edited, decoded.mask, decoded.target)


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
