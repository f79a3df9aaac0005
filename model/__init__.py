"""OneDiffusion: the flow-matching Next-DiT, its loss, sampler and trainer (the model issue)."""
