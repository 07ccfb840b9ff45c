"""The node classes the simulator knows: their /object_info specs and how each one behaves."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

MAX_RESOLUTION = 16384
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
FAULT_MODES = ["execution_error", "oom", "crash", "silent_ws", "hang"]
SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_sde", "ddim", "uni_pc"]
SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta"]
SIM_CHECKPOINTS = ["v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors"]

InputSpec = list[Any]  # [type_or_combo_list, {options}] as /object_info shows it


class Behaviour(enum.Enum):
    """What executing a node of this class does, beyond taking `node_time_s`."""

    PLAIN = "plain"
    EMPTY_IMAGE = "empty_image"  # makes an image of width x height x batch_size in `color`
    SCALE_BY = "scale_by"
    SCALE_TO = "scale_to"
    IMAGE_SIZE = "image_size"  # GetImageSize: sends a text frame, returns ints
    TO_MASK = "to_mask"  # ImageToMask: channel `alpha` fails like stock on an RGB image
    SAVE = "save"  # SaveImage: files in the output dir
    PREVIEW = "preview"  # PreviewImage: files in the temp dir
    SAVE_WS = "save_ws"  # SaveImageWebsocket: one progress step and preview per image
    SAMPLER = "sampler"  # KSampler: `steps` progress steps
    EMPTY_LATENT = "empty_latent"
    DECODE = "decode"
    SLEEP = "sleep"  # WgpuSimSleep: `seconds`, in `steps` progress steps
    FAULT = "fault"  # WgpuSimFault
    # Inputs and outputs (catalog_media.py, run by media_nodes.py).
    LOAD_IMAGE = "load_image"  # LoadImage: a PNG from the input dir, pixels and all
    LOAD_MASK = "load_mask"  # LoadImageMask: one channel of a PNG from the input dir
    ADD_NOISE = "add_noise"  # ImageAddNoise: noise pixels, so saved sizes are realistic
    INVERT = "invert"  # ImageInvert: 1.0 - x, in float32 like stock
    PRIMITIVE = "primitive"  # PrimitiveInt/Float/String/Boolean: passes `value` on
    PREVIEW_ANY = "preview_any"  # PreviewAny: `text` UI output
    SAVE_ANIMATED = "save_animated"  # SaveAnimatedWEBP / SaveAnimatedPNG
    CREATE_VIDEO = "create_video"
    SAVE_VIDEO = "save_video"
    TILED_UPSCALE = "tiled_upscale"  # ImageUpscaleWithModel: one progress step per tile
    BUSY = "busy"  # WgpuSimBusy: a long node without progress callbacks (ignores interrupts)
    BLOB = "blob"  # WgpuSimBlob: an output file of exactly `size_bytes`
    # Model loaders (catalog_models.py): a file not loaded costs the load time.
    LOAD_MODEL = "load_model"


@dataclass(frozen=True)
class NodeClass:
    name: str
    required: dict[str, InputSpec]
    outputs: list[str]
    behaviour: Behaviour = Behaviour.PLAIN
    optional: dict[str, InputSpec] = field(default_factory=dict)
    hidden: dict[str, str] = field(default_factory=dict)
    output_names: list[str] | None = None
    output_node: bool = False
    display_name: str | None = None
    category: str = "image"
    python_module: str = "nodes"
    description: str = ""
    # Never served from cache (stock: IS_CHANGED returning NaN / NOT_IDEMPOTENT).
    always_run: bool = False
    # Inputs naming a file in one of ComfyUI's directories ("input"): validation checks that the
    # file exists instead of checking the combo list (stock LoadImage's VALIDATE_INPUTS).
    file_inputs: dict[str, str] = field(default_factory=dict)
    # Model loaders (catalog_models.py): input name -> model folder. Their choices are the files
    # of that folder, filled in per instance (model_store.py).
    model_inputs: dict[str, str] = field(default_factory=dict)

    def input_spec(self, name: str) -> tuple[str, InputSpec] | None:
        """('required'|'optional', spec) for a declared input, else None."""
        if name in self.required:
            return "required", self.required[name]
        if name in self.optional:
            return "optional", self.optional[name]
        return None

    def object_info(self) -> dict[str, Any]:
        inputs: dict[str, Any] = {"required": self.required}
        order: dict[str, list[str]] = {"required": list(self.required)}
        if self.optional:
            inputs["optional"] = self.optional
            order["optional"] = list(self.optional)
        if self.hidden:
            inputs["hidden"] = self.hidden
            order["hidden"] = list(self.hidden)
        return {
            "input": inputs,
            "input_order": order,
            "output": list(self.outputs),
            "output_is_list": [False] * len(self.outputs),
            "output_name": list(self.output_names or self.outputs),
            "name": self.name,
            "display_name": self.display_name or self.name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }


def _int(default: int, lo: int, hi: int, step: int | None = 1, **extra: Any) -> InputSpec:
    opts: dict[str, Any] = {"default": default, "min": lo, "max": hi}
    if step is not None:
        opts["step"] = step
    opts.update(extra)
    return ["INT", opts]


def _float(default: float, lo: float, hi: float, step: float) -> InputSpec:
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": step}]


IMAGE: InputSpec = ["IMAGE", {}]
POST = "comfy_extras.nodes_post_processing"

_CLASSES = [
    NodeClass(
        "EmptyImage",
        {
            "width": _int(512, 1, MAX_RESOLUTION),
            "height": _int(512, 1, MAX_RESOLUTION),
            "batch_size": _int(1, 1, 4096, None),
            "color": _int(0, 0, 0xFFFFFF, 1, display="color"),
        },
        ["IMAGE"],
        Behaviour.EMPTY_IMAGE,
    ),
    NodeClass(
        "ImageBlur",
        {"image": IMAGE, "blur_radius": _int(1, 1, 31), "sigma": _float(1.0, 0.1, 10.0, 0.1)},
        ["IMAGE"],
        category="image/postprocessing",
        python_module=POST,
    ),
    NodeClass(
        "ImageSharpen",
        {
            "image": IMAGE,
            "sharpen_radius": _int(1, 1, 31),
            "sigma": _float(1.0, 0.1, 10.0, 0.01),
            "alpha": _float(1.0, 0.0, 5.0, 0.01),
        },
        ["IMAGE"],
        category="image/postprocessing",
        python_module=POST,
    ),
    NodeClass(
        "ImageInvert",
        {"image": IMAGE},
        ["IMAGE"],
        Behaviour.INVERT,
        display_name="Invert Image",
    ),
    NodeClass(
        "ImageScaleBy",
        {
            "image": IMAGE,
            "upscale_method": [UPSCALE_METHODS, {}],
            "scale_by": _float(1.0, 0.01, 8.0, 0.01),
        },
        ["IMAGE"],
        Behaviour.SCALE_BY,
        display_name="Upscale Image By",
        category="image/upscaling",
    ),
    NodeClass(
        "ImageScale",
        {
            "image": IMAGE,
            "upscale_method": [UPSCALE_METHODS, {}],
            "width": _int(512, 0, MAX_RESOLUTION),
            "height": _int(512, 0, MAX_RESOLUTION),
            "crop": [["disabled", "center"], {}],
        },
        ["IMAGE"],
        Behaviour.SCALE_TO,
        display_name="Upscale Image",
        category="image/upscaling",
    ),
    NodeClass(
        "GetImageSize",
        {"image": IMAGE},
        ["INT", "INT", "INT"],
        Behaviour.IMAGE_SIZE,
        hidden={"unique_id": "UNIQUE_ID"},
        output_names=["width", "height", "batch_size"],
        display_name="Get Image Size",
        python_module="comfy_extras.nodes_images",
    ),
    NodeClass(
        "ImageToMask",
        {"image": IMAGE, "channel": [["red", "green", "blue", "alpha"], {}]},
        ["MASK"],
        Behaviour.TO_MASK,
        display_name="Convert Image to Mask",
        category="mask",
        python_module="comfy_extras.nodes_mask",
    ),
    NodeClass(
        "MaskToImage",
        {"mask": ["MASK", {}]},
        ["IMAGE"],
        display_name="Convert Mask to Image",
        category="mask",
        python_module="comfy_extras.nodes_mask",
    ),
    NodeClass(
        "SaveImage",
        {
            "images": ["IMAGE", {"tooltip": "The images to save."}],
            "filename_prefix": ["STRING", {"default": "ComfyUI"}],
        },
        [],
        Behaviour.SAVE,
        hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        output_node=True,
        display_name="Save Image",
        description="Saves the input images to your ComfyUI output directory.",
    ),
    NodeClass(
        "PreviewImage",
        {"images": IMAGE},
        [],
        Behaviour.PREVIEW,
        hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        output_node=True,
        display_name="Preview Image",
        description="Saves the input images to your ComfyUI output directory.",
    ),
    NodeClass(
        "SaveImageWebsocket",
        {"images": IMAGE},
        [],
        Behaviour.SAVE_WS,
        output_node=True,
        category="api node/image",
        python_module="custom_nodes.websocket_image_save",
    ),
    NodeClass(
        "CLIPTextEncode",
        {"text": ["STRING", {"multiline": True, "dynamicPrompts": True}], "clip": ["CLIP", {}]},
        ["CONDITIONING"],
        display_name="CLIP Text Encode (Prompt)",
        category="conditioning",
    ),
    NodeClass(
        "EmptyLatentImage",
        {
            "width": _int(512, 16, MAX_RESOLUTION, 8),
            "height": _int(512, 16, MAX_RESOLUTION, 8),
            "batch_size": _int(1, 1, 4096, None),
        },
        ["LATENT"],
        Behaviour.EMPTY_LATENT,
        display_name="Empty Latent Image",
        category="latent",
    ),
    NodeClass(
        "KSampler",
        {
            "model": ["MODEL", {}],
            "seed": _int(0, 0, 0xFFFFFFFFFFFFFFFF, None, control_after_generate=True),
            "steps": _int(20, 1, 10000, None),
            "cfg": _float(8.0, 0.0, 100.0, 0.1),
            "sampler_name": [SAMPLERS, {}],
            "scheduler": [SCHEDULERS, {}],
            "positive": ["CONDITIONING", {}],
            "negative": ["CONDITIONING", {}],
            "latent_image": ["LATENT", {}],
            "denoise": _float(1.0, 0.0, 1.0, 0.01),
        },
        ["LATENT"],
        Behaviour.SAMPLER,
        category="sampling",
    ),
    NodeClass(
        "VAEDecode",
        {"samples": ["LATENT", {}], "vae": ["VAE", {}]},
        ["IMAGE"],
        Behaviour.DECODE,
        display_name="VAE Decode",
        category="latent",
    ),
    NodeClass(
        "WgpuSimSleep",
        {"seconds": _float(1.0, 0.0, 3600.0, 0.01), "steps": _int(10, 1, 10000)},
        ["IMAGE"],
        Behaviour.SLEEP,
        optional={"image": IMAGE},
        display_name="wgpu sim: sleep",
        category="wgpu_sim",
        python_module="comfyui_sim",
        description="Takes `seconds`, reporting progress in `steps`; passes `image` through.",
    ),
    NodeClass(
        "WgpuSimFault",
        {"mode": [FAULT_MODES, {}]},
        ["IMAGE"],
        Behaviour.FAULT,
        optional={"after_s": _float(0.0, 0.0, 3600.0, 0.01), "image": IMAGE},
        output_node=True,
        display_name="wgpu sim: fault",
        category="wgpu_sim",
        python_module="comfyui_sim",
        description="Injects a failure when it runs (after `after_s` seconds).",
        always_run=True,
    ),
]

CATALOG: dict[str, NodeClass] = {cls.name: cls for cls in _CLASSES}


def _add_model_classes() -> None:
    # Model loaders live in their own module and replace any placeholder of the same name.
    from comfyui_sim.catalog_models import MODEL_CLASSES

    for cls in MODEL_CLASSES:
        CATALOG[cls.name] = cls


_add_model_classes()


def _add_media_classes() -> None:
    # Inputs/outputs nodes live in their own module; an entry defined above wins.
    from comfyui_sim.catalog_media import MEDIA_CLASSES

    for cls in MEDIA_CLASSES:
        CATALOG.setdefault(cls.name, cls)


_add_media_classes()


def object_info(catalog: dict[str, NodeClass] = CATALOG) -> dict[str, Any]:
    return {name: cls.object_info() for name, cls in catalog.items()}
