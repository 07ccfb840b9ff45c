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


def execution_order(
    prompt: Prompt, outputs: list[str], cached: set[str], output_nodes: set[str] | None = None
) -> list[str]:
    """Nodes to execute, dependencies first: every output node, and the uncached nodes they need.

    Stock ComfyUI's ExecutionList: nodes are collected depth first with a stack (so the last
    linked input is visited first), a cached node's inputs are not pulled in (a fully cached graph
    executes only its output nodes, which replay their cached UI output), and among the nodes
    ready to run an output node is picked first, then one that unblocks an output node (one or
    two links away), else the first collected.
    """
    outputs_set = set(outputs) if output_nodes is None else output_nodes
    pending: dict[str, None] = {}
    blocking: dict[str, dict[str, None]] = {}
    block_count: dict[str, int] = {}
    links: list[tuple[str, str]] = []
    for output_id in outputs:
        stack = [output_id]
        while stack:
            node_id = stack.pop()
            if node_id in pending:
                continue
            pending[node_id] = None
            block_count.setdefault(node_id, 0)
            blocking.setdefault(node_id, {})
            if node_id in cached:
                continue
            for _, source_id, _ in links_of(prompt[node_id]):
                if source_id not in cached:
                    stack.append(source_id)
                    links.append((source_id, node_id))
    for source_id, node_id in links:
        if node_id not in blocking[source_id]:
            blocking[source_id][node_id] = None
            block_count[node_id] += 1

    def pick(ready: list[str]) -> str:
        for node_id in ready:
            if node_id in outputs_set:
                return node_id
        for node_id in ready:
            if any(b in outputs_set for b in blocking[node_id]):
                return node_id
        for node_id in ready:
            for blocked in blocking[node_id]:
                if any(b in outputs_set for b in blocking[blocked]):
                    return node_id
        return ready[0]

    order: list[str] = []
    while pending:
        ready = [node_id for node_id in pending if block_count[node_id] == 0]
        if not ready:  # a cycle; validation refuses those, this only guards the loop
            break
        node_id = pick(ready)
        order.append(node_id)
        del pending[node_id]
        for blocked in blocking[node_id]:
            block_count[blocked] -= 1
    return order
