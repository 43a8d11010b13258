"""Persistent settings of the module: prompt history, model, device, remote server and consent.

Values are stored as JSON text under "TeViA/<key>" in a QSettings-like store: Slicer's
`slicer.app.userSettings()` inside Slicer, or a JSON file (`JsonFileSettings`) elsewhere.
The remote token is stored only when the user asks for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

__all__ = ["SettingsStore", "JsonFileSettings", "ModuleSettings", "PROMPT_HISTORY_SIZE"]

PROMPT_HISTORY_SIZE = 20
_PREFIX = "TeViA/"


class SettingsStore(Protocol):
    """The part of the QSettings API used here."""

    def value(self, key: str, default: Any = None) -> Any: ...

    def setValue(self, key: str, value: Any) -> None: ...  # noqa: N802 (QSettings API)

    def remove(self, key: str) -> None: ...


class JsonFileSettings:
    """A QSettings-like store in a JSON file (written atomically)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        from tevia.files import atomic_write_text

        atomic_write_text(self.path, json.dumps(data, indent=1), private=True)

    def value(self, key: str, default: Any = None) -> Any:
        return self._read().get(key, default)

    def setValue(self, key: str, value: Any) -> None:  # noqa: N802 (QSettings API)
        data = self._read()
        data[key] = value
        self._write(data)

    def remove(self, key: str) -> None:
        data = self._read()
        if data.pop(key, None) is not None:
            self._write(data)


class ModuleSettings:
    """Typed access to the module's settings in a `SettingsStore`."""

    def __init__(self, store: SettingsStore) -> None:
        self.store = store

    def get(self, key: str, default: Any = None) -> Any:
        text = self.store.value(_PREFIX + key, None)
        if text in (None, ""):
            return default
        try:
            return json.loads(str(text))
        except json.JSONDecodeError:
            return default

    def set(self, key: str, value: Any) -> None:
        self.store.setValue(_PREFIX + key, json.dumps(value))

    def prompt_history(self) -> list[str]:
        """Recent prompts, newest first."""
        return [str(p) for p in self.get("promptHistory", [])]

    def add_prompts(self, prompts: list[str]) -> None:
        """Put prompts at the top of the history (no duplicates, at most PROMPT_HISTORY_SIZE)."""
        history = [p for p in prompts if p.strip()]
        history += [p for p in self.prompt_history() if p not in history]
        self.set("promptHistory", history[:PROMPT_HISTORY_SIZE])

    def has_consent(self, url: str) -> bool:
        """Whether the user agreed to send volumes to this server URL."""
        return url.rstrip("/") in self.get("remoteConsent", [])

    def grant_consent(self, url: str) -> None:
        consented = self.get("remoteConsent", [])
        if url.rstrip("/") not in consented:
            self.set("remoteConsent", [*consented, url.rstrip("/")])

    def remote_token(self) -> str | None:
        """The stored remote token (only stored when the user asked to remember it)."""
        return self.get("remoteToken", None)

    def save_remote(self, url: str, token: str | None, remember_token: bool) -> None:
        """Store the server URL, and the token only when `remember_token` (else forget it)."""
        self.set("remoteUrl", url)
        self.set("rememberToken", bool(remember_token))
        if remember_token and token:
            self.set("remoteToken", token)
        else:
            self.store.remove(_PREFIX + "remoteToken")
