"""Operating the installation: init, doctor, the Prefect side (blocks, key, stack, trigger), hub and GUI."""

from __future__ import annotations

import json
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated

import typer

from ai_influencer.diagnostics import Check
from interfaces.cli.base import EXIT_RUN_FAILED, CliError, app, friendly_errors, out, settings, workspace

PANEL = "Setup and operations"

REPO = Path(__file__).resolve().parents[2]  # the checkout: docker/compose.yaml
blocks_app = typer.Typer(help="Prefect blocks (OpenRouter credentials).", no_args_is_help=True)
app.add_typer(blocks_app, name="blocks", rich_help_panel=PANEL)
stack_app = typer.Typer(help="Prefect server objects: work pools, limits, blocks.", no_args_is_help=True)
app.add_typer(stack_app, name="stack", rich_help_panel=PANEL)
server_app = typer.Typer(
    help="The workspace's local Prefect server (data/.prefect/), kept between runs when no PREFECT_API_URL is set.",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server", rich_help_panel=PANEL)


@app.command(rich_help_panel=PANEL)
def init(
    root: Annotated[Path, typer.Argument(help="Folder of the workspace (default: here).")] = Path("."),
    name: Annotated[str | None, typer.Option(help="The persona's name (asked when omitted in a terminal).")] = None,
    class_word: Annotated[
        str | None,
        typer.Option(help="The persona's class word, as in captions 'ohwx <class word>': woman, man, person..."),
    ] = None,
    description: Annotated[
        str | None, typer.Option(help="Identity traits kept in every prompt (age, hair, eyes, ...).")
    ] = None,
) -> None:
    """Scaffold a workspace: data/ and models/ folders, a prompt bank for your persona, a commented .env."""
    from ai_influencer.dataset.workspace import Workspace, scaffold
    from ai_influencer.diagnostics import template_persona
    from ai_influencer.prompt_bank import load_prompt_bank

    with friendly_errors():
        s = settings()
        root = root.resolve()
        ws = Workspace(root / s.data_root, root / s.models_root)  # relative settings are under the workspace
        bank = root / s.prompt_bank
        persona = {"name": name, "class_word": class_word, "description": description}
        if not bank.exists() and sys.stdin.isatty() and name is None:
            template = template_persona()
            persona["name"] = typer.prompt("Persona's name", default=template.name)
            persona["class_word"] = class_word or typer.prompt(
                "Class word (captions read 'ohwx <class word>')", default=template.class_word
            )
            persona["description"] = description or typer.prompt(
                "Identity traits (age, hair, eyes...)", default=template.description
            )
        given = {k: v for k, v in persona.items() if v is not None}
        created = scaffold(ws, bank, root / ".env", given)
        for path in created:
            out.print(f"created {path}")
        who = load_prompt_bank(bank).persona
        if bank not in created and given:
            out.print(f"{bank} already exists: persona left as it is ({who.name!r}); edit it there")
        template = template_persona()
        note = ""
        if bank in created and (who.name, who.class_word) == (template.name, template.class_word):
            note = " (the template's: pass --name/--class-word/--description, or edit the bank)"
        elif bank in created and who.description == template.description:
            note = f" (the description is the template's: edit persona.description in {bank})"
        out.print(f"persona {who.name!r}: captions read '{who.trigger_token} {who.class_word}'{note}")
        out.print(
            f"workspace ready in {root}: put at least 2 photos of the persona in {ws.input_raw}/, "
            "set OPENROUTER_API_KEY (or `influencer set-key`), then `influencer doctor` and `influencer run`"
        )


def _openrouter_checks() -> list[Check]:
    """The key where `run` finds it (block, then environment), against its base URL, and the models
    `run` calls: the same checks `run` makes before it starts."""
    from ai_influencer import diagnostics as d
    from blocks.openrouter import resolve_settings

    resolved, source = resolve_settings(settings())
    return [
        d.check_openrouter_key(resolved, source),
        d.check_openrouter_models(resolved, {"text": resolved.text_model, "image": resolved.image_model}),
    ]


def _prefect_check() -> Check:
    import httpx
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        local = (
            "its local server (data/.prefect/, kept between runs)"
            if settings().prefect_local_server
            else ("a temporary server")
        )
        return Check("Prefect", "ok", f"no PREFECT_API_URL: `influencer run` and `influencer hub` start {local}")
    try:
        from flows.api import api_client

        with api_client(url) as c:
            c.get("/health").raise_for_status()
    except (httpx.HTTPError, ValueError) as exc:
        return Check("Prefect", "fail", f"{url}: {exc}", "start it (`prefect server start`) or fix PREFECT_API_URL")
    return Check("Prefect", "ok", f"{url} answers")


@app.command(rich_help_panel=PANEL)
def doctor(
    fix: Annotated[
        bool, typer.Option("--fix/--check", help="Move damaged images aside (default) or only list them.")
    ] = True,
) -> None:
    """Check the installation and the workspace; each line ok, or what to do. Exit 1 if something fails.

    The reference photos are decoded and their faces counted (what `run` will use or skip); the key, base
    URL and models are checked as `run` checks them. Images that do not decode are moved to .quarantine/
    so the next run redoes them.
    """
    from ai_influencer import diagnostics as d

    with friendly_errors():
        s, ws = settings(), workspace()
        checks = [
            *d.check_workspace(ws), d.check_reference_photos(s, ws.input_raw),
            *d.check_prompt_bank_and_persona(Path(s.prompt_bank)), *_openrouter_checks(), _prefect_check(),
            *d.check_models(s, ws), *d.check_compute(s), d.check_disk(ws), d.check_images(ws, fix),
        ]  # fmt: skip
        style = {"ok": "green", "warn": "yellow", "fail": "bold red"}
        for c in checks:
            fix_hint = f" -> {c.fix}" if c.fix and c.status != "ok" else ""
            out.print(f"[{style[c.status]}]{c.status:4}[/] {c.name}: {c.detail}{fix_hint}", highlight=False)
        if any(c.status == "fail" for c in checks):
            raise typer.Exit(code=1)


def _prefect_for_command() -> AbstractContextManager[object]:
    """The workspace's kept Prefect server for a command that stores something in Prefect (the default install;
    a configured PREFECT_API_URL as it is): what it stores is what `influencer run` and the hub find."""
    from interfaces import local_server

    try:
        return local_server.for_command(workspace().data_root, settings().prefect_local_server)
    except local_server.LocalServerError as exc:
        raise CliError(str(exc)) from None


@blocks_app.command("register")
def blocks_register() -> None:
    """Register the OpenRouter Credentials block type on the Prefect server."""
    with friendly_errors():
        from blocks.openrouter import register_blocks

        with _prefect_for_command():
            register_blocks()
        out.print("registered block type 'OpenRouter Credentials' (slug openrouter-credentials)")


@app.command("set-key", rich_help_panel=PANEL)
def set_key(
    block: Annotated[str, typer.Option(help="Block name.")] = "openrouter",
    base_url: Annotated[str | None, typer.Option(help="API root stored with the key.")] = None,
) -> None:
    """Store the OpenRouter key in a Prefect secret block. Reads it from a hidden prompt or stdin, never argv."""
    import getpass

    with friendly_errors():
        key = getpass.getpass("OpenRouter API key: ") if sys.stdin.isatty() else sys.stdin.readline()
        key = key.strip()
        if not key:
            raise CliError("no key given on stdin/prompt")
        from blocks.openrouter import register_blocks, save_key

        with _prefect_for_command():
            register_blocks()
            save_key(key, name=block, base_url=base_url)
        out.print(f"saved OpenRouter key to block 'openrouter-credentials/{block}' (…{key[-4:]})")


@stack_app.command("init")
def stack_init(
    rate_per_s: Annotated[float | None, typer.Option(help="Image requests per second.")] = None,
    max_inflight: Annotated[int | None, typer.Option(help="Image requests in flight.")] = None,
    docker_pool: Annotated[str, typer.Option(help="Docker work pool name.")] = "gpu-docker",
    process_pool: Annotated[str, typer.Option(help="Process work pool name.")] = "local-process",
) -> None:
    """Create what is missing: work pools, rate/concurrency limits, block types. What exists is kept as is."""
    import subprocess

    with friendly_errors():
        s = settings()
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        from ai_influencer.pacing import rate_limit_capacity
        from blocks.openrouter import register_blocks
        from shared_limits.limits import ensure_limit

        with _prefect_for_command():
            register_blocks()
            per_s = rate_per_s or s.image_rate_per_s
            rate = ensure_limit(s.image_rate_limit_name, rate_limit_capacity(per_s), per_s)
            inflight = ensure_limit(s.image_inflight_limit_name, max_inflight or s.image_max_inflight)
            out.print(
                f"limit {s.image_rate_limit_name}: {rate[0]} ({rate[2]:g}/s); "
                f"{s.image_inflight_limit_name}: {inflight[0]} ({inflight[1]} in flight)"
            )
            prefect = str(Path(sys.executable).with_name("prefect"))
            for name, kind in ((docker_pool, "docker"), (process_pool, "process")):
                with get_client(sync_client=True) as client:
                    try:
                        pool = client.read_work_pool(name)
                    except ObjectNotFound:
                        pool = None
                if pool is not None:
                    # An operator may have tuned its job template, concurrency or paused it: never reset that.
                    note = f" (type differs: expected {kind})" if pool.type != kind else ""
                    paused = ", paused" if pool.is_paused else ""
                    out.print(f"work pool {name} ({pool.type}{paused}): exists, kept as is{note}")
                    continue
                res = subprocess.run(
                    [prefect, "work-pool", "create", name, "--type", kind],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if res.returncode != 0:
                    raise CliError(
                        f"creating work pool {name}: {(res.stderr.strip() or res.stdout.strip()).splitlines()[-1]}"
                    )
                out.print(f"work pool {name} ({kind}): created")


def compose_command() -> list[str]:
    """``docker compose`` (v2 plugin) or the older ``docker-compose``; the project's compose file."""
    import shutil
    import subprocess

    compose_file = str(REPO / "docker" / "compose.yaml")
    docker = shutil.which("docker")
    project = ["-p", "ai-influencer", "-f", compose_file]
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose", *project]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy, *project]
    raise CliError("neither `docker compose` nor `docker-compose` is installed (see docs/gpu-server.md)")


def _compose(args: list[str]) -> None:
    import subprocess

    cmd = compose_command() + args
    out.print("$ " + " ".join(cmd))
    code = subprocess.run(cmd, check=False).returncode
    if code != 0:
        raise CliError(f"docker compose exited with {code}")


@stack_app.command("up")
def stack_up(
    recreate: Annotated[bool, typer.Option("--recreate", help="Recreate containers (and rebuild the image).")] = False,
    build: Annotated[bool, typer.Option(help="Build the image first.")] = True,
) -> None:
    """Start the Docker stack: Prefect server on PostgreSQL, the gpu-docker worker, the Control Hub."""
    with friendly_errors():
        args = ["up", "-d"]
        if build:
            args.append("--build")
        if recreate:
            args.append("--force-recreate")
        _compose(args)


@stack_app.command("down")
def stack_down(
    remove_volumes: Annotated[
        bool, typer.Option("--remove-volumes", help="Also delete the data, models and database volumes.")
    ] = False,
) -> None:
    """Stop the Docker stack (volumes are kept unless --remove-volumes)."""
    with friendly_errors():
        _compose(["down", *(["--volumes"] if remove_volumes else [])])


@app.command(rich_help_panel=PANEL)
def trigger(
    deployment: Annotated[str, typer.Argument(help="flow/deployment, e.g. hybrid/hybrid-local")] = "hybrid/hybrid",
    params_json: Annotated[str | None, typer.Option("--params", help="Flow parameters as JSON.")] = None,
    api_url: Annotated[str | None, typer.Option(help="Prefect API URL (default PREFECT_API_URL).")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish and exit non-zero if it failed.")] = False,
) -> None:
    """Start a deployment through the Prefect REST API (basic auth from PREFECT_API_AUTH_STRING)."""
    from flows.api import api_client, trigger_deployment, wait_for_run

    with friendly_errors():
        try:
            parameters = json.loads(params_json) if params_json else {}
        except json.JSONDecodeError as exc:
            raise CliError(f"--params is not valid JSON: {exc}") from None
        try:
            with api_client(api_url) as client:
                run = trigger_deployment(client, deployment, parameters)
                out.print(f"flow run {run['id']} ({run['name']}) created for {deployment}")
                if wait:
                    final = wait_for_run(client, run["id"])
                    out.print(f"flow run {run['name']}: {final['state_type']}")
                    if final["state_type"] != "COMPLETED":
                        raise typer.Exit(code=EXIT_RUN_FAILED)
        except (PermissionError, LookupError) as exc:
            raise CliError(str(exc)) from None


@app.command(rich_help_panel=PANEL)
def hub(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
) -> None:
    """Start the Control Hub (FastAPI + pages) with uvicorn."""
    import secrets

    import uvicorn
    from pydantic import SecretStr

    with friendly_errors():
        s = settings()
        if s.hub_token is None:
            # Every /api and /files call needs a token; without a configured one, make one for this start.
            s = s.model_copy(update={"hub_token": SecretStr(secrets.token_urlsafe(18))})
            out.print(f"hub token for this run (set INFLUENCER_HUB_TOKEN to fix one): {s.hub_token.get_secret_value()}")
        from interfaces import local_server
        from interfaces.hub.app import create_app
        from interfaces.hub.guard import check_token

        h, p = host or s.hub_host, port or s.hub_port
        check_token(s, h)  # a token the hub must refuse is refused before any server starts
        api_url, runner = None, None
        local = s.prefect_local_server and not local_server.configured_api_url()
        if local:  # the default install: the workspace's kept server
            ws = workspace()
            server, started = local_server.ensure(ws.data_root)
            api_url = server.url
            out.print(
                f"Prefect server: {server.ui} ({'started' if started else 'running'}; runs started from the hub "
                f"run here, as deployment hybrid/{local_server.LOCAL_DEPLOYMENT})",
                highlight=False,
            )
        hub_app = create_app(s, prefect_api_url=api_url, bind=h)
        if local:
            runner = local_server.start_runner(api_url, local_server.folder(ws.data_root) / "runner.log")
        out.print(f"Control Hub on http://{h}:{p}/  (API docs: /docs; review: /review)")
        try:
            uvicorn.run(hub_app, host=h, port=p, log_level="info")
        finally:
            if runner is not None:
                runner.terminate()
                runner.wait(30)


@app.command(rich_help_panel=PANEL)
def gui() -> None:
    """Open the desktop GUI (Tk): folders, key, models, QC thresholds, a button per stage, live logs."""
    with friendly_errors():
        try:
            from interfaces.desktop.app import main as gui_main
        except ImportError as exc:  # python built without Tk
            raise CliError(f"Tk is not available in this Python ({exc}); install python3-tk") from None
        gui_main(settings())


def _configured_note() -> str | None:
    from interfaces import local_server

    url = local_server.configured_api_url()
    return f"PREFECT_API_URL is set ({url}): runs and the hub use that server, not the local one" if url else None


@server_app.command("status")
def server_status() -> None:
    """Whether the local server runs: its URL (the Prefect UI), pid, database. Exit 1 when it does not run."""
    from interfaces import local_server

    with friendly_errors():
        if note := _configured_note():
            out.print(note, highlight=False)
        ws = workspace()
        found = local_server.running(ws.data_root)
        if found is None:
            stale = local_server.read_state(ws.data_root)
            out.print(
                "local Prefect server: not running"
                + (f" (last started {stale.started_at}, pid {stale.pid})" if stale else "")
                + "; `influencer run`, `influencer hub` or `influencer server start` start it",
                highlight=False,
            )
            raise typer.Exit(code=1)
        out.print(
            f"local Prefect server: running at {found.ui} (API {found.url}), pid {found.pid}, "
            f"since {found.started_at}; "
            f"database {local_server.database_url(ws.data_root)}",
            highlight=False,
        )


@server_app.command("start")
def server_start() -> None:
    """Start the local server now (detached; `influencer run` and `influencer hub` would start it anyway)."""
    import time

    from interfaces import local_server

    with friendly_errors():
        ws = workspace()
        began = time.monotonic()
        try:
            found, started = local_server.ensure(ws.data_root)
        except local_server.LocalServerError as exc:
            raise CliError(str(exc)) from None
        how = f"started in {time.monotonic() - began:.1f} s" if started else "already running"
        out.print(f"local Prefect server: {found.ui} ({how}, pid {found.pid})", highlight=False)
        if note := _configured_note():
            out.print(note, highlight=False)


@server_app.command("stop")
def server_stop() -> None:
    """Stop the local server (runs recorded in it stay in data/.prefect/prefect.db)."""
    from interfaces import local_server

    with friendly_errors():
        stopped = local_server.stop(workspace().data_root)
        out.print(
            f"local Prefect server stopped (pid {stopped.pid})" if stopped else "local Prefect server: not running",
            highlight=False,
        )
