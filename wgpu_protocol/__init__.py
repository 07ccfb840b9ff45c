"""The worker <-> hub protocol: message types, encoding and validation. No I/O, stdlib only.

Import the names from `wgpu_protocol.messages`.
"""
