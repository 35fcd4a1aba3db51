"""The actor side: edit data, diffusion edit policies, samplers and the rollout worker."""
