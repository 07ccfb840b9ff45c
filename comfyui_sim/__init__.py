"""A stand-in for stock ComfyUI's HTTP and WebSocket API."""
