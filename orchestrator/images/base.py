"""The local Debian + Python base image that worker images build on.

No registry can be reached from the machines this runs on, so the image is made here: a
debootstrap'd Debian bookworm rootfs (minbase + Python) imported with `docker import`. The rootfs
tarball is cached on disk, so another Docker daemon on the same machine imports it in seconds.
Builds and imports are guarded by a file lock: parallel test sessions never build twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.errors import BaseImageError
from orchestrator.images.worker import has_image

BASE_IMAGE_TAG = "wgpu-local/python-base:bookworm"
DEFAULT_CACHE_DIR = Path(os.environ.get("WGPU_CACHE_DIR", "/var/cache/wgpu-test"))
DEFAULT_MIRROR = os.environ.get("WGPU_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
ROOTFS_VERSION = 2  # bump when the rootfs recipe changes: the cached tarball is then rebuilt
PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CA_BUNDLE_IN_IMAGE = "/etc/ssl/certs/ca-certificates.crt"

# pip inside `docker build --network host` needs the host's CA bundle to reach the index.
IMAGE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    f"ENV PIP_CERT={CA_BUNDLE_IN_IMAGE}",
    f"ENV REQUESTS_CA_BUNDLE={CA_BUNDLE_IN_IMAGE}",
    f"ENV SSL_CERT_FILE={CA_BUNDLE_IN_IMAGE}",
    "ENV PIP_BREAK_SYSTEM_PACKAGES=1",
    "ENV PIP_DISABLE_PIP_VERSION_CHECK=1",
    "ENV PYTHONDONTWRITEBYTECODE=1",
    'CMD ["python3"]',
)


def rootfs_tarball_path(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    return cache_dir / f"python-base-{SUITE}-v{ROOTFS_VERSION}.tar"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock shared by every process on this machine (released on process death)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(args: list[str], what: str, timeout_s: float) -> None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BaseImageError(f"{what} took longer than {timeout_s:.0f}s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise BaseImageError(f"{what} failed ({done.returncode}): {' | '.join(tail)}")


def build_rootfs_tarball(dest: Path, mirror: str = DEFAULT_MIRROR, timeout_s: float = 900) -> Path:
    """Debootstrap a minimal bookworm with Python into a tarball at `dest` (needs root)."""
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise BaseImageError("debootstrap not found: install it (apt-get install debootstrap)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wgpu-rootfs-", dir=dest.parent) as work:
        rootfs = Path(work) / "rootfs"
        _run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(rootfs),
                mirror,
            ],
            "debootstrap",
            timeout_s,
        )
        if HOST_CA_BUNDLE.exists():
            shutil.copyfile(HOST_CA_BUNDLE, rootfs / CA_BUNDLE_IN_IMAGE.lstrip("/"))
        # Caches, docs and translations only make the image bigger (and every import slower).
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        for bulky in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale"):
            shutil.rmtree(rootfs / bulky, ignore_errors=True)
            (rootfs / bulky).mkdir(parents=True, exist_ok=True)
        partial = dest.with_suffix(".partial")
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], "tar", 300)
        partial.replace(dest)  # atomic: a reader never sees half a tarball
    return dest


def ensure_rootfs_tarball(
    cache_dir: Path = DEFAULT_CACHE_DIR, mirror: str = DEFAULT_MIRROR
) -> Path:
    """Return the cached rootfs tarball, building it first if no process has yet."""
    tarball = rootfs_tarball_path(cache_dir)
    if tarball.exists():
        return tarball
    with file_lock(cache_dir / "rootfs.lock"):
        if not tarball.exists():
            build_rootfs_tarball(tarball, mirror)
    return tarball


def ensure_base_image(
    client: Any,
    tag: str = BASE_IMAGE_TAG,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    mirror: str = DEFAULT_MIRROR,
) -> str:
    """Make sure the daemon behind `client` (a docker.DockerClient) has `tag`; return the tag.

    Reuses the image when the tag exists, else imports the cached rootfs tarball (building it
    first when missing).
    """
    if has_image(client, tag):
        return tag
    tarball = ensure_rootfs_tarball(cache_dir, mirror)
    with file_lock(cache_dir / "import.lock"):
        if not has_image(client, tag):
            repository, _, version = tag.rpartition(":")
            client.api.import_image(
                src=str(tarball), repository=repository, tag=version, changes=list(IMAGE_CHANGES)
            )
    if not has_image(client, tag):
        raise BaseImageError(f"importing {tarball} did not create {tag}: see the daemon's log")
    return tag
