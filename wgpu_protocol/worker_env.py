"""The worker's environment: every variable it reads, its default, and how a launcher writes it.

The worker (`comfy_worker.config`) reads these names; the backends, the process stack and the
compose renderer write them through `worker_environment`, so a launcher and the worker cannot
disagree on a name or a default. Names follow the original comfy-worker so existing deployments
keep working.
"""

from __future__ import annotations

from wgpu_protocol.ports import COMFYUI_PORT_BASE, HUB_PORT, comfyui_port

# Where the hub is: host and port, or a full http(s)/ws(s) URL (TLS, a path prefix) that wins.
HUB_HOST = "REDIS_API_HOST"
HUB_PORT_VAR = "REDIS_API_PORT"
HUB_URL = "HUB_URL"
# Which GPU, on which machine: the worker's id is worker_id(MACHINE_ID, GPU_ID).
MACHINE_ID = "MACHINE_ID"  # default: the host name
GPU_ID = "GPU_ID"
NUM_GPUS = "NUM_GPUS"
# The ComfyUI beside it.
COMFYUI_HOST = "COMFYUI_HOST"
COMFYUI_PORT = "EXECUTION_SERVICE_PORT"  # default: COMFYUI_PORT_BASE + GPU_ID
COMFYUI_CMD = "COMFYUI_CMD"  # set: the worker starts and supervises ComfyUI itself
WORKER_TOKEN = "WORKER_TOKEN"  # the fleet secret; a worker shows only what it derives from it
WORKER_CREDENTIAL = "WORKER_CREDENTIAL"  # this worker's own (wgpu_protocol.credentials)
LOG_LEVEL = "LOG_LEVEL"
HEALTH_FILE = "HEALTH_FILE"
HEALTH_MAX_AGE_S = "HEALTH_MAX_AGE_S"
# Timings (seconds).
GRACE_S = "WORKER_GRACE_S"  # after SIGTERM, how long the running job may still take
WATCHDOG_S = "WORKER_WATCHDOG_S"
COMFYUI_CHECK_S = "WORKER_COMFYUI_CHECK_S"
COMFYUI_LOST_S = "WORKER_COMFYUI_LOST_S"
RECONNECT_MAX_S = "WORKER_RECONNECT_MAX_S"
ACK_TIMEOUT_S = "WORKER_ACK_TIMEOUT_S"
# Outputs larger than this fail as output_too_large (the hub has its own, same name).
MAX_OUTPUT_BYTES = "MAX_OUTPUT_BYTES"
# The worker tree it runs from (`--worker-src`): `git describe` of it, which the worker cannot
# run itself (read-only mount, no git), prefixed to its version in `hello`.
SRC_DESCRIBE = "WORKER_SRC_DESCRIBE"
PROGRESS_INTERVAL_S = "WORKER_PROGRESS_INTERVAL_S"  # at most one progress message this often
# ComfyUI's input directory, if the worker can reach it (inputs are deleted there after a job).
COMFYUI_INPUT_DIR = "COMFYUI_INPUT_DIR"
# Models (wgpu_protocol.models): how often ComfyUI's model files are read again; custom-node
# loaders `Class.input=folder;...` (the hub reads the same variable).
MODEL_SCAN_S = "MODEL_SCAN_S"
MODEL_LOADERS = "MODEL_LOADERS"
# How many models of each loader kind its ComfyUI keeps loaded (the simulator's --vram-models):
# the worker reports the last ones its jobs used as warm.
WARM_MODELS = "WARM_MODELS"
# 1 (default): take the next job while the previous job's outputs are relayed; 0: after.
PIPELINE = "WORKER_PIPELINE"

DEFAULT_HUB_HOST = "127.0.0.1"
DEFAULT_HUB_PORT = HUB_PORT
DEFAULT_GPU_ID = 0
DEFAULT_NUM_GPUS = 1
DEFAULT_COMFYUI_HOST = "127.0.0.1"
DEFAULT_COMFYUI_PORT_BASE = COMFYUI_PORT_BASE
DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_HEALTH_FILE = "/tmp/comfy-worker-health.json"
DEFAULT_HEALTH_MAX_AGE_S = 30.0
DEFAULT_GRACE_S = 30.0
DEFAULT_WATCHDOG_S = 10.0
DEFAULT_COMFYUI_CHECK_S = 1.0
DEFAULT_COMFYUI_LOST_S = 3.0
DEFAULT_RECONNECT_MAX_S = 5.0
DEFAULT_ACK_TIMEOUT_S = 30.0
DEFAULT_PROGRESS_INTERVAL_S = 0.05  # ~20 a second
DEFAULT_MODEL_SCAN_S = 60.0
DEFAULT_WARM_MODELS = 1


def worker_environment(
    *,
    machine_id: str,
    gpu_id: int,
    num_gpus: int,
    hub_host: str = DEFAULT_HUB_HOST,
    hub_port: int = DEFAULT_HUB_PORT,
    hub_url: str | None = None,
    comfyui_host: str = DEFAULT_COMFYUI_HOST,
    comfyui_port_base: int = DEFAULT_COMFYUI_PORT_BASE,
    worker_token: str | None = None,
) -> dict[str, str]:
    """The environment a launcher gives the worker of GPU `gpu_id` (one worker per GPU)."""
    env = {
        HUB_HOST: hub_host,
        HUB_PORT_VAR: str(hub_port),
        COMFYUI_PORT: str(comfyui_port(gpu_id, comfyui_port_base)),
        COMFYUI_HOST: comfyui_host,
        MACHINE_ID: machine_id,
        GPU_ID: str(gpu_id),
        NUM_GPUS: str(num_gpus),
    }
    if hub_url:
        env[HUB_URL] = hub_url
    if worker_token:
        env[WORKER_TOKEN] = worker_token
    return env
