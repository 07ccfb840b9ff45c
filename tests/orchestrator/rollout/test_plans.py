"""What `wgpu update` changes in a slot's plan (pure), and the plan kept beside each slot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.backends.base import (
    HubAddress,
    WorkerSettings,
    plan_slots,
    slot_plan_from_json,
    slot_plan_json,
)
from orchestrator.gpus.slots import Slot
from orchestrator.rollout.update import Change, apply_change, version_of
from orchestrator.rollout.worker_src import MOUNT_POINT, WorkerSrcError, resolve_worker_src
from tests.orchestrator.rollout.load import worker_tree
from wgpu_protocol import worker_env

SETTINGS = WorkerSettings(machine_id="m1", hub=HubAddress("http://hub:8001"), image="img:1")


def test_a_plan_survives_its_json_and_a_worker_tree_goes_into_env_and_mounts(
    tmp_path: Path,
) -> None:
    src = resolve_worker_src(worker_tree(tmp_path / "src"))
    slots = [Slot(0, simulated=True, name="simulated"), Slot(1, uuid="GPU-1", name="H100")]
    plans = plan_slots(slots, WorkerSettings(**{**SETTINGS.__dict__, "worker_src": src}), 2)
    for plan in plans:
        assert slot_plan_from_json(slot_plan_json(plan)) == plan
        assert plan.worker.mounts == ((str(src.path), MOUNT_POINT),)
        assert plan.worker.env["PYTHONPATH"] == f"{MOUNT_POINT}:{MOUNT_POINT}/worker_image"
        assert version_of(plan) == src.version
    assert plans[0].comfyui is not None and plans[0].comfyui.mounts  # the tree's simulator
    on_host = plan_slots(slots, WorkerSettings(**{**SETTINGS.__dict__, "worker_src": src}), 2,
                         containers=False)  # fmt: skip
    assert on_host[1].worker.mounts == ()
    assert on_host[1].worker.env["PYTHONPATH"] == f"{src.path}:{src.path}/worker_image"
    with pytest.raises(ValueError):
        slot_plan_from_json('{"slot": {}}')


def test_apply_change_changes_only_what_was_asked(tmp_path: Path) -> None:
    [plan] = plan_slots([Slot(1, uuid="GPU-1")], SETTINGS, 2)
    assert apply_change(plan, Change()) == plan
    new_src = resolve_worker_src(worker_tree(tmp_path / "new", marker="new"))
    changed = apply_change(plan, Change(image="img:2", worker_src=new_src))
    assert changed.worker.image == "img:2" and version_of(changed) == new_src.version
    assert {k: v for k, v in changed.worker.env.items() if k in plan.worker.env} == plan.worker.env
    assert changed.slot == plan.slot and changed.comfyui is None
    with_comfy = apply_change(plan, Change(comfyui_image="comfy:2"))
    assert with_comfy.comfyui is not None and with_comfy.comfyui.image == "comfy:2"
    assert with_comfy.comfyui.port == 8189 and with_comfy.worker == plan.worker
    # A worker env without the port still puts the ComfyUI on its own GPU's port, not GPU 0's.
    env = {k: v for k, v in plan.worker.env.items() if k != worker_env.COMFYUI_PORT}
    bare = replace(plan, worker=replace(plan.worker, env=env))
    bare_comfy = apply_change(bare, Change(comfyui_image="comfy:2")).comfyui
    assert bare_comfy is not None and bare_comfy.port == 8189
    # A second tree replaces the first one's variables instead of adding to them.
    newer = resolve_worker_src(worker_tree(tmp_path / "newer", marker="newer"))
    again = apply_change(changed, Change(worker_src=newer))
    assert version_of(again) == newer.version and again.worker.mounts[0][0] == str(newer.path)


def test_a_tree_without_the_worker_layout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkerSrcError, match="worker_image/comfy_worker"):
        resolve_worker_src(tmp_path)
    with pytest.raises(WorkerSrcError, match="not a directory"):
        resolve_worker_src(tmp_path / "missing")
