"""The desktop GUI (the manual's scripts/gui_app.py): Tk form -> ``influencer`` commands, logs streamed live.

Each button runs one ``influencer`` CLI command as a child process, exactly what a
user would type, so the GUI holds no pipeline logic. The API key travels to the
child in its environment (never on the command line, where ``ps`` shows it). A
reader thread puts output lines on a thread-safe queue; the Tk main loop drains
it every 50 ms (Tk must only be touched from its own thread). Stop sends SIGTERM to
the whole process group: the command stops sending paid requests, lets the ones in
flight finish and saves them (each bounded by the OpenRouter deadline), then exits;
SIGKILL follows only after that deadline plus a margin, or at once on a second Stop.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import tkinter as tk
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tkinter import filedialog, ttk
from tkinter.scrolledtext import ScrolledText
from typing import Any

from pydantic import BaseModel

from ai_influencer.dataset.manifest import MANIFEST_NAME
from ai_influencer.dataset.workspace import KOHYA_SUBDIR, Workspace
from ai_influencer.options import GenerateOptions, QCOptions
from ai_influencer.options.fields import bounds_of, default_of
from ai_influencer.options.video import VideoOptions
from ai_influencer.settings import Settings

STAGES = ("prepare", "plan", "generate", "qc", "augment", "train", "video", "run")
LABELS = {
    "prepare": "1. Prepare",
    "plan": "2. Plan",
    "generate": "3. Generate",
    "qc": "4. QC",
    "augment": "5. Augment",
    "train": "6. Train LoRA",
    "video": "Video clips",
    "run": "Whole pipeline",
}


@dataclass
class FormValues:
    data_root: str
    input_raw: str
    cleaned: str
    synth: str
    qc_passed: str
    augment: str
    captions: str
    prompt_bank: str
    text_model: str
    image_model: str
    per_scene: str
    minsim: str
    minblur: str
    api_key: str = ""
    base_url: str = ""
    n: str = str(default_of(GenerateOptions, "n"))  # images per request (Image API)
    video_model: str = default_of(VideoOptions, "model")


def stage_command(stage: str, v: FormValues, exe: str | None = None) -> list[str]:
    """The ``influencer`` command line a stage button runs (the key is *not* in it)."""
    cli = exe or str(Path(sys.executable).with_name("influencer"))
    if stage == "prepare":
        return [cli, "prepare", "--in", v.input_raw, "--out", v.cleaned, "--do-facecrop"]
    if stage == "plan":
        return [cli, "plan", "--prompt_bank", v.prompt_bank, "--model", v.text_model]
    if stage == "generate":
        return [cli, "generate", "--prompt_bank", v.prompt_bank, "--model", v.image_model, "--out", v.synth,
                "--per_scene", v.per_scene, "--n", v.n, "--ref", v.cleaned]  # fmt: skip
    if stage == "qc":
        # A threshold left empty is not passed: QC then uses this persona's calibration, else its default.
        given = [(flag, value.strip()) for flag, value in (("--minsim", v.minsim), ("--minblur", v.minblur))]
        return [cli, "qc", "--ref", v.cleaned, "--cand", v.synth, "--out", v.qc_passed,
                *(part for flag, value in given if value for part in (flag, value))]  # fmt: skip
    if stage == "augment":
        return [cli, "augment", "--in", v.qc_passed, "--out", v.augment, "--captions", v.captions,
                "--meta", str(Path(v.synth) / MANIFEST_NAME), "--prompt_bank", v.prompt_bank]  # fmt: skip
    if stage == "train":
        return [cli, "train", "--dataset", str(Path(v.augment) / KOHYA_SUBDIR)]
    if stage == "video":  # one clip per storyboard shot; prices are printed before anything is submitted
        return [cli, "video", "--model", v.video_model, "--prompt_bank", v.prompt_bank]
    if stage == "run":
        return [cli, "run", "--prompt_bank", v.prompt_bank, "--per_scene", v.per_scene, "--n", v.n,
                "--model", v.image_model]  # fmt: skip
    raise ValueError(f"unknown stage {stage!r}")


def _shown(value: object) -> str:
    """A default as a form shows it: 80.0 as 80, 0.34 as 0.34."""
    return f"{value:g}" if isinstance(value, float) else str(value)


Var = Callable[[str, object], tk.StringVar]  # makes (or finds) the form's variable of a field


def field_spinbox(parent: tk.Misc, model: type[BaseModel], name: str, var: Var) -> Any:
    """A spinbox for an options model's whole-number field: its default and bounds from the model."""
    low, high = bounds_of(model, name)
    return ttk.Spinbox(
        parent, from_=low if low is not None else 0, to=high if high is not None else 10**6,
        textvariable=var(name, _shown(default_of(model, name))), width=6,
    )  # fmt: skip


def field_entry(
    parent: tk.Misc,
    model: type[BaseModel],
    name: str,
    var: Var,
    *,
    key: str | None = None,
    width: int = 8,
    empty: bool = False,
) -> Any:
    """An entry for an options model's field, filled with its default. ``key``: the form's name for it where
    two stages share a field name (``video_model``); ``empty``: left empty, for a field whose absence means
    something else (QC's thresholds: the persona's calibration)."""
    value = "" if empty else _shown(default_of(model, name))
    return ttk.Entry(parent, textvariable=var(key or name, value), width=width)


class ProcessRunner:
    """One child process at a time; its merged stdout/stderr lines go to ``lines`` (a queue)."""

    def __init__(self) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.proc: subprocess.Popen[str] | None = None
        self.stopped = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, cmd: list[str], env: dict[str, str], cwd: str | None = None) -> None:
        if self.running:
            raise RuntimeError("a step is already running; stop it first")
        self.stopped = False
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group, so Stop reaches its children too
        )
        proc = self.proc

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.lines.put(line.rstrip("\n"))
            code = proc.wait()
            self.lines.put(f"[exit {code}]" if not self.stopped else "[stopped]")

        threading.Thread(target=pump, daemon=True).start()

    def stop(self, grace_s: float = 135.0) -> None:
        """SIGTERM (drain), then SIGKILL after ``grace_s``; a second call while draining kills at once.

        Why not a 3 s grace: requests already sent are billed by the provider; killing them threw
        paid images away. ``grace_s`` should exceed the OpenRouter deadline.
        """
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            if self.stopped:  # asked twice: stop now
                os.killpg(proc.pid, signal.SIGKILL)
                return
            self.stopped = True
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class DesktopApp:
    def __init__(self, root: tk.Tk, settings: Settings | None = None) -> None:
        self.root = root
        self.settings = settings or Settings()
        self.runner = ProcessRunner()
        self.current: str | None = None
        root.title("ai-influencer")
        root.geometry("980x760")
        s = self.settings
        ws = Workspace.from_settings(s)
        self.vars: dict[str, tk.StringVar] = {}
        key = s.openrouter_api_key.get_secret_value() if s.openrouter_api_key else ""

        def var(name: str, value: object) -> tk.StringVar:
            self.vars[name] = tk.StringVar(master=root, value=str(value))
            return self.vars[name]

        folders = ttk.LabelFrame(root, text="Folders")
        folders.pack(fill="x", padx=8, pady=4)
        for row, (name, label, value) in enumerate(
            [
                ("input_raw", "Input photos", ws.input_raw),
                ("cleaned", "Cleaned references", ws.cleaned),
                ("synth", "Generated images", ws.synth),
                ("qc_passed", "QC passed", ws.qc_passed),
                ("augment", "Augmented dataset", ws.augment),
                ("captions", "Captions", ws.captions),
                ("prompt_bank", "Prompt bank", s.prompt_bank),
            ]
        ):
            ttk.Label(folders, text=label).grid(row=row, column=0, sticky="w")
            ttk.Entry(folders, textvariable=var(name, value), width=80).grid(row=row, column=1, sticky="we")
            ttk.Button(folders, text="…", width=3, command=lambda n=name: self._browse(n)).grid(row=row, column=2)
        folders.columnconfigure(1, weight=1)

        api = ttk.LabelFrame(root, text="OpenRouter")
        api.pack(fill="x", padx=8, pady=4)
        ttk.Label(api, text="API key").grid(row=0, column=0, sticky="w")
        self.key_entry = ttk.Entry(api, textvariable=var("api_key", key), show="•", width=50)
        self.key_entry.grid(row=0, column=1, sticky="w")
        ttk.Label(api, text="Text model").grid(row=1, column=0, sticky="w")
        ttk.Entry(api, textvariable=var("text_model", s.text_model), width=50).grid(row=1, column=1, sticky="w")
        ttk.Label(api, text="Image model").grid(row=2, column=0, sticky="w")
        ttk.Entry(api, textvariable=var("image_model", s.image_model), width=50).grid(row=2, column=1, sticky="w")
        # Every stage option's default, bounds and help come from its options model (ai_influencer.options).
        ttk.Label(api, text="Images per scene").grid(row=3, column=0, sticky="w")
        field_spinbox(api, GenerateOptions, "per_scene", var).grid(row=3, column=1, sticky="w")
        ttk.Label(api, text="Images per request").grid(row=4, column=0, sticky="w")
        field_spinbox(api, GenerateOptions, "n", var).grid(row=4, column=1, sticky="w")
        ttk.Label(api, text="Video model").grid(row=5, column=0, sticky="w")
        field_entry(api, VideoOptions, "model", var, key="video_model", width=50).grid(row=5, column=1, sticky="w")
        var("base_url", s.openrouter_base_url)

        qc = ttk.LabelFrame(root, text="QC thresholds")
        qc.pack(fill="x", padx=8, pady=4)
        ttk.Label(qc, text="min identity (--minsim)").grid(row=0, column=0)
        # Left empty: QC uses this persona's calibration, else the option's default (said beside them).
        field_entry(qc, QCOptions, "minsim", var, empty=True).grid(row=0, column=1)
        ttk.Label(qc, text="min sharpness (--minblur)").grid(row=0, column=2)
        field_entry(qc, QCOptions, "minblur", var, empty=True).grid(row=0, column=3)
        fallback = f"{_shown(default_of(QCOptions, 'minsim'))} / {_shown(default_of(QCOptions, 'minblur'))}"
        ttk.Label(qc, text=f"empty: this persona's calibration (influencer qc calibrate), else {fallback}").grid(
            row=0, column=4, padx=(8, 0)
        )

        buttons = ttk.Frame(root)
        buttons.pack(fill="x", padx=8, pady=6)
        self.buttons: dict[str, ttk.Button] = {}
        for stage in STAGES:
            b = ttk.Button(buttons, text=LABELS[stage], command=lambda st=stage: self.run_stage(st))
            b.pack(side="left", padx=2)
            self.buttons[stage] = b
        self.stop_button = ttk.Button(buttons, text="Stop", command=self.stop, state="disabled")
        self.stop_button.pack(side="left", padx=(16, 2))
        self.clear_button = ttk.Button(buttons, text="Clear log", command=self.clear_log)
        self.clear_button.pack(side="left", padx=2)

        self.status = tk.StringVar(master=root, value="ready")
        ttk.Label(root, textvariable=self.status).pack(fill="x", padx=8)
        self.log = ScrolledText(root, height=18, font=("monospace", 9), state="disabled")
        self.log.pack(fill="both", expand=True, padx=8, pady=(0, 8))
        root.protocol("WM_DELETE_WINDOW", self.close)
        self._poll()

    def values(self) -> FormValues:
        return FormValues(data_root=str(self.settings.data_root), **{k: v.get() for k, v in self.vars.items()})

    def _browse(self, name: str) -> None:
        chosen = (
            filedialog.askopenfilename(parent=self.root)
            if name == "prompt_bank"
            else filedialog.askdirectory(parent=self.root)
        )
        if chosen:
            self.vars[name].set(chosen)

    def append(self, line: str) -> None:
        self.log.configure(state="normal")
        self.log.insert("end", line + "\n")
        self.log.see("end")
        self.log.configure(state="disabled")

    def log_text(self) -> str:
        return self.log.get("1.0", "end")

    def clear_log(self) -> None:
        self.log.configure(state="normal")
        self.log.delete("1.0", "end")
        self.log.configure(state="disabled")

    def run_stage(self, stage: str) -> None:
        if self.runner.running:
            self.append(f"! {self.current} is still running; press Stop first")
            return
        v = self.values()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "INFLUENCER_DATA_ROOT": v.data_root}
        if v.api_key.strip():
            env["OPENROUTER_API_KEY"] = v.api_key.strip()
        if v.base_url.strip():
            env["OPENROUTER_BASE_URL"] = v.base_url.strip()
        cmd = stage_command(stage, v)
        self.append("$ " + " ".join(cmd))
        try:
            self.runner.start(cmd, env)
        except OSError as exc:
            self.append(f"! cannot start {cmd[0]}: {exc}")
            return
        self.current = stage
        self.status.set(f"running: {LABELS[stage]}")
        self.stop_button.configure(state="normal")
        for b in self.buttons.values():
            b.configure(state="disabled")

    def stop(self) -> None:
        if self.runner.stopped:
            self.status.set(f"killing: {LABELS.get(self.current or '', '')}")
        else:
            self.status.set(
                f"stopping: {LABELS.get(self.current or '', '')}: finishing the requests already sent "
                "(press Stop again to kill now)"
            )
        grace = self.settings.openrouter_timeout_s + 15.0
        threading.Thread(target=self.runner.stop, args=(grace,), daemon=True).start()

    def _poll(self) -> None:
        try:
            while True:
                line = self.runner.lines.get_nowait()
                self.append(line)
                if line.startswith(("[exit ", "[stopped]")):
                    self._finished(line)
        except queue.Empty:
            pass
        self.root.after(50, self._poll)

    def _finished(self, line: str) -> None:
        label = LABELS.get(self.current or "", "")
        self.status.set(f"stopped: {label}" if line == "[stopped]" else f"finished: {label} {line}")
        self.stop_button.configure(state="disabled")
        for b in self.buttons.values():
            b.configure(state="normal")

    def close(self) -> None:
        self.runner.stop(grace_s=2)
        self.root.destroy()


def main(settings: Settings | None = None) -> None:
    root = tk.Tk()
    DesktopApp(root, settings)
    root.mainloop()
