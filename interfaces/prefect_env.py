"""Whether the user set a Prefect setting, read without importing Prefect (a second on a small machine).

Shared by the CLI's Prefect defaults (``interfaces.cli.base.prefect_defaults``) and the kept local server
(``interfaces.local_server``), which leaves a configured ``PREFECT_API_URL`` alone.
"""

from __future__ import annotations

import os
from pathlib import Path


def _toml(path: Path) -> dict:
    import tomllib

    try:
        return tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def set_by_user(env_name: str, toml_keys: tuple[str, ...]) -> bool:
    """Whether the user set this Prefect setting: environment, ``.env``, ``prefect.toml``, ``pyproject.toml``
    ``[tool.prefect]`` (all in the current folder) or the active profile. Read without importing Prefect
    (a second), the way Prefect 3 reads them."""
    if env_name in os.environ:
        return True
    cwd = Path.cwd()
    try:
        dotenv = (cwd / ".env").read_text(encoding="utf-8") if (cwd / ".env").is_file() else ""
    except OSError:
        dotenv = ""
    if any(line.strip().startswith(f"{env_name}=") for line in dotenv.splitlines()):
        return True
    for table in (_toml(cwd / "prefect.toml"), _toml(cwd / "pyproject.toml").get("tool", {}).get("prefect", {})):
        for key in toml_keys[:-1]:
            table = table.get(key, {}) if isinstance(table, dict) else {}
        if isinstance(table, dict) and toml_keys[-1] in table:
            return True
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    profiles = _toml(Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser())
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    return env_name in profiles.get("profiles", {}).get(active, {})
