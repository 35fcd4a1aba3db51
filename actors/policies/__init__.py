"""Diffusion edit policies: FLUX.1-Kontext and Qwen-Image-Edit behind one interface (`base.EditPolicy`)."""
