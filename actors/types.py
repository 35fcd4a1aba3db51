"""Typed messages that cross process boundaries on the actor side (plain dataclasses, CPU tensors).

Shapes: N edits, H x W pixels, L packed latent tokens, D packed channels, T sampler steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

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
class GroupedItem:
    """An item drawn for one epoch: the same item appears group_size times with one group_id."""

    item: EditItem | ItemRef  # an ItemRef is read by the rollout worker that samples it
    group_id: str  # f"{epoch}:{item_id}" - explicit, never derived from the instruction text
    edit_id: str  # unique within the epoch
    seed: int  # initial-noise seed of this edit (distinct inside a group)


@dataclass
class Condition:
    """Per-edit conditioning tensors of a policy family (batched on dim 0, CPU between processes).

    FLUX-Kontext: prompt_embeds [N, S, 4096*], pooled_prompt_embeds [N, 768*], text_ids [S, 3],
    image_latents [N, L_src, D], image_ids [L_src, 3], guidance [N].
    Qwen-Image-Edit: prompt_embeds [N, S, C], prompt_embeds_mask [N, S], image_latents [N, L_src, D].
    (* sizes of the full model; tiny models are smaller). Tensors whose first dim is not N are shared.
    """

    tensors: dict[str, torch.Tensor]
    batched: frozenset[str]  # names of tensors whose dim 0 is the edit index

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
    """What rollout workers return for a list of GroupedItems (everything the learner and rewards need)."""

    edit_ids: list[str]
    item_ids: list[str]
    group_ids: list[str]
    instructions: list[str]
    policy_version: int
    x0: torch.Tensor  # [N, L, D] float32, final clean latents of the edits (packed)
    source_latents: torch.Tensor  # [N, L, D] float32, packed latents of the source images (x_src)
    condition: Condition
    edited_images: torch.Tensor  # [N, 3, H, W] uint8, decoded x0
    source_images: torch.Tensor  # [N, 3, H, W] uint8
    edit_masks: torch.Tensor  # [N, 1, H, W] float32, 1 = edit
    sigmas: torch.Tensor  # [T + 1] the sampler's sigma schedule (1 ... 0), shifted
    sampler: str
    height: int
    width: int
    seeds: list[int]
    target_images: Optional[torch.Tensor] = None  # [N, 3, H, W] uint8 (synthetic task)
    # Flow-GRPO only: the SDE trajectory and per-step log-probabilities under theta_old.
    trajectory: Optional[torch.Tensor] = None  # [N, T + 1, L, D]
    log_probs: Optional[torch.Tensor] = None  # [N, T]
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.edit_ids)

    def select(self, index: list[int]) -> RolloutBatch:
        """The edits at `index` (in that order), as a new batch."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return dataclasses.replace(
            self,
            **{name: [getattr(self, name)[i] for i in index] for name in _PER_EDIT_LISTS},
            **{
                name: getattr(self, name)[idx]
                for name in _PER_EDIT_TENSORS
                if getattr(self, name) is not None
            },
            condition=self.condition.select(idx),
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
        return dataclasses.replace(
            first,
            **{name: [x for b in batches for x in getattr(b, name)] for name in _PER_EDIT_LISTS},
            **{
                name: torch.cat([getattr(b, name) for b in batches])
                for name in _PER_EDIT_TENSORS
                if getattr(first, name) is not None
            },
            condition=Condition.cat([b.condition for b in batches]),
            timings=timings,
        )


_PER_EDIT_LISTS = ("edit_ids", "item_ids", "group_ids", "instructions", "seeds")
_PER_EDIT_TENSORS = (
    "x0",
    "source_latents",
    "edited_images",
    "source_images",
    "edit_masks",
    "target_images",
    "trajectory",
    "log_probs",
)
