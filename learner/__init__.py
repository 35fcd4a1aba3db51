"""Advantages, the DiffusionNFT loss with CoCoEdit's region regularizer, and the DeepSpeed learner."""
