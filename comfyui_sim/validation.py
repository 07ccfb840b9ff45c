"""POST /prompt validation, following stock ComfyUI's `validate_prompt` / `validate_inputs`.

Error types, messages and the shape of `node_errors` match ComfyUI 0.3.64 (see the recorded
`validation_errors.json`): an error in an upstream node is reported on that node, downstream
nodes fail without reasons, and each reported node lists the outputs that depend on it.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comfyui_sim.catalog import NodeClass

Prompt = dict[str, Any]
Reason = dict[str, Any]
Validated = dict[str, tuple[bool, list[Reason], str]]


@dataclass
class ValidationResult:
    ok: bool
    error: dict[str, Any] | None
    outputs: list[str]
    node_errors: dict[str, Any] = field(default_factory=dict)


def _error(kind: str, message: str, details: str = "") -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def _full_type_name(exc: BaseException) -> str:
    module = type(exc).__module__
    name = type(exc).__qualname__
    return name if module in (None, "builtins") else f"{module}.{name}"


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2


def _convert(input_type: Any, value: Any) -> Any:
    if isinstance(value, dict) and "__value__" in value:
        value = value["__value__"]
    if input_type == "INT":
        return int(value)
    if input_type == "FLOAT":
        return float(value)
    if input_type == "STRING":
        return str(value)
    if input_type == "BOOLEAN":
        return bool(value)
    return value


def _types_match(received: str, expected: Any) -> bool:
    if isinstance(expected, list):  # a combo accepts a combo-typed link
        return received in ("COMBO", "*")
    if received == "*" or expected == "*" or received == expected:
        return True
    received_set = set(received.split(","))
    return bool(received_set & set(str(expected).split(",")))


# (directory kind, name) -> whether that file exists, for NodeClass.file_inputs.
FileExists = Callable[[str, str], bool]


def _file_error(name: str, value: Any) -> Reason:
    return {
        "type": "custom_validation_failed",
        "message": "Custom validation failed for node",
        "details": f"{name} - Invalid image file: {value}",
        "extra_info": {"input_name": name},
    }


class _Validator:
    def __init__(
        self, prompt: Prompt, catalog: dict[str, NodeClass], file_exists: FileExists | None = None
    ) -> None:
        self.prompt = prompt
        self.catalog = catalog
        self.file_exists = file_exists
        self.validated: Validated = {}
        self.in_progress: set[str] = set()

    def validate_inputs(self, unique_id: str) -> tuple[bool, list[Reason], str]:
        if unique_id in self.validated:
            return self.validated[unique_id]
        if unique_id in self.in_progress:
            # A cycle: stock ComfyUI recurses until the frames unwind with no reasons left.
            return (False, [], unique_id)
        self.in_progress.add(unique_id)
        try:
            return self._validate_inputs(unique_id)
        finally:
            self.in_progress.discard(unique_id)

    def _validate_inputs(self, unique_id: str) -> tuple[bool, list[Reason], str]:
        inputs = self.prompt[unique_id]["inputs"]
        node_class = self.catalog[self.prompt[unique_id]["class_type"]]
        errors: list[Reason] = []
        valid = True
        declared = [("required", n, s) for n, s in node_class.required.items()]
        declared += [("optional", n, s) for n, s in node_class.optional.items()]
        for category, name, spec in declared:
            input_type, options = spec[0], spec[1] if len(spec) > 1 else {}
            if name not in inputs:
                if category == "required":
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": f"{name}",
                            "extra_info": {"input_name": name},
                        }
                    )
                continue
            value = inputs[name]
            info = [input_type, options]
            if isinstance(value, list):
                if len(value) != 2:
                    errors.append(
                        {
                            "type": "bad_linked_input",
                            "message": "Bad linked input, must be a length-2 list of "
                            "[node_id, slot_index]",
                            "details": f"{name}",
                            "extra_info": {
                                "input_name": name,
                                "input_config": info,
                                "received_value": value,
                            },
                        }
                    )
                    continue
                source_id = value[0]
                source_class = self.catalog[self.prompt[source_id]["class_type"]]
                received_type = tuple(source_class.outputs)[value[1]]
                if not _types_match(received_type, input_type):
                    errors.append(
                        {
                            "type": "return_type_mismatch",
                            "message": "Return type mismatch between linked nodes",
                            "details": f"{name}, received_type({received_type}) "
                            f"mismatch input_type({input_type})",
                            "extra_info": {
                                "input_name": name,
                                "input_config": info,
                                "received_type": received_type,
                                "linked_node": value,
                            },
                        }
                    )
                    continue
                try:
                    result = self.validate_inputs(source_id)
                    if result[0] is False:
                        valid = False
                        continue
                except Exception as exc:
                    valid = False
                    self.validated[source_id] = (
                        False,
                        [
                            {
                                "type": "exception_during_inner_validation",
                                "message": "Exception when validating inner node",
                                "details": str(exc),
                                "extra_info": {
                                    "input_name": name,
                                    "input_config": info,
                                    "exception_message": str(exc),
                                    "exception_type": _full_type_name(exc),
                                    "traceback": traceback.format_tb(sys.exc_info()[2]),
                                    "linked_node": value,
                                },
                            }
                        ],
                        source_id,
                    )
                    continue
            else:
                try:
                    value = _convert(input_type, value)
                    inputs[name] = value
                except Exception as exc:
                    errors.append(
                        {
                            "type": "invalid_input_type",
                            "message": f"Failed to convert an input value to a {input_type} value",
                            "details": f"{name}, {value}, {exc}",
                            "extra_info": {
                                "input_name": name,
                                "input_config": info,
                                "received_value": value,
                                "exception_message": str(exc),
                            },
                        }
                    )
                    continue
                file_kind = node_class.file_inputs.get(name)
                if file_kind is not None:
                    # Stock LoadImage: VALIDATE_INPUTS checks that the file exists, not the list.
                    if self.file_exists is not None and not self.file_exists(file_kind, value):
                        errors.append(_file_error(name, value))
                    continue
                reason = _range_or_choice_error(name, value, input_type, options, info)
                if reason is not None:
                    errors.append(reason)
        result = (False, errors, unique_id) if errors or not valid else (True, [], unique_id)
        self.validated[unique_id] = result
        return result


def _range_or_choice_error(
    name: str, value: Any, input_type: Any, options: dict[str, Any], info: list[Any]
) -> Reason | None:
    base = {"input_name": name, "input_config": info, "received_value": value}
    if "min" in options and value < options["min"]:
        return {
            "type": "value_smaller_than_min",
            "message": "Value {} smaller than min of {}".format(value, options["min"]),
            "details": f"{name}",
            "extra_info": base,
        }
    if "max" in options and value > options["max"]:
        return {
            "type": "value_bigger_than_max",
            "message": "Value {} bigger than max of {}".format(value, options["max"]),
            "details": f"{name}",
            "extra_info": base,
        }
    if isinstance(input_type, list) and value not in input_type:
        too_long = len(input_type) > 20
        return {
            "type": "value_not_in_list",
            "message": "Value not in list",
            "details": f"{name}: '{value}' not in "
            + (f"(list of length {len(input_type)})" if too_long else str(input_type)),
            "extra_info": {**base, "input_config": None if too_long else info},
        }
    return None


def validate_prompt(
    prompt: Prompt,
    catalog: dict[str, NodeClass],
    partial_execution_targets: list[str] | None = None,
    file_exists: FileExists | None = None,
) -> ValidationResult:
    """Validate an API-format graph. Mutates literal inputs to their converted values, as stock."""
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return ValidationResult(
                False,
                _error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                ),
                [],
            )
        node_class = catalog.get(node["class_type"])
        if node_class is None:
            return ValidationResult(
                False,
                _error(
                    "invalid_prompt",
                    f"Cannot execute because node {node['class_type']} does not exist.",
                    f"Node ID '#{node_id}'",
                ),
                [],
            )
        if node_class.output_node and (
            partial_execution_targets is None or node_id in partial_execution_targets
        ):
            outputs.append(node_id)
    if not outputs:
        return ValidationResult(False, _error("prompt_no_outputs", "Prompt has no outputs"), [])

    validator = _Validator(prompt, catalog, file_exists)
    good_outputs: list[str] = []
    output_errors: list[tuple[str, list[Reason]]] = []
    node_errors: dict[str, Any] = {}
    for output_id in outputs:
        try:
            valid, reasons, _ = validator.validate_inputs(output_id)
        except Exception as exc:
            valid = False
            reasons = [
                {
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": str(exc),
                    "extra_info": {
                        "exception_type": _full_type_name(exc),
                        "traceback": traceback.format_tb(sys.exc_info()[2]),
                    },
                }
            ]
            validator.validated[output_id] = (False, reasons, output_id)
        if valid:
            good_outputs.append(output_id)
            continue
        if reasons:
            output_errors.append((output_id, reasons))
        for node_id, (node_valid, node_reasons, _) in validator.validated.items():
            if node_valid or not node_reasons:
                continue
            entry = node_errors.setdefault(
                node_id,
                {
                    "errors": node_reasons,
                    "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"],
                },
            )
            entry["dependent_outputs"].append(output_id)

    if not good_outputs:
        details = "\n".join(
            f"{reason['message']}: {reason['details']}"
            for _, reasons in output_errors
            for reason in reasons
        )
        error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation")
        error["details"] = details
        return ValidationResult(False, error, [], node_errors)
    return ValidationResult(True, None, good_outputs, node_errors)
