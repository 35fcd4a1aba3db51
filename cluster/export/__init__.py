"""The artefact of a run: the model card beside the LoRA and `cocoedit export` (diffusers LoRA, Hub push)."""
