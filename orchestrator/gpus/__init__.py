"""The host's GPUs: NVML discovery and stats (`nvml`), and which of them wgpu manages (`slots`)."""
