"""Config, CLI, Ray placement and launch, the training loop and the evaluation driver."""
