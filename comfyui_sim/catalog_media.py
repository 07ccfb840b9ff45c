"""Node classes for inputs and outputs: loading uploaded files, noise, text and number UI outputs,
animated and video savers, a stepped upscaler, and two simulator helpers (a long node that ignores
interrupts, an output of N bytes). Kept apart from catalog.py so that model loaders and these
entries change independently; catalog.py adds them to CATALOG."""

from __future__ import annotations

from typing import Any

from comfyui_sim.catalog import IMAGE, Behaviour, InputSpec, NodeClass

NODES_IMAGES = "comfy_extras.nodes_images"
ANY: InputSpec = ["*", {}]


def _int(default: int, lo: int, hi: int, **extra: Any) -> InputSpec:
    return ["INT", {"default": default, "min": lo, "max": hi, **extra}]


def _float(default: float, lo: float, hi: float, step: float) -> InputSpec:
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": step}]


def _primitive(name: str, kind: str, spec: InputSpec) -> NodeClass:
    return NodeClass(
        name,
        {"value": spec},
        [kind],
        Behaviour.PRIMITIVE,
        category="utils/primitive",
        python_module="comfy_extras.nodes_primitive",
    )


MEDIA_CLASSES: list[NodeClass] = [
    NodeClass(
        "LoadImage",
        {"image": [[], {"image_upload": True}]},
        ["IMAGE", "MASK"],
        Behaviour.LOAD_IMAGE,
        display_name="Load Image",
        file_inputs={"image": "input"},
    ),
    NodeClass(
        "LoadImageMask",
        {
            "image": [[], {"image_upload": True}],
            "channel": [["alpha", "red", "green", "blue"], {}],
        },
        ["MASK"],
        Behaviour.LOAD_MASK,
        display_name="Load Image (as Mask)",
        category="mask",
        file_inputs={"image": "input"},
    ),
    NodeClass(
        "ImageAddNoise",
        {
            "image": IMAGE,
            "seed": _int(0, 0, 0xFFFFFFFFFFFFFFFF, control_after_generate=True),
            "strength": _float(0.5, 0.0, 1.0, 0.01),
        },
        ["IMAGE"],
        Behaviour.ADD_NOISE,
        python_module=NODES_IMAGES,
    ),
    _primitive("PrimitiveInt", "INT", _int(0, -(2**63), 2**63 - 1)),
    _primitive("PrimitiveFloat", "FLOAT", ["FLOAT", {"min": -(2**63), "max": 2**63}]),
    _primitive("PrimitiveString", "STRING", ["STRING", {}]),
    _primitive("PrimitiveStringMultiline", "STRING", ["STRING", {"multiline": True}]),
    _primitive("PrimitiveBoolean", "BOOLEAN", ["BOOLEAN", {}]),
    NodeClass(
        "PreviewAny",
        {"source": ANY},
        [],
        Behaviour.PREVIEW_ANY,
        output_node=True,
        display_name="Preview Any",
        category="utils",
        python_module="comfy_extras.nodes_preview_any",
    ),
    NodeClass(
        "SaveAnimatedWEBP",
        {
            "images": IMAGE,
            "filename_prefix": ["STRING", {"default": "ComfyUI"}],
            "fps": _float(6.0, 0.01, 1000.0, 0.01),
            "lossless": ["BOOLEAN", {"default": True}],
            "quality": _int(80, 0, 100),
            "method": [["default", "fastest", "slowest"], {}],
        },
        [],
        Behaviour.SAVE_ANIMATED,
        hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        output_node=True,
        category="image/animation",
        python_module=NODES_IMAGES,
    ),
    NodeClass(
        "SaveAnimatedPNG",
        {
            "images": IMAGE,
            "filename_prefix": ["STRING", {"default": "ComfyUI"}],
            "fps": _float(6.0, 0.01, 1000.0, 0.01),
            "compress_level": _int(4, 0, 9),
        },
        [],
        Behaviour.SAVE_ANIMATED,
        hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        output_node=True,
        category="image/animation",
        python_module=NODES_IMAGES,
    ),
    NodeClass(
        "CreateVideo",
        {"images": IMAGE, "fps": _float(30.0, 1.0, 120.0, 1.0)},
        ["VIDEO"],
        Behaviour.CREATE_VIDEO,
        optional={"audio": ["AUDIO", {}]},
        category="image/video",
        python_module="comfy_extras.nodes_video",
    ),
    NodeClass(
        "SaveVideo",
        {
            "video": ["VIDEO", {}],
            "filename_prefix": ["STRING", {"default": "video/ComfyUI"}],
            "format": [["auto", "mp4"], {}],
            "codec": [["auto", "h264"], {}],
        },
        [],
        Behaviour.SAVE_VIDEO,
        hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        output_node=True,
        category="image/video",
        python_module="comfy_extras.nodes_video",
    ),
    NodeClass(
        "ImageUpscaleWithModel",
        {"upscale_model": ["UPSCALE_MODEL", {}], "image": IMAGE},
        ["IMAGE"],
        Behaviour.TILED_UPSCALE,
        category="image/upscaling",
        python_module="comfy_extras.nodes_upscale_model",
    ),
    # Model loaders used by the recordings; a fuller definition elsewhere in CATALOG wins.
    NodeClass(
        "UpscaleModelLoader",
        {"model_name": ["COMBO", {"multiselect": False, "options": []}]},
        ["UPSCALE_MODEL"],
        category="loaders",
        python_module="comfy_extras.nodes_upscale_model",
    ),
    NodeClass(
        "VAELoader",
        {"vae_name": [["pixel_space"], {}]},
        ["VAE"],
        category="loaders",
    ),
    NodeClass(
        "WgpuSimBusy",
        {"seconds": _float(1.0, 0.0, 3600.0, 0.01)},
        ["IMAGE"],
        Behaviour.BUSY,
        optional={"image": IMAGE},
        display_name="wgpu sim: busy",
        category="wgpu_sim",
        python_module="comfyui_sim",
        description="Takes `seconds` without progress callbacks, so an interrupt waits for it "
        "(like a long blur in stock); passes `image` through.",
    ),
    NodeClass(
        "WgpuSimBlob",
        {
            "size_bytes": _int(1024, 0, 1 << 40),
            "filename_prefix": ["STRING", {"default": "blob"}],
            "extension": [["bin", "png", "mp4", "webp", "glb", "wav", "txt"], {}],
        },
        [],
        Behaviour.BLOB,
        optional={"seed": _int(0, 0, 0xFFFFFFFF), "image": IMAGE},
        output_node=True,
        display_name="wgpu sim: blob",
        category="wgpu_sim",
        python_module="comfyui_sim",
        description="Writes one output file of exactly `size_bytes` pseudo-random bytes (after "
        "the node that makes `image`, if linked; its pixels are not used).",
    ),
]


def with_file_lists(
    info: dict[str, Any], catalog: dict[str, NodeClass], files: dict[str, list[str]]
) -> dict[str, Any]:
    """/object_info with each file input's list filled from its directory, as stock lists the
    top-level input files for LoadImage (`files`: directory kind -> names)."""
    for name, entry in info.items():
        node_class = catalog.get(name)
        if node_class is None or not node_class.file_inputs:
            continue
        required = entry["input"]["required"]
        for input_name, kind in node_class.file_inputs.items():
            if input_name in required:
                spec = required[input_name]
                required[input_name] = [list(files.get(kind, [])), *spec[1:]]
    return info
