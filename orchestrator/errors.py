"""Every exception the orchestrator (the `wgpu` CLI and the library under it) raises on purpose,
under one root, each with the exit code the CLI ends with. Most live here; the few marked with
a module live beside the code that raises them. `str(error)` is one line for the
user: what went wrong and what to do.

    WgpuError                       root; `exit_code` says how `wgpu` exits (default 1, FAILED)
    ├── UsageError                  bad options or input (ValueError): 2
    │   ├── ConfigError             a setting (option, env var, file) that cannot be used
    │   │   ├── InventoryError      a fleet inventory that is not valid
    │   │   └── WorkerSrcError      --worker-src DIR is not a worker tree (rollout/worker_src.py)
    │   ├── SlotError               a GPU selection that cannot be satisfied
    │   │   └── GpuNotFound         ... because a named GPU (or any GPU) is not here: 4
    │   ├── ComposeError            stack options or a compose document that are not valid
    │   ├── K8sError                options that cannot be rendered as manifests (k8s/render.py)
    │   └── WorkflowFileError       a workflow file that cannot be submitted
    ├── BackendError                a backend cannot do what was asked: 4
    │   └── BackendUnreachable      the Docker engine does not answer: 3
    ├── HubError                    the hub answered with an error (`status`, its text)
    │   └── HubUnreachable          the hub does not answer: 3
    ├── RedisUnavailable            no local Redis could be started: 3
    ├── StackError                  the one-host stack did not come up or down
    ├── UpdateError                 an update that cannot start (nothing to update): 4
    │                               (rollout/update.py)
    └── ImageError                  an image could not be built or found
        ├── ImageBuildError         the worker / hub / Redis image build failed
        └── BaseImageError          the local Debian + Python base image could not be made

The CLI has one handler (orchestrator.cli): any WgpuError a command lets through is printed as
`error: <message>` and exits with its `exit_code`. Errors of the packages below (the hub's
`redis_api.errors`, the worker's, the protocol's) are theirs; the CLI meets them only where it
runs those parts in process (`wgpu hub`, `wgpu sim`).
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes a script can rely on."""

    OK = 0
    FAILED = 1  # the operation ran and failed (some GPU's worker did not start, a job failed)
    USAGE = 2  # bad arguments or input file
    UNREACHABLE = 3  # Docker engine, hub or Redis could not be reached
    NOT_FOUND = 4  # the named GPU, container or job does not exist
    PARTIAL = 5  # some targets succeeded, others failed (fleet, all-GPU operations)


class WgpuError(Exception):
    """Root of the orchestrator's exceptions."""

    exit_code: ExitCode = ExitCode.FAILED


class UsageError(WgpuError, ValueError):
    """The options or input cannot be used as given."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """A setting (option, environment variable, file) has a value that cannot be used."""


class InventoryError(ConfigError):
    """The fleet inventory is not valid; the message names the host and key."""


class SlotError(UsageError):
    """The GPU selection cannot be satisfied; the message says what to do."""


class GpuNotFound(SlotError):
    """A named GPU, or any GPU at all, is not on this machine."""

    exit_code = ExitCode.NOT_FOUND


class ComposeError(UsageError):
    """The stack options or a compose document are not valid; the message says what to fix."""


class WorkflowFileError(UsageError):
    """A workflow file that cannot be submitted (missing, not JSON, not API format)."""


class BackendError(WgpuError):
    """A backend cannot do what was asked; the message is one line for the user."""

    exit_code = ExitCode.NOT_FOUND


class BackendUnreachable(BackendError):
    """The Docker engine (or equivalent) could not be reached."""

    exit_code = ExitCode.UNREACHABLE


class HubError(WgpuError):
    """The hub answered with an error; `status` is its HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HubUnreachable(HubError):
    """The hub did not answer (connection refused, timeout, DNS)."""

    exit_code = ExitCode.UNREACHABLE


class RedisUnavailable(WgpuError):
    """No Redis-compatible server could be found or started here."""

    exit_code = ExitCode.UNREACHABLE


class StackError(WgpuError):
    """The one-host stack did not come up (or down); the message names the part."""


class ImageError(WgpuError):
    """An image could not be built or found."""


class ImageBuildError(ImageError):
    """An image build failed; the message has the build's last line."""


class BaseImageError(ImageError):
    """The local base image could not be made (debootstrap, docker import)."""
