"""POST /prompt validation replayed case by case against the recorded real answers."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from comfyui_sim.catalog import CATALOG
from comfyui_sim.server import RunningSim
from comfyui_sim.validation import validate_prompt
from tests.fixtures.sim_traffic import recorded

RECORD = recorded("validation_errors.json")
CASES = sorted(name for name in RECORD["results"] if name in RECORD["cases"])


def normalised(value: Any) -> Any:
    """Drop what legitimately differs: tracebacks (file paths), prompt ids and numbers."""
    if isinstance(value, dict):
        return {
            key: "<traceback>" if key == "traceback" else normalised(item)
            for key, item in value.items()
            if key not in ("prompt_id", "number")
        }
    if isinstance(value, list):
        return [normalised(item) for item in value]
    return value


@pytest.mark.parametrize("case", CASES)
async def test_validation_answer_matches_stock(sim: RunningSim, case: str) -> None:
    expected = RECORD["results"][case]
    body = {"prompt": RECORD["cases"][case], "client_id": "x"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sim.url}/prompt", json=body) as response,
    ):
        assert response.status == expected["status"]
        answer = await response.json()
    assert normalised(answer) == normalised(expected["body"])


async def test_no_prompt_and_malformed_json(sim: RunningSim) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sim.url}/prompt", json={"client_id": "x"}) as response:
            assert response.status == 400
            assert await response.json() == RECORD["results"]["no_prompt_key"]["body"]
        async with session.post(f"{sim.url}/api/prompt", data=b"{not json") as response:
            assert response.status == 500
            assert response.content_type == "text/plain"
            assert await response.text() == RECORD["results"]["malformed_json_body"]["body"]


def test_partially_valid_prompt_runs_only_valid_outputs() -> None:
    prompt = RECORD["cases"]["partially_valid_accepted"]
    result = validate_prompt(dict(prompt), CATALOG)
    assert result.ok
    assert result.outputs == ["5", "9"]
    assert list(result.node_errors) == ["10"]


@pytest.mark.parametrize(
    ("inputs", "error_type"),
    [
        ({"upscale_method": "sideways", "scale_by": 0.5}, "value_not_in_list"),
        ({"upscale_method": "bilinear", "scale_by": 9.0}, "value_bigger_than_max"),
        ({"upscale_method": "bilinear", "scale_by": 0.0}, "value_smaller_than_min"),
        ({"upscale_method": "bilinear", "scale_by": "x"}, "invalid_input_type"),
        ({"scale_by": 0.5}, "required_input_missing"),
    ],
)
def test_input_errors(inputs: dict[str, Any], error_type: str) -> None:
    prompt = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], **inputs}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t"}},
    }
    result = validate_prompt(prompt, CATALOG)
    assert not result.ok
    assert result.error is not None and result.error["type"] == "prompt_outputs_failed_validation"
    (error,) = result.node_errors["2"]["errors"]
    assert error["type"] == error_type
    assert result.node_errors["2"]["dependent_outputs"] == ["3"]


def test_return_type_mismatch() -> None:
    prompt = {
        "1": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
    }
    result = validate_prompt(prompt, CATALOG)
    (error,) = result.node_errors["2"]["errors"]
    assert error["type"] == "return_type_mismatch"
    assert error["details"] == "images, received_type(LATENT) mismatch input_type(IMAGE)"
    assert result.error is not None
    assert result.error["details"] == f"{error['message']}: {error['details']}"


def test_fault_node_is_validated_like_any_node() -> None:
    prompt = {"1": {"class_type": "WgpuSimFault", "inputs": {"mode": "explode"}}}
    result = validate_prompt(prompt, CATALOG)
    (error,) = result.node_errors["1"]["errors"]
    assert error["type"] == "value_not_in_list"
    assert validate_prompt(
        {"1": {"class_type": "WgpuSimFault", "inputs": {"mode": "oom"}}}, CATALOG
    ).ok
