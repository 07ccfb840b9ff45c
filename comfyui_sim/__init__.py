"""A stand-in for stock ComfyUI's HTTP and WebSocket API (aiohttp and the stdlib only).

`from comfyui_sim.server import SimConfig, start_sim`; see server.py.
"""
