"""The worker's exceptions, under one root. Each class lives beside the code that raises it.

    WorkerError                 root: catch this to catch anything the worker means to raise
    ├── ConfigError             an environment variable the worker cannot use (ValueError;
    │                           config.py); the worker exits 2 with its one line
    ├── ComfyUnreachable        ComfyUI did not answer: refused, reset, timed out
    │                           (ConnectionError; comfy_client.py)
    ├── ComfyError              ComfyUI answered with something unexpected (comfy_client.py)
    ├── PromptRejected          POST /prompt answered 400: the workflow is invalid; the job
    │                           fails with ComfyUI's node errors (comfy_client.py)
    ├── InputUnavailable        an input could not be fetched from the hub or placed in
    │                           ComfyUI (inputs.py)
    └── OutputError             an output could not be relayed (outputs.py)
        ├── OutputTooLarge      bigger than MAX_OUTPUT_BYTES
        └── OutputUnavailable   ComfyUI's /view failed, or the spool file is gone

A job ends with a typed error (wgpu_protocol.messages.JobError) built from these; none of them
stops the worker. The protocol's own ProtocolError (a bad hub frame) is wgpu_protocol's.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Root of the worker's exceptions."""


class OutputError(WorkerError):
    """An output could not be relayed to the hub."""
