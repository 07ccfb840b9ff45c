"""The simulator's exceptions, under one root. Each class lives beside the code that raises it.

    SimError                    root: catch this to catch anything the simulator means to raise
    ├── UnsafePath              a filename prefix that would write outside the output directory
    │                           (ValueError; outputs.py)
    ├── UploadRefused           an upload stock ComfyUI answers with 400 (ValueError; uploads.py)
    ├── PngError                bytes that are not a PNG the simulator can decode (ValueError;
    │                           png.py)
    ├── ModelStoreError         a --models option or model folder that cannot be used
    │                           (ValueError; model_store.py)
    ├── NodeFailure             a node raised: becomes `execution_error` (faults.py)
    └── Interrupted             `/interrupt` took effect inside a node (faults.py)

None of these leaves the process: each becomes the answer or event stock ComfyUI gives.
"""

from __future__ import annotations


class SimError(Exception):
    """Root of the simulator's exceptions."""
