"""wgpu: the host CLI that runs one pinned ComfyUI worker per GPU, and its backends."""

__version__ = "0.1.0"
