"""The Tk desktop GUI in a real window on Xvfb, running real ``influencer`` steps as child processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ai_influencer.settings import Settings
from tests.conftest import REPO, TEST_KEY
from tests.support.assets import face
from tests.support.openrouter_stub import StubOpenRouter

XVFB = shutil.which("Xvfb")
SHOTS = REPO / "test-output" / "screenshots"
pytestmark = pytest.mark.skipif(XVFB is None, reason="Xvfb is not installed (apt-get install xvfb)")


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    for n in range(90, 140):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            break
    proc = subprocess.Popen([XVFB, f":{n}", "-screen", "0", "1280x900x24", "-nolisten", "tcp"])  # type: ignore[list-item]
    deadline = time.monotonic() + 20
    while not Path(f"/tmp/.X11-unix/X{n}").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail("Xvfb did not start")
        time.sleep(0.05)
    try:
        yield f":{n}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def gui(display: str, stub: StubOpenRouter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    import tkinter as tk

    from interfaces.desktop.app import DesktopApp

    monkeypatch.setenv("DISPLAY", display)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    settings = Settings(
        data_root=tmp_path / "data",
        openrouter_api_key=TEST_KEY,
        openrouter_base_url=stub.base_url,
        prompt_bank=REPO / "prompt_bank" / "default.yaml",
    )
    root = tk.Tk()
    app = DesktopApp(root, settings)
    root.update()
    yield app
    app.runner.stop(grace_s=2)
    root.destroy()


def pump(app: object, until: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError("timed out; log:\n" + app.log_text()[-3000:])  # type: ignore[attr-defined]
        app.root.update()  # type: ignore[attr-defined]
        time.sleep(0.02)


def test_qc_button_runs_the_real_step_and_streams_its_log(gui: object, tmp_path: Path, display: str) -> None:
    app = gui
    data = tmp_path / "data"
    for folder, names in (("cleaned", ("obama.jpg", "obama2.jpg")), ("synth_openrouter", ("obama3.jpg", "biden.jpg"))):
        (data / folder).mkdir(parents=True)
        for n in names:
            shutil.copy(face(n), data / folder / n)
    assert app.key_entry.cget("show") == "•"  # type: ignore[attr-defined]
    # The thresholds left empty come from this persona's calibration; the one typed in is passed as given.
    (data / "persona.json").write_text('{"version": 1, "qc": {"minsim": 0.3}}')
    app.vars["minblur"].set("70")  # type: ignore[attr-defined]
    app.buttons["qc"].invoke()  # type: ignore[attr-defined]
    assert str(app.stop_button.cget("state")) == "normal"  # type: ignore[attr-defined]
    pump(app, lambda: "[exit " in app.log_text(), timeout=240)  # type: ignore[attr-defined]
    log = app.log_text()  # type: ignore[attr-defined]
    assert "$ " in log and " qc --ref " in log and "[exit 0]" in log, log[-2000:]
    assert "--minsim" not in log and " --minblur 70" in log, log[-2000:]
    assert "thresholds: minsim 0.3 (persona calibration" in log and "minblur 70 (given)" in log, log[-2000:]
    assert "accepted" in log.lower()
    assert (data / "qc_passed" / "qc_report.csv").is_file()
    assert (data / "qc_passed" / "obama3.jpg").is_file() and not (data / "qc_passed" / "biden.jpg").exists()
    assert "finished" in app.status.get()  # type: ignore[attr-defined]
    SHOTS.mkdir(parents=True, exist_ok=True)
    from PIL import ImageGrab

    ImageGrab.grab(xdisplay=display).save(SHOTS / "desktop-qc.png")
    app.clear_button.invoke()  # type: ignore[attr-defined]
    assert app.log_text().strip() == ""  # type: ignore[attr-defined]


def test_stop_ends_a_long_step_and_the_key_is_not_on_the_command_line(
    gui: object, stub: StubOpenRouter, tmp_path: Path
) -> None:
    app = gui
    (tmp_path / "data" / "cleaned").mkdir(parents=True)
    shutil.copy(face("obama.jpg"), tmp_path / "data" / "cleaned" / "obama.jpg")
    stub.latency, stub.latency_paths = 4, ("/images",)  # 6 x 12 images would run for minutes
    app.vars["per_scene"].set("12")  # type: ignore[attr-defined]
    app.buttons["generate"].invoke()  # type: ignore[attr-defined]
    pump(
        app,
        lambda: bool(stub.image_requests()) or "[exit" in app.log_text(),  # type: ignore[attr-defined]
        timeout=120,
    )
    assert app.runner.running, app.log_text()  # type: ignore[attr-defined]
    proc = app.runner.proc  # type: ignore[attr-defined]
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
    assert TEST_KEY not in cmdline and TEST_KEY not in app.log_text()  # type: ignore[attr-defined]
    assert os.environ.get("OPENROUTER_API_KEY") is None  # the key went to the child's env only
    time.sleep(1.0)  # requests are in flight
    app.stop_button.invoke()  # type: ignore[attr-defined]
    pump(app, lambda: "[stopped]" in app.log_text(), timeout=60)  # type: ignore[attr-defined]
    assert proc.poll() is not None
    # Stop drained the step: the requests the provider accepted finished and every one is on disk.
    time.sleep(0.2)
    paid = len(stub.paid_requests)
    synth = Path(app.vars["synth"].get())  # type: ignore[attr-defined]
    assert paid >= 1 and len(list(synth.glob("*.png"))) == paid, app.log_text()  # type: ignore[attr-defined]
    assert paid < 72 and "every image already paid for is saved" in app.log_text()  # type: ignore[attr-defined]
    assert app.status.get().startswith("stopped")  # type: ignore[attr-defined]
    assert str(app.buttons["qc"].cget("state")) == "normal"  # type: ignore[attr-defined]


def test_a_second_stop_kills_at_once(gui: object, stub: StubOpenRouter, tmp_path: Path) -> None:
    app = gui
    (tmp_path / "data" / "cleaned").mkdir(parents=True)
    shutil.copy(face("obama.jpg"), tmp_path / "data" / "cleaned" / "obama.jpg")
    stub.latency, stub.latency_paths = 60, ("/images",)  # a provider that takes a minute per image
    app.vars["per_scene"].set("12")  # type: ignore[attr-defined]
    app.buttons["generate"].invoke()  # type: ignore[attr-defined]
    pump(app, lambda: bool(stub.image_requests()), timeout=120)
    proc = app.runner.proc  # type: ignore[attr-defined]
    app.stop_button.invoke()  # type: ignore[attr-defined]
    pump(app, lambda: app.status.get().startswith("stopping"), timeout=10)  # type: ignore[attr-defined]
    assert "press Stop again" in app.status.get()  # type: ignore[attr-defined]
    time.sleep(1.0)
    assert proc.poll() is None, "still finishing the request in flight"
    started = time.monotonic()
    app.stop_button.invoke()  # type: ignore[attr-defined]
    pump(app, lambda: "[stopped]" in app.log_text(), timeout=30)  # type: ignore[attr-defined]
    assert proc.poll() is not None and time.monotonic() - started < 20
