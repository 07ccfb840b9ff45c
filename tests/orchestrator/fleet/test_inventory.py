"""The fleet inventory: [defaults] + [[hosts]], fallbacks, and one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.commands.fleet import exit_code
from orchestrator.errors import BackendError, InventoryError
from orchestrator.fleet.inventory import (
    HostResult,
    host_slots,
    load_inventory,
    parse_inventory,
    resolve_docker_host,
)
from tests.paths import REPO

TWO_HOSTS = """
[defaults]
hub_url = "http://10.0.0.5:8001"
image = "worker:1"
gpus = "all"
labels = { region = "eu" }

[[hosts]]
machine_id = "a"
docker_host = "ssh://root@a"

[[hosts]]
machine_id = "b"
docker_host = "tcp://b:2376"
gpus = [0, 2]
image = "worker:2"
port_base = 9000
labels = { rack = "r7", region = "us" }
"""


def test_hosts_fall_back_to_the_defaults() -> None:
    inventory = parse_inventory(TWO_HOSTS)
    a, b = inventory.hosts
    assert (a.machine_id, a.docker_host, a.image, a.gpus) == (
        "a",
        "ssh://root@a",
        "worker:1",
        "all",
    )
    assert a.hub_url == b.hub_url == "http://10.0.0.5:8001"
    assert a.port_base == 8188 and a.labels == {"region": "eu"}
    assert (b.image, b.gpus, b.port_base) == ("worker:2", ("0", "2"), 9000)
    assert b.labels == {"region": "us", "rack": "r7"}  # merged, the host's value wins
    assert inventory.hub_urls == ["http://10.0.0.5:8001"]


def test_the_example_inventory_parses() -> None:
    inventory = load_inventory(REPO / "examples" / "fleet.example.toml")
    assert [h.machine_id for h in inventory.hosts] == ["gpu-box-a", "gpu-box-b", "laptop"]
    assert inventory.hosts[2].simulate == 1 and inventory.hosts[1].gpus == ("0", "2")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[defaults]\nimage = 'x'\n", "no [[hosts]]"),
        ("[[hosts]]\nmachine_id = 'a'\n[[hosts]]\nmachine_id = 'a'\n", "used twice"),
        ("[[hosts]]\ndocker_host = 'ssh://x'\n", "machine_id must be"),
        ("[[hosts]]\nmachine_id = 'a b'\n", "machine_id must be"),
        ("[[hosts]]\nmachine_id = 'a'\ngpu = [0]\n", "unknown key(s) gpu"),
        (
            "[defaults]\nmachine_id = 'a'\n[[hosts]]\nmachine_id = 'b'\n",
            "unknown key(s) machine_id",
        ),
        ("[[hosts]]\nmachine_id = 'a'\ngpus = 'some'\n", 'gpus must be "all"'),
        ("[[hosts]]\nmachine_id = 'a'\ngpus = [1, 1]\n", "names a GPU twice"),
        ("[[hosts]]\nmachine_id = 'a'\nsimulate = -1\n", "simulate must be"),
        ("[[hosts]]\nmachine_id = 'a'\nsimulate = 2\ngpus = [0]\n", "either gpus or simulate"),
        ("[[hosts]]\nmachine_id = 'a'\nhub_url = '10.0.0.5:8001'\n", "hub_url must start"),
        ("[[hosts]\nmachine_id = 'a'\n", "not valid TOML"),
        ("[extra]\n[[hosts]]\nmachine_id = 'a'\n", "unknown table(s) extra"),
    ],
)
def test_mistakes_are_named(text: str, message: str) -> None:
    with pytest.raises(InventoryError, match=None) as caught:
        parse_inventory(text, "fleet.toml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("fleet.toml")


def test_docker_hosts_as_urls_or_context_names() -> None:
    assert resolve_docker_host("ssh://root@a") == "ssh://root@a"
    assert resolve_docker_host(None) is None
    with pytest.raises(BackendError, match="no docker context named 'nope-ctx'"):
        resolve_docker_host("nope-ctx")


def test_cli_reports_a_bad_inventory_as_usage(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text("[[hosts]]\nmachine_id = 'a'\nbogus = 1\n")
    for command in ("up", "down", "status"):
        result = CliRunner().invoke(app, ["fleet", command, "--inventory", str(path)])
        assert result.exit_code == 2, result.output
        assert "unknown key(s) bogus" in result.stderr
    missing = CliRunner().invoke(app, ["fleet", "status", "-i", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2 and "cannot read" in missing.stderr


def test_exit_codes_say_all_some_or_none() -> None:
    assert exit_code(2, 0) == 0
    assert exit_code(1, 1) == 5  # PARTIAL
    assert exit_code(0, 2) == 1
    assert HostResult("a", None, True).ok


def test_a_hosts_gpus_go_through_the_one_selection() -> None:
    """Listed by index, a host's GPUs keep those indices (no GPU probe needed), and NUM_GPUS
    leaves room for the highest one (the worker refuses GPU_ID >= NUM_GPUS)."""
    inventory = parse_inventory('[[hosts]]\nmachine_id = "box"\ngpus = [2, 0]\n')
    (host,) = inventory.hosts
    slots, num_gpus = host_slots(host, backend=None, image="unused")  # type: ignore[arg-type]
    assert [(s.index, s.device_id) for s in slots] == [(2, "2"), (0, "0")]
    assert num_gpus == 3
