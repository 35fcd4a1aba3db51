"""Typed messages that cross process boundaries on the actor side (plain dataclasses, CPU tensors).

Shapes: N edits, H x W pixels, L packed latent tokens, D packed channels, T sampler steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import torch


@dataclass(frozen=True)
class EditItem:
    """One training or evaluation item, as loaded (images already center-cropped and resized)."""

    item_id: str
    instruction: str
    source_image: torch.Tensor  # [3, H, W] uint8
    edit_mask: torch.Tensor  # [1, H, W] float32 in [0, 1], 1 = region to edit
    target_image: Optional[torch.Tensor] = None  # [3, H, W] uint8, known target (synthetic task)
    task: str = ""  # edit type / benchmark group tag


@dataclass(frozen=True)
class DataSource:
    """Where the files of one data file's items live and how they are prepared (one per data file,
    shared by its ItemRefs)."""

    path: str  # the data file, as error messages name it
    root: str  # every item path is relative to this folder and must resolve inside it
    image_size: int  # center-crop to square, then resize to image_size
    mask_polarity: str  # "edit_white" or "keep_white"
    max_file_bytes: int
    max_image_pixels: int  # width * height, read from the image header before decoding


@dataclass(frozen=True)
class ItemRef:
    """One item of a data file as the driver holds it: text and file paths, no pixels (a few hundred
    bytes). Rollout workers read, decode and crop the files themselves (`actors.items.read_item`)."""

    item_id: str
    instruction: str
    source: str  # path relative to data.root (normalised, never absolute, never leaving the root)
    mask: str
    target: Optional[str]
    task: str
    group: str
    line: int  # 1-based line of the data file that lists the item
    data: DataSource


@dataclass(frozen=True)
class SynthRef:
    """One item of the synthetic task (actors/synth.py) as the driver holds it: where it is in the task,
    no pixels (tens of bytes). Whoever uses it generates it (`actors.items.load_item`), bit-identical to
    `synthetic_items(num, size, seed)[index]` for any num > index."""

    index: int
    size: int  # image side in pixels
    seed: int

    @property
    def item_id(self) -> str:
        return f"synth-s{self.seed}-{self.index:05d}"


# An item as the driver's index holds it: an ItemRef or a SynthRef is loaded (files read, or pixels
# generated) where it is used, by `actors.items.load_item` and the rollout workers' ItemPrefetcher.
IndexItem = EditItem | ItemRef | SynthRef


@dataclass(frozen=True)
class GroupedItem:
    """An item drawn for one epoch: the same item appears group_size times with one group_id."""

    item: IndexItem  # an ItemRef or SynthRef is loaded by the rollout worker that samples it
    group_id: str  # f"{epoch}:{item_id}" - explicit, never derived from the instruction text
    edit_id: str  # unique within the epoch
    seed: int  # initial-noise seed of this edit (distinct inside a group)

    @property
    def loaded(self) -> EditItem:
        """`item` with its pixels, as ItemPrefetcher.resolve leaves it; a reference still here is an error."""
        if not isinstance(self.item, EditItem):
            raise TypeError(
                f"item {self.item.item_id!r} is not loaded yet: resolve its {type(self.item).__name__} first"
            )
        return self.item


@dataclass
class Condition:
    """Conditioning tensors of a policy family, batched on dim 0 (one row per edit, or per group in a
    RolloutBatch), CPU between processes.

    FLUX-Kontext: prompt_embeds [N, S, 4096*], pooled_prompt_embeds [N, 768*], text_ids [S, 3],
    image_latents [N, L_src, D], image_ids [L_src, 3], guidance [N].
    Qwen-Image-Edit: prompt_embeds [N, S, C], prompt_embeds_mask [N, S], image_latents [N, L_src, D].
    (* sizes of the full model; tiny models are smaller). Tensors whose first dim is not N are shared.
    """

    tensors: dict[str, torch.Tensor]
    batched: frozenset[str]  # names of tensors whose dim 0 is the edit index

    def __len__(self) -> int:
        return next(v.shape[0] for k, v in self.tensors.items() if k in self.batched)

    def select(self, index: torch.Tensor | list[int]) -> Condition:
        idx = torch.as_tensor(index, dtype=torch.long)
        return Condition(
            {k: (v[idx] if k in self.batched else v) for k, v in self.tensors.items()},
            self.batched,
        )

    def to(self, device: torch.device | str, dtype: Optional[torch.dtype] = None) -> Condition:
        def move(v: torch.Tensor) -> torch.Tensor:
            if dtype is not None and v.is_floating_point():
                return v.to(device=device, dtype=dtype)
            return v.to(device=device)

        return Condition({k: move(v) for k, v in self.tensors.items()}, self.batched)

    @staticmethod
    def cat(conditions: list[Condition]) -> Condition:
        first = conditions[0]
        return Condition(
            {
                k: (torch.cat([c.tensors[k] for c in conditions]) if k in first.batched else v)
                for k, v in first.tensors.items()
            },
            first.batched,
        )


@dataclass
class RolloutBatch:
    """What rollout workers return for a list of GroupedItems (everything the learner and rewards need).

    The edits of a group share their item, so what comes from the item (the condition: prompt
    embeddings, source latents, ~7.5 MB per row for FLUX at 512 px in bf16; the source image, the
    edit mask as one byte per pixel, the target) is stored once per group: G rows, and edit i uses
    row `group_index[i]`. The learner expands rows per micro-batch on its device (`edit_condition`,
    `edit_source_latents`, `edit_masks_unit`). `per_edit()` gives the layout with one row per edit.
    A batch without pixels (`without_images()`, what the learner is sent) has [N|G, 3, 0, 0] images.
    """

    edit_ids: list[str]
    item_ids: list[str]
    group_ids: list[str]
    instructions: list[str]
    policy_version: int
    x0: torch.Tensor  # [N, L, D] float32, final clean latents of the edits (packed)
    source_latents: torch.Tensor  # [G, L, D] float32, packed latents of the source images (x_src), per row
    condition: Condition  # G rows
    group_index: torch.Tensor  # [N] int64, edit i's row in condition and source_latents
    edited_images: torch.Tensor  # [N, 3, H, W] uint8, decoded x0
    source_images: torch.Tensor  # [G, 3, H, W] uint8, per row
    edit_masks: torch.Tensor  # [G, 1, H, W] uint8, per row: round(255 * mask), 255 = edit
    sigmas: torch.Tensor  # [T + 1] the sampler's sigma schedule (1 ... 0), shifted
    sampler: str
    height: int
    width: int
    seeds: list[int]
    target_images: Optional[torch.Tensor] = None  # [G, 3, H, W] uint8, per row (synthetic task)
    # Flow-GRPO only: the SDE trajectory and per-step log-probabilities under theta_old.
    trajectory: Optional[torch.Tensor] = None  # [N, T + 1, L, D]
    log_probs: Optional[torch.Tensor] = None  # [N, T]
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, rows = len(self.edit_ids), len(self.condition)
        per_row = {name: getattr(self, name) for name in _PER_ROW_TENSORS if getattr(self, name) is not None}
        wrong = {name: tuple(v.shape) for name, v in per_row.items() if v.shape[0] != rows}
        if self.group_index.shape != (n,) or wrong:
            raise ValueError(
                f"RolloutBatch of {n} edits needs group_index [{n}] and one row per condition row ({rows}) "
                f"in {', '.join(_PER_ROW_TENSORS)}; got group_index {tuple(self.group_index.shape)}, {wrong}"
            )
        if self.edit_masks.dtype != torch.uint8:
            raise ValueError(
                f"RolloutBatch.edit_masks must be uint8 (round(255 * mask), 255 = edit), got "
                f"{self.edit_masks.dtype}: convert with `(mask * 255).round().to(torch.uint8)`"
            )

    def __len__(self) -> int:
        return len(self.edit_ids)

    def edit_condition(self, index: list[int] | torch.Tensor) -> Condition:
        """The condition of the edits at `index`, one row per edit."""
        return self.condition.select(self.group_index[torch.as_tensor(index, dtype=torch.long)])

    def edit_source_latents(self, index: list[int] | torch.Tensor) -> torch.Tensor:
        """x_src of the edits at `index`: [len(index), L, D]."""
        return self.source_latents[self.group_index[torch.as_tensor(index, dtype=torch.long)]]

    def edit_masks_unit(self, index: list[int] | torch.Tensor) -> torch.Tensor:
        """The edit masks of the edits at `index` as float32 in [0, 1] (1 = edit): [len(index), 1, H, W]."""
        return self.edit_masks[self.group_index[torch.as_tensor(index, dtype=torch.long)]].float() / 255

    def _rows(self, rows: torch.Tensor) -> dict[str, Any]:
        """The per-row fields (condition, source latents, source/target images, masks) at `rows`."""
        return {
            "condition": self.condition.select(rows),
            **{
                name: getattr(self, name)[rows]
                for name in _PER_ROW_TENSORS
                if getattr(self, name) is not None
            },
        }

    def select(self, index: list[int]) -> RolloutBatch:
        """The edits at `index` (in that order), as a new batch holding only the rows they use."""
        idx = torch.as_tensor(index, dtype=torch.long)
        rows, group_index = torch.unique(self.group_index[idx], return_inverse=True)
        changes: dict[str, Any] = {name: [getattr(self, name)[i] for i in index] for name in _PER_EDIT_LISTS}
        changes |= {
            name: getattr(self, name)[idx] for name in _PER_EDIT_TENSORS if getattr(self, name) is not None
        }
        return dataclasses.replace(self, **changes, **self._rows(rows), group_index=group_index)

    def per_edit(self) -> RolloutBatch:
        """The same batch with one row per edit (the layout without sharing)."""
        every = torch.arange(len(self))
        return dataclasses.replace(self, **self._rows(self.group_index), group_index=every)

    def without_images(self) -> RolloutBatch:
        """The batch without its edited, source and target pixels ([N|G, 3, 0, 0], target None): what
        the learner needs (latents, conditions, masks), not what the reward services needed."""
        return dataclasses.replace(
            self,
            edited_images=self.edited_images[:, :, :0, :0],
            source_images=self.source_images[:, :, :0, :0],
            target_images=None,
        )

    @staticmethod
    def cat(batches: list[RolloutBatch]) -> RolloutBatch:
        """Concatenate shards sampled with the same policy version and sampler settings."""
        first = batches[0]
        for b in batches[1:]:
            if (b.policy_version, b.sampler, b.height, b.width) != (
                first.policy_version,
                first.sampler,
                first.height,
                first.width,
            ):
                raise ValueError(
                    f"cannot concatenate rollout shards of different versions/settings: "
                    f"{(b.policy_version, b.sampler, b.height, b.width)} vs "
                    f"{(first.policy_version, first.sampler, first.height, first.width)}"
                )
        timings: dict[str, float] = {}
        for b in batches:
            for k, v in b.timings.items():
                timings[k] = max(timings.get(k, 0.0), v)  # shards run in parallel
        offsets = [0]
        for b in batches[:-1]:
            offsets.append(offsets[-1] + len(b.condition))
        changes: dict[str, Any] = {
            name: [x for b in batches for x in getattr(b, name)] for name in _PER_EDIT_LISTS
        }
        changes |= {
            name: torch.cat([getattr(b, name) for b in batches])
            for name in _PER_EDIT_TENSORS
            if getattr(first, name) is not None
        }
        changes |= {
            name: torch.cat([getattr(b, name) for b in batches])
            for name in _PER_ROW_TENSORS
            if getattr(first, name) is not None
        }
        return dataclasses.replace(
            first,
            **changes,
            condition=Condition.cat([b.condition for b in batches]),
            group_index=torch.cat([b.group_index + o for b, o in zip(batches, offsets, strict=True)]),
            timings=timings,
        )


_PER_EDIT_LISTS = ("edit_ids", "item_ids", "group_ids", "instructions", "seeds")
_PER_EDIT_TENSORS = ("x0", "edited_images", "trajectory", "log_probs")
# one row per group (condition row), edit i at group_index[i]
_PER_ROW_TENSORS = ("source_latents", "source_images", "edit_masks", "target_images")
