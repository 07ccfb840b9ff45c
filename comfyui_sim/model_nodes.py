"""Running a model loader: the named file must exist (else FileNotFoundError, as stock's
folder_paths.get_full_path_or_raise) and costs the load time unless it is still loaded."""

from __future__ import annotations

from typing import Any

from comfyui_sim.catalog import NodeClass
from comfyui_sim.catalog_models import BUILTIN_CHOICES
from comfyui_sim.faults import missing_model
from comfyui_sim.model_store import ModelStore
from comfyui_sim.nodes import NodeResult


async def load_models(
    models: ModelStore, node_class: NodeClass, inputs: dict[str, Any]
) -> NodeResult:
    names: list[str] = []
    for input_name, folder in node_class.model_inputs.items():
        name = str(inputs.get(input_name, ""))
        if name in BUILTIN_CHOICES.get(folder, []):
            continue
        if not models.exists(folder, name):
            raise missing_model(folder, name)
        await models.load(folder, name)
        names.append(name)
    label = ",".join(names) or node_class.name
    # Opaque tokens naming what they stand for, like the other simulated loaders.
    return NodeResult(tuple(f"<{kind} {label}>" for kind in node_class.outputs))
