"""Training: the driver's epoch loop and what it drives (rollout and learner groups, scoring, the run log, resume, the dry-run profile)."""
