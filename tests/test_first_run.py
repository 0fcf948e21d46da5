"""A new user's first commands: fast answers, checks before Prefect starts, one line per failure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TEST_KEY
from tests.support.assets import face
from tests.support.openrouter_stub import StubOpenRouter
from tests.test_cli import run

HEAVY = ("prefect", "torch", "cv2", "dlib", "albumentations", "diffusers", "onnxruntime", "scipy")


def test_importing_the_cli_loads_no_heavy_library() -> None:
    """`influencer --help` took 2.5-4.9 s because every command's libraries were imported up front."""
    code = f"import sys, interfaces.cli\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"imported at start-up: {res.stdout.strip()}"


def test_usecases_stay_functions_once_their_modules_are_imported() -> None:
    """The package loads its stages lazily; a stage's module must never shadow the function of its name."""
    code = (
        "from ai_influencer import usecases\n"
        "from ai_influencer.usecases.prepare import MIN_REFERENCES\n"
        "import ai_influencer.usecases.report\n"
        "assert callable(usecases.prepare) and callable(usecases.report), (usecases.prepare, usecases.report)\n"
        "assert usecases.MIN_REFERENCES == MIN_REFERENCES and callable(usecases.qc)\n"
        "assert set(usecases.__all__) == set(usecases._EXPORTS) and set(usecases.__all__) <= set(dir(usecases))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr


# ---- `influencer run` fails in seconds, in one line -------------------------------------------------


def _workspace(tmp_path: Path, *photos: str) -> Path:
    raw = tmp_path / "data" / "input_raw"
    raw.mkdir(parents=True)
    for name in photos:
        shutil.copy(face(name), raw / name)
    return raw


def _prefect_started(tmp_path: Path) -> bool:
    """A Prefect database exists: the temporary server's (PREFECT_HOME) or the workspace's kept server's."""
    return (tmp_path / "prefect-home" / "prefect.db").exists() or (tmp_path / "data" / ".prefect").exists()


def _run_env(cli_env: dict[str, str], tmp_path: Path, **changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in cli_env.items() if not k.startswith("PREFECT_API_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # a new user's: no stored key, no database yet
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"OPENROUTER_API_KEY": "sk-or-wrong"}, ["refused", "401", "influencer set-key"]),
        # port 9 (discard) on 127.0.0.1: nothing listens, the connection is refused at once
        ({"OPENROUTER_BASE_URL": "http://127.0.0.1:9/api/v1"}, ["cannot reach", "127.0.0.1:9", "OPENROUTER_BASE_URL"]),
        ({"OPENROUTER_API_KEY": None}, ["no OpenRouter key found", "OPENROUTER_API_KEY", "influencer set-key"]),
    ],
    ids=["wrong-key", "unreachable-base-url", "no-key"],
)
def test_run_refuses_a_bad_key_or_base_url_in_one_line_before_prefect_starts(
    cli_env: dict[str, str], tmp_path: Path, stub: StubOpenRouter, change: dict[str, str | None], says: list[str]
) -> None:
    """Measured before: a wrong key took 25.5 s and two Prefect tracebacks, an unreachable base URL 51.6 s."""
    _workspace(tmp_path, "obama.jpg", "obama3.jpg")
    res = run(["run", "--per-scene", "1"], _run_env(cli_env, tmp_path, **change), tmp_path)
    assert res.returncode == 1, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert lines[0].startswith("error: OpenRouter key:") and all(s in lines[0] for s in says), lines[0]
    assert not _prefect_started(tmp_path), "Prefect was not started"
    assert not [r for r in stub.requests if r.path.endswith("/chat/completions")], "nothing was paid for"


def test_run_refuses_an_unknown_model_before_prefect_starts(
    cli_env: dict[str, str], tmp_path: Path, stub: StubOpenRouter
) -> None:
    _workspace(tmp_path, "obama.jpg", "obama3.jpg")
    res = run(["run", "--model", "google/gemini-9-image"], _run_env(cli_env, tmp_path), tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "image model 'google/gemini-9-image' is not in OpenRouter's model list" in res.stderr
    assert "influencer models -m image" in res.stderr
    assert not _prefect_started(tmp_path)


def test_run_refuses_an_image_option_the_endpoint_lacks_before_prefect_starts(
    cli_env: dict[str, str], tmp_path: Path, stub: StubOpenRouter
) -> None:
    """`--n 4` on a single-image endpoint: one line from the Image API's listings, before Prefect or the
    plan's paid LLM call."""
    _workspace(tmp_path, "obama.jpg", "obama3.jpg")
    res = run(["run", "--n", "4", "--model", "google/gemini-2.5-flash-image"], _run_env(cli_env, tmp_path), tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: image options: --n 4: google/gemini-2.5-flash-image accepts n = 1"), line
    assert not _prefect_started(tmp_path), "Prefect was not started"
    assert not stub.paid_requests, "nothing was paid for"


def test_run_names_a_photo_that_is_not_an_image_and_one_with_several_faces(
    cli_env: dict[str, str], tmp_path: Path, stub: StubOpenRouter
) -> None:
    """Photos were counted by extension: a text file named .jpg was "ok"; a group photo was used silently."""
    raw = _workspace(tmp_path, "obama.jpg", "t1.jpg")
    (raw / "notes.jpg").write_text("not an image")
    res = run(["run"], _run_env(cli_env, tmp_path), tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: reference photos: 1 of 3 usable"), line
    assert "notes.jpg" in line and "t1.jpg: 6 faces found" in line and "--allow-multi-face" in line
    assert "put at least 2 photos" in line
    assert not _prefect_started(tmp_path)


def test_a_failed_run_says_one_line_and_keeps_its_log_with_retries_and_traceback(
    cli_env: dict[str, str], tmp_path: Path, stub: StubOpenRouter
) -> None:
    """A stage failing mid-run (the planning call answers 503, then 402): retries are announced, the console
    gets one error line naming the run's log (the embedded server and its UI are gone by then), and the
    log keeps the traceback. The embedded server sends no telemetry (an ERROR line on offline machines)."""
    _workspace(tmp_path, "obama.jpg", "obama3.jpg")
    stub.inject("503", "402", path="/chat/completions")
    env = _run_env(cli_env, tmp_path, PREFECT_SERVER_ANALYTICS_ENABLED=None, PREFECT_LOGGING_LEVEL="INFO")
    skips = [f"--skip={s}" for s in ("generate", "qc", "augment", "train", "evaluate")]
    res = run(["run", *skips], env, tmp_path)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-5000:]
    assert re.search(r"retrying in \d+ s \(attempt 2 of 3\): 503", res.stderr), res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "402" in errors[0], res.stderr[-3000:]
    log = Path(errors[0].rsplit("details: ", 1)[1].rstrip(")"))
    assert log.is_file() and log.parent == tmp_path / "data" / "logs", errors[0]
    text = log.read_text()
    assert "Traceback" in text and "InsufficientCreditsError" in text and "retrying in" in text
    assert TEST_KEY not in text
    assert "Failed to send telemetry" not in res.stderr + res.stdout


def test_prefect_analytics_are_off_unless_the_user_turned_them_on(tmp_path: Path) -> None:
    """The embedded server phoned home at every start; a user's own setting (environment, profile) wins."""
    code = (
        "from interfaces.cli.base import prefect_defaults; prefect_defaults()\n"
        "from prefect.settings import get_current_settings; print(get_current_settings().server.analytics_enabled)"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base["PREFECT_HOME"] = str(tmp_path)

    def analytics(**env: str) -> str:
        res = subprocess.run(
            [sys.executable, "-c", code], env={**base, **env}, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    assert analytics() == "False"
    assert analytics(PREFECT_SERVER_ANALYTICS_ENABLED="true") == "True"
    (tmp_path / "profiles.toml").write_text(
        'active = "mine"\n[profiles.mine]\nPREFECT_SERVER_ANALYTICS_ENABLED = true\n'
    )
    assert analytics() == "True"


def test_retries_are_announced(caplog: pytest.LogCaptureFixture) -> None:
    """An unreachable base URL was retried for ~34 s without a word."""
    import logging

    from ai_influencer.openrouter import OpenRouterClient, UpstreamError

    caplog.set_level(logging.WARNING, logger="ai_influencer.openrouter")
    client = OpenRouterClient(TEST_KEY, base_url="http://127.0.0.1:9/api/v1", backoff_initial=0.01, max_retries=2)
    with client as c, pytest.raises(UpstreamError):
        c.key_info()
    said = [r.getMessage() for r in caplog.records if r.name == "ai_influencer.openrouter"]
    assert len(said) == 2, said  # two retries, none after the last attempt
    assert all(re.match(r"retrying in \d+ s \(attempt [23] of 3\): network error .*[Cc]onnect", m) for m in said), said


# ---- prepare, doctor, init ------------------------------------------------------------------------------


def test_prepare_refuses_a_photo_with_several_faces_unless_allowed(cli_env: dict[str, str], tmp_path: Path) -> None:
    """The largest face of a group photo was used silently (not always the persona's)."""
    _workspace(tmp_path, "obama.jpg", "obama3.jpg", "t1.jpg")
    cleaned = tmp_path / "data" / "cleaned"
    res = run(["prepare", "--allow-multi-face"], cli_env, tmp_path)
    assert res.returncode == 0 and "prepared 3/3" in res.stdout, res.stderr
    assert (cleaned / "t1.png").is_file()
    res = run(["prepare"], cli_env, tmp_path)
    assert res.returncode == 0 and "prepared 2/3" in res.stdout, res.stderr
    assert "skipped t1.jpg: 6 faces found" in res.stderr and "--allow-multi-face" in res.stderr
    assert sorted(p.name for p in cleaned.glob("*.png")) == ["obama.png", "obama3.png"], (
        "the group photo's crop is gone"
    )


def test_doctor_decodes_each_photo_counts_faces_and_says_what_run_will_do(
    cli_env: dict[str, str], tmp_path: Path, stub: StubOpenRouter
) -> None:
    raw = _workspace(tmp_path, "obama.jpg", "obama3.jpg", "t1.jpg")
    (raw / "notes.jpg").write_text("not an image")
    res = run(["doctor", "--check"], _run_env(cli_env, tmp_path), tmp_path)
    line = next(line for line in res.stdout.splitlines() if "reference photos:" in line)
    assert line.startswith("warn") and "2 of 4 usable" in line, line
    assert "uses obama.jpg, obama3.jpg and skips" in line and "notes.jpg" in line and "t1.jpg: 6 faces" in line
    models = next(line for line in res.stdout.splitlines() if "OpenRouter models:" in line)
    assert models.startswith("ok") and "google/gemini-2.5-flash-image" in models, models


def test_init_takes_the_persona_and_doctor_warns_while_it_is_the_template(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Captions said `ohwx woman` for a male persona: init kept the template's "Aria", woman."""
    env = {k: v for k, v in cli_env.items() if not k.startswith("INFLUENCER_") or k.endswith("MAX_RETRIES")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    res = run(["init", "plain"], env, tmp_path)
    assert res.returncode == 0 and "persona 'Aria'" in res.stdout and "--name" in res.stdout, res.stdout
    doctor = run(["doctor"], env, tmp_path / "plain")
    persona = next(line for line in doctor.stdout.splitlines() if "persona:" in line)
    assert persona.startswith("warn") and "template" in persona and "'ohwx woman'" in persona, persona

    args = ["init", "marco", "--name", "Marco", "--class-word", "man", "--description", "35, short dark hair, beard"]
    res = run(args, env, tmp_path)
    assert res.returncode == 0 and "captions read 'ohwx man'" in res.stdout, res.stdout
    from ai_influencer.prompt_bank import load_prompt_bank

    who = load_prompt_bank(tmp_path / "marco" / "prompt_bank" / "default.yaml").persona
    assert (who.name, who.class_word, who.description) == ("Marco", "man", "35, short dark hair, beard")
    doctor = run(["doctor"], env, tmp_path / "marco")
    persona = next(line for line in doctor.stdout.splitlines() if "persona:" in line)
    assert persona.startswith("ok") and "'ohwx man'" in persona, persona


# ---- messages and labels ------------------------------------------------------------------------------

README_SECTION = re.compile(r"README(?:\.md)?'?s?\s+(?:section\s+)?['\"‘“]([^'\"’”]+)['\"’”]")
DOC_FILE = re.compile(r"\b(docs/[\w./-]+\.md)\b")


def test_every_readme_section_and_doc_named_in_the_code_exists() -> None:
    """Messages pointed at README sections that do not exist ('Training', 'Training a LoRA')."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    headings = {line.lstrip("#").strip() for line in readme.splitlines() if line.startswith("#")}
    sources = [
        p
        for folder in ("ai_influencer", "flows", "tasks", "shared_limits", "blocks", "interfaces", "scripts", "docker")
        for p in (REPO / folder).rglob("*")
        if p.suffix in (".py", ".js", ".html", ".sh", ".yaml", ".yml") and ".venv" not in p.parts
    ]
    assert len(sources) > 50
    missing = []
    named = 0
    for path in sources:
        text = path.read_text(encoding="utf-8", errors="replace")
        for section in README_SECTION.findall(text):
            named += 1
            if section not in headings:
                missing.append(f"{path.relative_to(REPO)}: README section {section!r}")
        for doc in DOC_FILE.findall(text):
            named += 1
            if not (REPO / doc).is_file():
                missing.append(f"{path.relative_to(REPO)}: {doc}")
    assert named > 5 and not missing, missing
    # the scan finds what it is meant to find
    assert README_SECTION.findall("see README 'Training a LoRA'") == ["Training a LoRA"]


def test_a_size_out_of_range_names_the_side(cli_env: dict[str, str], tmp_path: Path) -> None:
    res = run(["generate", "--size", "99x0"], cli_env, tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "size 99x0: height 0 is out of range" in res.stderr, res.stderr


def test_limit_says_what_is_done_and_what_is_left(
    cli_env: dict[str, str], tmp_path: Path, stub: StubOpenRouter
) -> None:
    """On a fresh folder `--limit 2` said "6 requested, 4 already done, 2 to generate"."""
    out = tmp_path / "synth"
    res = run(["generate", "--per_scene", "1", "--limit", "2", "--out", str(out)], cli_env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert (
        "6 images planned, 0 already done, 2 to generate in 2 request(s) of up to 1, 4 left for a later run (--limit)"
        in res.stderr
    ), res.stderr
    res = run(["generate", "--per_scene", "1", "--limit", "3", "--out", str(out)], cli_env, tmp_path)
    assert (
        "6 images planned, 2 already done, 3 to generate in 3 request(s) of up to 1, 1 left for a later run (--limit)"
        in res.stderr
    ), res.stderr


def test_models_uses_the_base_url_stored_with_the_key(
    cli_env: dict[str, str], tmp_path: Path, stub: StubOpenRouter
) -> None:
    """`set-key --base-url` stores the API root with the key; `influencer models` asked the environment's.

    The key goes to the workspace's kept Prefect server, which `set-key` starts and `models` then finds."""
    env = _run_env(cli_env, tmp_path, OPENROUTER_BASE_URL="http://127.0.0.1:9/api/v1")
    saved = subprocess.run(
        [str(Path(sys.executable).with_name("influencer")), "set-key", "--base-url", stub.base_url],
        input=TEST_KEY + "\n", env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert saved.returncode == 0, (saved.stdout + saved.stderr)[-3000:]
    assert (tmp_path / "data" / ".prefect" / "prefect.db").is_file()  # the workspace's database holds the block
    res = run(["models", "--output-modality", "image", "--json"], env, tmp_path)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert '"google/gemini-2.5-flash-image"' in res.stdout, res.stdout[-3000:]


def test_contact_sheet_tiles_show_whole_file_names_and_numbers() -> None:
    """Labels were cut at 28 characters (mid-number) and tiles did not name their file."""
    from ai_influencer.dataset.contact_sheet import FONT_PX, Tile, _font, tile_lines

    font = _font(FONT_PX)
    name = "3f9a2c61b0d94e7a8c1f2e3d4c5b6a79.png"
    label = (
        "id 0.83 [0.81/-0.05] sh 112\ncloser to another person in the batch (0.41 vs 0.523, nearest obama3.png) "
        "and then a long explanation that cannot fit under one small tile at all 12345.678"
    )
    lines = tile_lines(Tile(Path(name), label, ok=False), font, 156, max_lines=4)
    assert all(font.getlength(line) <= 156 for line in lines), lines
    name_lines = len(lines) - 4
    assert "".join(lines[:name_lines]) == name, lines  # the whole file name, wrapped
    shown = " ".join(lines[name_lines:])
    assert shown.endswith("…") and "12345" not in shown  # shortened by whole words
    for token in re.findall(r"-?\d+(?:\.\d+)?", shown):
        assert token in label, f"{token} is a cut number: {lines}"


def test_qc_tile_label_rounds_reference_scores_instead_of_cutting_them() -> None:
    from ai_influencer.qc.report import QCRow, tile_label

    row = QCRow(file="a.png", faces=1, score=0.41, sharpness=120.0, duplicate_of="", verdict="rejected",
                reason="low identity", ref_scores="-0.051 0.412")  # fmt: skip
    assert tile_label(row).splitlines()[0] == "id 0.41 [-0.05/0.41] sh 120"
