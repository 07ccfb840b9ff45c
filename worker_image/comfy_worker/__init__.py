"""The per-GPU worker: relays hub jobs to the co-located ComfyUI."""
