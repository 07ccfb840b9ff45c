"""Failures the simulator can inject, shaped like the ones stock ComfyUI reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfyui_sim.catalog import FAULT_MODES
from comfyui_sim.errors import SimError

OOM_TIPS = (
    "This error means you ran out of memory on your GPU.\n\n"
    "TIPS: If the workflow worked before you might have accidentally set the batch_size to a "
    "large number."
)
# PyTorch's message under the cudaMallocAsync allocator that ComfyUI enables by default.
OOM_MESSAGE = (
    "Allocation on device 0 would exceed allowed memory. (out of memory)\n"
    "Currently allocated     : 21.62 GiB\n"
    "Requested               : 2.50 GiB\n"
    "Device limit            : 23.99 GiB\n"
    "Free (according to CUDA): 11.94 MiB\n"
    "PyTorch limit (set by user-supplied memory fraction)\n"
    "                        : 17179869184.00 GiB"
)


@dataclass(frozen=True)
class Fault:
    mode: str
    after_s: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}; use one of {FAULT_MODES}")


class NodeFailure(SimError):
    """A node raised: becomes `execution_error` with these fields."""

    def __init__(self, exception_type: str, message: str, frames: list[str]) -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.exception_message = message
        self.frames = frames


class Interrupted(SimError):
    """`/interrupt` took effect inside or at the start of a node."""


def _stock_frames(module_path: str, function: str, line: str) -> list[str]:
    root = "/opt/ComfyUI"
    return [
        f'  File "{root}/execution.py", line 496, in execute\n'
        "    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data("
        "prompt_id, unique_id, obj, input_data_all, execution_block_cb=execution_block_cb, "
        "pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n",
        f'  File "{root}/execution.py", line 315, in get_output_data\n'
        "    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, "
        "input_data_all, obj.FUNCTION, allow_interrupt=True, execution_block_cb="
        "execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n",
        f'  File "{root}/execution.py", line 289, in _async_map_node_over_list\n'
        "    await process_inputs(input_dict, i)\n",
        f'  File "{root}/execution.py", line 277, in process_inputs\n    result = f(**inputs)\n',
        f'  File "{root}/{module_path}", line 137, in {function}\n    {line}\n',
    ]


def execution_error() -> NodeFailure:
    return NodeFailure(
        "RuntimeError",
        "wgpu-sim injected an execution error\n",
        _stock_frames("comfyui_sim/nodes.py", "fault", 'raise RuntimeError("injected")'),
    )


def out_of_memory() -> NodeFailure:
    return NodeFailure(
        "torch.OutOfMemoryError",
        f"{OOM_MESSAGE}\n{OOM_TIPS}",
        _stock_frames("comfy/model_management.py", "load_models_gpu", "x = torch.empty(...)"),
    )


def alpha_channel_error() -> NodeFailure:
    """What stock ImageToMask raises for channel `alpha` on an RGB image."""
    return NodeFailure(
        "IndexError",
        "index 3 is out of bounds for dimension 3 with size 3\n",
        _stock_frames(
            "comfy_extras/nodes_mask.py",
            "image_to_mask",
            "mask = image[:, :, :, channels.index(channel)]",
        ),
    )


def parse_fault_request(body: Any) -> Fault | None:
    """`{"next": mode | null, "after_s"?: float}` from POST /wgpu-sim/faults."""
    if not isinstance(body, dict) or "next" not in body:
        raise ValueError('body must be {"next": mode} with mode one of ' + ", ".join(FAULT_MODES))
    if body["next"] is None:
        return None
    after = body.get("after_s", 0.0)
    if not isinstance(after, int | float) or after < 0:
        raise ValueError("after_s must be a non-negative number")
    return Fault(str(body["next"]), float(after))


def load_image_error(exception_type: str, message: str) -> NodeFailure:
    """What stock LoadImage raises for a name it cannot open as an image (through Pillow)."""
    pil = "/opt/venv/lib/python3.11/site-packages/PIL/Image.py"
    return NodeFailure(
        exception_type,
        message + "\n",
        [
            *_stock_frames(
                "nodes.py", "load_image", "img = node_helpers.pillow(Image.open, image_path)"
            ),
            '  File "/opt/ComfyUI/node_helpers.py", line 31, in pillow\n    x = fn(arg)\n',
            f'  File "{pil}", line 3730, in open\n    raise UnidentifiedImageError(msg)\n',
        ],
    )


def missing_model(folder: str, name: str) -> NodeFailure:
    """A loader naming a file its folder lacks (stock folder_paths.get_full_path_or_raise)."""
    return NodeFailure(
        "FileNotFoundError",
        f"Model in folder '{folder}' with filename '{name}' not found.",
        _stock_frames(
            "folder_paths.py",
            "get_full_path_or_raise",
            "raise FileNotFoundError(f\"Model in folder '{folder_name}' with filename "
            "'{filename}' not found.\")",
        ),
    )
