"""Docker for the opt-in tests (test_docker_pool.py, test_compose_stack.py): an engine, images, no registry.

Nothing here pulls from a registry; every image is built on this machine:
- ``BASE``: a Debian bookworm root filesystem made with ``debootstrap`` and ``docker import``
  (``apt-get install debootstrap``; it fetches .debs from the Debian mirror, a package registry).
- ``IMAGE``: docker/Dockerfile on that base, from wheels built on the host (``docker/wheels/``,
  git-ignored) with the ``hub`` extra, so pip needs no index inside the build.
- ``PG_IMAGE``: Debian's ``postgresql`` on that base (tests/support/postgres-image/), standing in
  for compose.yaml's ``postgres:16-alpine`` with the same POSTGRES_USER/PASSWORD/DB contract.

The engine: an already running one is used; otherwise, as root with ``dockerd`` installed
(``apt-get install docker.io``), ``dockerd --bridge=none --iptables=false`` is started and stopped
again. No bridge: every container here uses the host network and reaches only what the host
reaches on 127.0.0.1. Images are tagged ``*:test`` so a real ``ai-influencer:latest`` is never
replaced.

Opted in, a missing engine, debootstrap or docker-compose is an error (:class:`DockerUnavailable`,
turned into a test failure), never a skip: the opt-in says "run this".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.prefect_server import BIN

REPO = Path(__file__).resolve().parents[2]
BASE = "ai-influencer-base:bookworm"
IMAGE = "ai-influencer:test"
PG_IMAGE = "ai-influencer-test-postgres:15"
BASE_PACKAGES = "python3,python3-venv,ca-certificates,tini,libglib2.0-0,libgomp1"
MIRROR = "http://deb.debian.org/debian"


class DockerUnavailable(RuntimeError):
    """A part the opted-in Docker tests need is missing (the message says how to install it)."""


def sh(
    *args: str, timeout: float = 1800, env: dict[str, str] | None = None, cwd: Path = REPO, stdin: str | None = None
) -> str:
    """Run a command; its stdout, or an AssertionError with the tail of both streams."""
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, input=stdin)
    if res.returncode != 0:
        raise AssertionError(
            f"{' '.join(args[:4])} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    return res.stdout


def docker_ok() -> bool:
    return (
        shutil.which("docker") is not None and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    )


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


@contextmanager
def docker_engine() -> Iterator[None]:
    """A working Docker engine for the block: the running one, or a ``dockerd`` started (and stopped) here."""
    if docker_ok():
        yield
        return
    if shutil.which("docker") is None or shutil.which("dockerd") is None:
        raise DockerUnavailable("no Docker engine: apt-get install docker.io (and run as root), or start dockerd")
    if os.geteuid() != 0:
        raise DockerUnavailable("dockerd is installed but not running, and only root can start it here")
    log = Path("/tmp") / f"influencer-dockerd-{os.getpid()}.log"
    with log.open("w") as out:
        started = subprocess.Popen(["dockerd", "--bridge=none", "--iptables=false"], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while not docker_ok():
            if started.poll() is not None or time.monotonic() > deadline:
                raise DockerUnavailable(f"dockerd could not start here:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield
    finally:
        started.terminate()
        try:
            started.wait(30)
        except subprocess.TimeoutExpired:
            started.kill()
            started.wait(30)


def ensure_base(workdir: Path) -> None:
    """``BASE`` from debootstrap + ``docker import`` (minutes), unless it exists already."""
    if image_exists(BASE):
        return
    if shutil.which("debootstrap") is None:
        raise DockerUnavailable("debootstrap builds the base image without a registry: apt-get install debootstrap")
    rootfs = workdir / "rootfs"
    rootfs.mkdir(parents=True, exist_ok=True)
    sh("debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(rootfs), MIRROR)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(["docker", "import", "-", BASE], stdin=tar.stdout, capture_output=True, timeout=600)
    tar.wait()
    if imported.returncode != 0:
        raise AssertionError(f"docker import failed: {imported.stderr.decode(errors='replace')[-2000:]}")
    shutil.rmtree(rootfs, ignore_errors=True)


def ensure_wheels() -> Path:
    """The project's dependencies as wheels in docker/wheels (built once; the project itself always fresh)."""
    wheels = REPO / "docker" / "wheels"
    if not any(wheels.glob("prefect-*.whl")):
        wheels.mkdir(parents=True, exist_ok=True)
        sh(str(BIN / "pip"), "wheel", "-q", "-w", str(wheels), "-c", "constraints.txt", ".[hub]")
        # build tools for the project itself, and what Debian's Python 3.11.2 needs beyond this 3.11.x
        sh(str(BIN / "pip"), "download", "-q", "-d", str(wheels), "setuptools>=69", "wheel", "async-timeout>=4.0.3")
    for stale in wheels.glob("ai_influencer-*.whl"):
        stale.unlink()  # the image installs the working tree, never an old build of it
    return wheels


def build_image(workdir: Path, tag: str = IMAGE) -> str:
    """docker/Dockerfile on ``BASE`` with the ``hub`` extra (no GPU, no torch): the flows, the worker, the hub."""
    ensure_base(workdir)
    ensure_wheels()
    sh("docker", "build", "--network", "host", "-f", "docker/Dockerfile", "-t", tag,
       "--build-arg", f"BASE_IMAGE={BASE}", "--build-arg", "EXTRAS=hub", "--build-arg", f"UID={os.getuid() or 1000}",
       ".")  # fmt: skip
    return tag


def build_postgres_image(workdir: Path, tag: str = PG_IMAGE) -> str:
    """Debian's PostgreSQL on ``BASE`` (see tests/support/postgres-image/Dockerfile)."""
    ensure_base(workdir)
    sh("docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE}", "-t", tag,
       str(Path(__file__).parent / "postgres-image"))  # fmt: skip
    return tag


def timed(seconds: dict[str, float], name: str) -> _Timer:
    """``with timed(t, "build"): ...`` adds the block's wall time to ``t["build"]``."""
    return _Timer(seconds, name)


class _Timer:
    def __init__(self, seconds: dict[str, float], name: str) -> None:
        self.seconds, self.name = seconds, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.seconds[self.name] = self.seconds.get(self.name, 0.0) + time.perf_counter() - self.t0
