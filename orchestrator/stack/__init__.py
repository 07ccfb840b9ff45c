"""The one-host stack (Redis, the hub, per GPU a ComfyUI + worker): compose rendering, `wgpu up`
/ `down` on Docker or as local processes, `wgpu demo`, the local Redis and the stack's images."""
