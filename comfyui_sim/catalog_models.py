"""Model loader nodes, as ComfyUI 0.3.64 declares them (recorded in object_info_models.json).

Their file choices are per simulator instance: `with_model_lists` fills each model input from the
instance's model folders. Classic loaders list files as `[[names...], {opts}]` and validation
refuses a name not in the list (`value_not_in_list`); the new-style `UpscaleModelLoader` lists them
as `["COMBO", {"options": [...]}]` and is not checked until it runs (FileNotFoundError).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from comfyui_sim.catalog import Behaviour, InputSpec, NodeClass

# Values a loader takes that are not files (VAELoader's built-in decoder).
BUILTIN_CHOICES: dict[str, list[str]] = {"vae": ["pixel_space"]}
NEW_STYLE = frozenset({"UpscaleModelLoader"})
CLIP_TYPES = [
    "stable_diffusion",
    "stable_cascade",
    "sd3",
    "stable_audio",
    "mochi",
    "ltxv",
    "pixart",
    "cosmos",
    "lumina2",
    "wan",
    "hidream",
    "chroma",
    "ace",
    "omnigen2",
    "qwen_image",
    "hunyuan_image",
]
DUAL_CLIP_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"]


def _strength(tooltip: str = "", low: float = -100.0, high: float = 100.0) -> InputSpec:
    opts: dict[str, Any] = {"default": 1.0, "min": low, "max": high, "step": 0.01}
    if tooltip:
        opts["tooltip"] = tooltip
    return ["FLOAT", opts]


def _files(tooltip: str = "") -> InputSpec:
    """A classic file input; the list is filled per instance."""
    return [[], {"tooltip": tooltip}] if tooltip else [[], {}]


def _loader(
    name: str,
    required: dict[str, InputSpec],
    models: dict[str, str],
    outputs: list[str],
    display: str,
    **extra: Any,
) -> NodeClass:
    return NodeClass(
        name,
        required,
        outputs,
        Behaviour.LOAD_MODEL,
        display_name=display,
        category=extra.pop("category", "loaders"),
        model_inputs=models,
        **extra,
    )


MODEL_CLASSES = [
    _loader(
        "CheckpointLoaderSimple",
        {"ckpt_name": _files("The name of the checkpoint (model) to load.")},
        {"ckpt_name": "checkpoints"},
        ["MODEL", "CLIP", "VAE"],
        "Load Checkpoint",
        description="Loads a diffusion model checkpoint, diffusion models are used to denoise "
        "latents.",
    ),
    _loader(
        "CheckpointLoader",
        {"config_name": _files(), "ckpt_name": _files()},
        {"config_name": "configs", "ckpt_name": "checkpoints"},
        ["MODEL", "CLIP", "VAE"],
        "Load Checkpoint With Config (DEPRECATED)",
        category="advanced/loaders",
    ),
    _loader(
        "ImageOnlyCheckpointLoader",
        {"ckpt_name": _files()},
        {"ckpt_name": "checkpoints"},
        ["MODEL", "CLIP_VISION", "VAE"],
        "Image Only Checkpoint Loader (img2vid model)",
        category="loaders/video_models",
        python_module="comfy_extras.nodes_video_model",
    ),
    _loader(
        "unCLIPCheckpointLoader",
        {"ckpt_name": _files()},
        {"ckpt_name": "checkpoints"},
        ["MODEL", "CLIP", "VAE", "CLIP_VISION"],
        "unCLIPCheckpointLoader",
    ),
    _loader(
        "LoraLoader",
        {
            "model": ["MODEL", {"tooltip": "The diffusion model the LoRA will be applied to."}],
            "clip": ["CLIP", {"tooltip": "The CLIP model the LoRA will be applied to."}],
            "lora_name": _files("The name of the LoRA."),
            "strength_model": _strength(
                "How strongly to modify the diffusion model. This value can be negative."
            ),
            "strength_clip": _strength(
                "How strongly to modify the CLIP model. This value can be negative."
            ),
        },
        {"lora_name": "loras"},
        ["MODEL", "CLIP"],
        "Load LoRA",
        description="LoRAs are used to modify diffusion and CLIP models, altering the way in "
        "which latents are denoised such as applying styles. Multiple LoRA nodes can be linked "
        "together.",
    ),
    _loader(
        "LoraLoaderModelOnly",
        {"model": ["MODEL", {}], "lora_name": _files(), "strength_model": _strength()},
        {"lora_name": "loras"},
        ["MODEL"],
        "LoraLoaderModelOnly",
    ),
    _loader(
        "VAELoader",
        {"vae_name": [[]]},
        {"vae_name": "vae"},
        ["VAE"],
        "Load VAE",
    ),
    _loader(
        "UNETLoader",
        {
            "unet_name": _files(),
            "weight_dtype": [["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"], {}],
        },
        {"unet_name": "diffusion_models"},
        ["MODEL"],
        "Load Diffusion Model",
        category="advanced/loaders",
    ),
    _loader(
        "CLIPLoader",
        {"clip_name": _files(), "type": [CLIP_TYPES, {}]},
        {"clip_name": "text_encoders"},
        ["CLIP"],
        "Load CLIP",
        category="advanced/loaders",
    ),
    _loader(
        "DualCLIPLoader",
        {"clip_name1": _files(), "clip_name2": _files(), "type": [DUAL_CLIP_TYPES, {}]},
        {"clip_name1": "text_encoders", "clip_name2": "text_encoders"},
        ["CLIP"],
        "DualCLIPLoader",
        category="advanced/loaders",
    ),
    _loader(
        "TripleCLIPLoader",
        {"clip_name1": _files(), "clip_name2": _files(), "clip_name3": _files()},
        {
            "clip_name1": "text_encoders",
            "clip_name2": "text_encoders",
            "clip_name3": "text_encoders",
        },
        ["CLIP"],
        "TripleCLIPLoader",
        category="advanced/loaders",
        python_module="comfy_extras.nodes_sd3",
    ),
    _loader(
        "ControlNetLoader",
        {"control_net_name": _files()},
        {"control_net_name": "controlnet"},
        ["CONTROL_NET"],
        "Load ControlNet Model",
    ),
    _loader(
        "DiffControlNetLoader",
        {"model": ["MODEL", {}], "control_net_name": _files()},
        {"control_net_name": "controlnet"},
        ["CONTROL_NET"],
        "Load ControlNet Model (diff)",
    ),
    _loader(
        "UpscaleModelLoader",
        {"model_name": ["COMBO", {"multiselect": False, "options": []}]},
        {"model_name": "upscale_models"},
        ["UPSCALE_MODEL"],
        "Load Upscale Model",
        python_module="comfy_extras.nodes_upscale_model",
    ),
    _loader(
        "CLIPVisionLoader",
        {"clip_name": _files()},
        {"clip_name": "clip_vision"},
        ["CLIP_VISION"],
        "Load CLIP Vision",
    ),
    _loader(
        "StyleModelLoader",
        {"style_model_name": _files()},
        {"style_model_name": "style_models"},
        ["STYLE_MODEL"],
        "Load Style Model",
    ),
    _loader(
        "GLIGENLoader",
        {"gligen_name": _files()},
        {"gligen_name": "gligen"},
        ["GLIGEN"],
        "GLIGENLoader",
    ),
    _loader(
        "HypernetworkLoader",
        {
            "model": ["MODEL", {}],
            "hypernetwork_name": _files(),
            "strength": _strength(low=-10.0, high=10.0),
        },
        {"hypernetwork_name": "hypernetworks"},
        ["MODEL"],
        "HypernetworkLoader",
        python_module="comfy_extras.nodes_hypernetwork",
    ),
    _loader(
        "PhotoMakerLoader",
        {"photomaker_model_name": _files()},
        {"photomaker_model_name": "photomaker"},
        ["PHOTOMAKER"],
        "PhotoMakerLoader",
        category="_for_testing/photomaker",
        python_module="comfy_extras.nodes_photomaker",
    ),
]


def with_model_lists(node_class: NodeClass, files: dict[str, list[str]]) -> NodeClass:
    """The loader with each model input listing `files[folder]` (plus built-in choices)."""
    required = dict(node_class.required)
    for input_name, folder in node_class.model_inputs.items():
        spec = required[input_name]
        choices = list(files.get(folder, [])) + BUILTIN_CHOICES.get(folder, [])
        if node_class.name in NEW_STYLE:
            required[input_name] = ["COMBO", {**spec[1], "options": choices}]
        else:
            required[input_name] = [choices, *spec[1:]]
    return replace(node_class, required=required)
