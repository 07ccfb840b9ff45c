"""The prompt queue and the one-at-a-time executor, emitting events as stock ComfyUI does.

Event order per prompt (see recorded/_sequences.json): status -> execution_start ->
execution_cached -> for each node: progress_state(running), executing, [progress...],
[executed], progress_state(finished) -> execution_success | execution_error |
execution_interrupted -> status -> executing(null). Execution events go to the prompt's client
only; without a client id only the broadcast ones (progress_state, progress, previews, text,
execution_interrupted) reach every socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from comfyui_sim import nodes
from comfyui_sim.catalog import SIM_CHECKPOINTS, NodeClass
from comfyui_sim.config import SimConfig
from comfyui_sim.faults import Fault, Interrupted, NodeFailure
from comfyui_sim.graph import execution_order, signatures
from comfyui_sim.model_store import ModelStore
from comfyui_sim.nodes import NodeResult
from comfyui_sim.outputs import OutputStore
from comfyui_sim.validation import is_link
from comfyui_sim.ws_hub import (
    BinaryEvent,
    WsHub,
    preview_frame,
    preview_with_metadata_frame,
    text_frame,
)

log = logging.getLogger(__name__)

MAX_HISTORY = 10000


@dataclass
class QueueItem:
    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    sequence: int = 0

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


@dataclass
class _Run:
    """State of the prompt being executed."""

    item: QueueItem
    client_id: str | None
    messages: list[list[Any]] = field(default_factory=list)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    injected: Fault | None = None


class Executor:
    def __init__(
        self,
        config: SimConfig,
        catalog: dict[str, NodeClass],
        ws: WsHub,
        store: OutputStore,
        on_crash: Callable[[], Awaitable[None]],
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.ws = ws
        self.store = store
        self.on_crash = on_crash
        self.pending: list[QueueItem] = []
        self.running: QueueItem | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.number = 0
        self.injected_faults: list[Fault] = []
        self.last_node_id: str | None = None
        self.client_id: str | None = None
        self._cache: dict[str, NodeResult] = {}
        self._interrupt = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._sequence = 0
        self._run: _Run | None = None
        # RunContext fields for nodes
        self.prompt: dict[str, Any] = {}
        self.node_time_s = config.node_time_s
        self.step_time_s = config.step_time_s
        self.max_image_side = config.max_image_side
        # Without --models for a folder, a simulator has stock-looking defaults (checkpoints).
        models = {"checkpoints": list(SIM_CHECKPOINTS), **config.models}
        self.models = ModelStore(
            config.models_root(), models, config.load_time_s, config.vram_models
        )

    # ---- queue -------------------------------------------------------------------------------
    def next_number(self, front: bool) -> int:
        number = -self.number if front else self.number
        self.number += 1
        return number

    def queue_remaining(self) -> int:
        return len(self.pending) + (1 if self.running is not None else 0)

    async def queue_updated(self) -> None:
        status = {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}
        await self.ws.send_json("status", status)

    async def put(self, item: QueueItem) -> None:
        self._sequence += 1
        item.sequence = self._sequence
        self.pending.append(item)
        await self.queue_updated()
        self._wakeup.set()

    def pending_sorted(self) -> list[QueueItem]:
        return sorted(self.pending, key=lambda i: (i.number, i.sequence))

    async def delete_pending(self, prompt_ids: list[str]) -> None:
        for prompt_id in prompt_ids:
            for item in list(self.pending):
                if item.prompt_id == prompt_id:
                    self.pending.remove(item)
                    await self.queue_updated()

    async def clear_pending(self) -> None:
        self.pending.clear()
        await self.queue_updated()

    def interrupt(self, prompt_id: str | None) -> None:
        """Stock semantics: a named prompt must be running; no id interrupts whatever runs."""
        if prompt_id and (self.running is None or self.running.prompt_id != prompt_id):
            log.info("prompt %s is not currently running, skipping interrupt", prompt_id)
            return
        self._interrupt.set()

    def check_interrupt(self) -> None:
        if self._interrupt.is_set():
            raise Interrupted()

    async def run_forever(self) -> None:
        while True:
            while not self.pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            item = self.pending_sorted()[0]
            self.pending.remove(item)
            self.running = item
            await self.queue_updated()
            try:
                await self._execute(item)
            except Exception:
                # Never let one odd prompt stop the queue; record it as failed.
                log.exception("wgpu-sim: prompt %s failed unexpectedly", item.prompt_id)
                self.history[item.prompt_id] = {
                    "prompt": item.as_list(),
                    "outputs": {},
                    "status": {"status_str": "error", "completed": False, "messages": []},
                    "meta": {},
                }
            finally:
                self.running = None
                self._run = None
            await self.queue_updated()
            if self.client_id is not None:
                data = {"node": None, "prompt_id": item.prompt_id}
                await self.ws.send_json("executing", data, self.client_id)
                self.ws.muted.discard(self.client_id)
            self.last_node_id = None

    # ---- one prompt ----------------------------------------------------------------------------
    async def _add_message(
        self, run: _Run, event: str, data: dict[str, Any], broadcast: bool
    ) -> None:
        data = {**data, "timestamp": int(time.time() * 1000)}
        run.messages.append([event, data])
        if run.client_id is not None or broadcast:
            await self.ws.send_json(event, data, run.client_id)

    async def _send_progress_state(self, run: _Run) -> None:
        data = {
            "prompt_id": run.item.prompt_id,
            "nodes": {k: dict(v) for k, v in run.progress.items()},
        }
        await self.ws.send_json("progress_state", data, run.client_id)

    def _progress_entry(self, run: _Run, node_id: str, value: Any, total: Any, state: str) -> None:
        run.progress[node_id] = {
            "value": value,
            "max": total,
            "state": state,
            "node_id": node_id,
            "prompt_id": run.item.prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }

    async def _finish_progress(self, run: _Run, node_id: str) -> None:
        entry = run.progress.get(node_id)
        total = entry["max"] if entry is not None else 1
        self._progress_entry(run, node_id, total, total, "finished")
        await self._send_progress_state(run)

    async def _execute(self, item: QueueItem) -> None:
        run = _Run(item, item.extra_data.get("client_id"))
        self._run = run
        self.client_id = run.client_id
        self.prompt = item.prompt
        self._interrupt.clear()
        if self.injected_faults:
            run.injected = self.injected_faults.pop(0)
        await self._add_message(run, "execution_start", {"prompt_id": item.prompt_id}, False)
        if run.injected is not None and run.injected.mode == "silent_ws":
            await self._apply_fault(run, None, run.injected)
            run.injected = None
        sigs = signatures(item.prompt, self.catalog)
        cached = {
            node_id
            for node_id, node in item.prompt.items()
            if self.config.cache_enabled
            and run.injected is None
            and not self.catalog[node["class_type"]].always_run
            and sigs[node_id] in self._cache
        }
        cached_list = [node_id for node_id in item.prompt if node_id in cached]
        await self._add_message(
            run, "execution_cached", {"nodes": cached_list, "prompt_id": item.prompt_id}, False
        )
        # Cached nodes are not executed, but uncached nodes downstream read their outputs.
        results: dict[str, NodeResult] = {node_id: self._cache[sigs[node_id]] for node_id in cached}
        ui_outputs: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        success = False
        current_node: str | None = None
        try:
            output_nodes = {
                node_id
                for node_id, node in item.prompt.items()
                if self.catalog[node["class_type"]].output_node
            }
            for node_id in execution_order(item.prompt, item.outputs, cached, output_nodes):
                current_node = node_id
                if node_id in cached:
                    result = self._cache[sigs[node_id]]
                else:
                    result = await self._run_node(run, node_id, results)
                    if not self.catalog[item.prompt[node_id]["class_type"]].always_run:
                        self._cache[sigs[node_id]] = result
                results[node_id] = result
                if node_id in cached or result.ui is not None:
                    await self._send_executed(run, node_id, result.ui)
                if result.ui is not None:
                    ui_outputs[node_id] = result.ui
                    meta[node_id] = {
                        "node_id": node_id,
                        "display_node": node_id,
                        "parent_node": None,
                        "real_node_id": node_id,
                    }
                await self._finish_progress(run, node_id)
                if node_id not in cached:
                    run.executed.append(node_id)
            await self._add_message(run, "execution_success", {"prompt_id": item.prompt_id}, False)
            success = True
        except Interrupted:
            node_id = current_node or ""
            await self._add_message(
                run,
                "execution_interrupted",
                {
                    "prompt_id": item.prompt_id,
                    "node_id": node_id,
                    "node_type": item.prompt.get(node_id, {}).get("class_type", ""),
                    "executed": list(run.executed),
                },
                True,
            )
        except NodeFailure as failure:
            node_id = current_node or ""
            await self._add_message(
                run,
                "execution_error",
                {
                    "prompt_id": item.prompt_id,
                    "node_id": node_id,
                    "node_type": item.prompt[node_id]["class_type"],
                    "executed": list(run.executed),
                    "exception_message": failure.exception_message,
                    "exception_type": failure.exception_type,
                    "traceback": failure.frames,
                    "current_inputs": _format_inputs(item.prompt[node_id], results),
                    "current_outputs": list(item.prompt),
                },
                False,
            )
        if len(self.history) >= MAX_HISTORY:
            self.history.pop(next(iter(self.history)))
        self.history.pop(item.prompt_id, None)
        self.history[item.prompt_id] = {
            "prompt": item.as_list(),
            "outputs": ui_outputs,
            "status": {
                "status_str": "success" if success else "error",
                "completed": success,
                "messages": run.messages,
            },
            "meta": meta,
        }
        # Stock keeps only the cache entries of the latest prompt (the "classic" cache).
        keep = set(sigs.values())
        self._cache = {sig: res for sig, res in self._cache.items() if sig in keep}

    async def _send_executed(self, run: _Run, node_id: str, ui: dict[str, Any] | None) -> None:
        if run.client_id is None:
            return
        data = {
            "node": node_id,
            "display_node": node_id,
            "output": ui,
            "prompt_id": run.item.prompt_id,
        }
        await self.ws.send_json("executed", data, run.client_id)

    async def _run_node(
        self, run: _Run, node_id: str, results: dict[str, NodeResult]
    ) -> NodeResult:
        node = run.item.prompt[node_id]
        node_class = self.catalog[node["class_type"]]
        self._progress_entry(run, node_id, 0.0, 1.0, "running")
        await self._send_progress_state(run)
        if run.client_id is not None:
            self.last_node_id = node_id
            data = {"node": node_id, "display_node": node_id, "prompt_id": run.item.prompt_id}
            await self.ws.send_json("executing", data, run.client_id)
        self.check_interrupt()
        if run.injected is not None:
            fault, run.injected = run.injected, None
            await self._apply_fault(run, node_id, fault)
        inputs: dict[str, Any] = {}
        for name, value in node.get("inputs", {}).items():
            if is_link(value):
                source = results.get(str(value[0]))
                outputs = source.outputs if source is not None else ()
                inputs[name] = outputs[int(value[1])] if int(value[1]) < len(outputs) else None
            else:
                inputs[name] = value
        return await nodes.run(self, node_id, node_class, inputs)

    # ---- RunContext --------------------------------------------------------------------------
    async def progress(self, node_id: str, value: int, total: int, preview: bytes | None) -> None:
        """Stock's progress hook: interrupt check, progress_state, progress, preview frame."""
        run = self._run
        if run is None:
            return
        self.check_interrupt()
        self._progress_entry(run, node_id, value, total, "running")
        await self._send_progress_state(run)
        with_metadata = self.ws.supports(run.client_id, "supports_preview_metadata")
        if preview is not None and with_metadata:
            metadata = {
                "node_id": node_id,
                "prompt_id": run.item.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
                "image_type": "image/png",
            }
            frame = preview_with_metadata_frame(preview, metadata)
            await self.ws.send_binary(BinaryEvent.PREVIEW_IMAGE_WITH_METADATA, frame, run.client_id)
        data = {"value": value, "max": total, "prompt_id": run.item.prompt_id, "node": node_id}
        await self.ws.send_json("progress", data, run.client_id)
        if preview is not None and not with_metadata:
            await self.ws.send_binary(
                BinaryEvent.PREVIEW_IMAGE, preview_frame(preview), run.client_id
            )

    async def text(self, node_id: str, text: str) -> None:
        run = self._run
        client_id = run.client_id if run is not None else None
        await self.ws.send_binary(BinaryEvent.TEXT, text_frame(node_id, text), client_id)

    async def fault(self, node_id: str, fault: Fault) -> None:
        run = self._run
        if run is not None:
            await self._apply_fault(run, node_id, fault)

    async def _apply_fault(self, run: _Run, node_id: str | None, fault: Fault) -> None:
        if fault.after_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._interrupt.wait(), fault.after_s)
            self.check_interrupt()
        if fault.mode in ("execution_error", "oom"):
            raise nodes.failure_for(fault)
        if fault.mode == "silent_ws":
            if run.client_id is not None:
                self.ws.muted.add(run.client_id)
            return
        if fault.mode == "hang":
            await self._interrupt.wait()
            raise Interrupted()
        if fault.mode == "crash":
            log.warning("wgpu-sim: injected crash at node %s", node_id)
            if self.config.crash_hook is not None:
                self.config.crash_hook()
            elif self.config.crash_exits:
                os._exit(1)
            await self.on_crash()
            await asyncio.Event().wait()  # a crashed instance never finishes the prompt


def _format_inputs(node: dict[str, Any], results: dict[str, NodeResult]) -> dict[str, Any]:
    formatted: dict[str, Any] = {}
    for name, value in node.get("inputs", {}).items():
        if is_link(value):
            source = results.get(str(value[0]))
            outputs = source.outputs if source is not None else ()
            index = int(value[1])
            linked = outputs[index] if index < len(outputs) else None
            formatted[name] = [_format_value(linked)]
        else:
            formatted[name] = [_format_value(value)]
    return formatted


def _format_value(value: Any) -> Any:
    if value is None or isinstance(value, int | float | bool | str):
        return value
    return str(value)


def new_prompt_id() -> str:
    return str(uuid.uuid4())
