"""Which nodes a prompt runs, in what order, and the cache signature of each node."""

from __future__ import annotations

import json
from typing import Any

from comfyui_sim.catalog import NodeClass
from comfyui_sim.validation import Prompt, is_link


def links_of(node: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(input_name, source_node_id, output_index) for each linked input, in input order."""
    return [
        (name, str(value[0]), int(value[1]))
        for name, value in node.get("inputs", {}).items()
        if is_link(value)
    ]


def signatures(prompt: Prompt, catalog: dict[str, NodeClass]) -> dict[str, str]:
    """A string per node that changes whenever the node or anything upstream changes.

    Nodes that must always run (stock: IS_CHANGED returning NaN) include their id and never match
    a cached entry from an earlier prompt because the executor does not store them.
    """
    memo: dict[str, str] = {}

    def signature(node_id: str) -> str:
        if node_id in memo:
            return memo[node_id]
        node = prompt.get(node_id)
        if not isinstance(node, dict):  # a dangling link of an output that failed validation
            return f"missing:{node_id}"
        memo[node_id] = "cycle"  # validation rejects cycles; this only guards the recursion
        parts: dict[str, Any] = {}
        for name, value in sorted(node.get("inputs", {}).items()):
            parts[name] = ["link", signature(str(value[0])), value[1]] if is_link(value) else value
        memo[node_id] = json.dumps([node["class_type"], parts], sort_keys=True, default=str)
        return memo[node_id]

    for node_id in prompt:
        signature(node_id)
    return memo


def execution_order(prompt: Prompt, outputs: list[str], cached: set[str]) -> list[str]:
    """Nodes to execute, dependencies first: every output node, and the uncached nodes they need.

    Like stock ComfyUI's ExecutionList, a cached node's inputs are not pulled in, so a fully cached
    graph executes only its output nodes (which replay their cached UI output).
    """
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        if node_id not in cached:
            for _, source_id, _ in links_of(prompt[node_id]):
                if source_id not in cached:
                    visit(source_id)
        order.append(node_id)

    for output_id in outputs:
        visit(output_id)
    return order
