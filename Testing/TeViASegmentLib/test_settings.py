"""Module settings: prompt history, consent per URL, token only on request, JSON store."""

from __future__ import annotations

import json

from TeViASegmentLib import settings


def test_prompt_history_is_newest_first_unique_and_bounded(tmp_path):
    store = settings.ModuleSettings(settings.JsonFileSettings(tmp_path / "s.json"))
    store.add_prompts(["a", "b"])
    store.add_prompts(["c", "a", "  "])
    assert store.prompt_history() == ["c", "a", "b"]
    store.add_prompts([f"p{i}" for i in range(30)])
    assert len(store.prompt_history()) == settings.PROMPT_HISTORY_SIZE
    assert store.prompt_history()[0] == "p0"


def test_values_survive_a_new_store_and_the_file_is_valid_json(tmp_path):
    path = tmp_path / "sub" / "s.json"
    settings.ModuleSettings(settings.JsonFileSettings(path)).set("device", "cuda")
    assert settings.ModuleSettings(settings.JsonFileSettings(path)).get("device") == "cuda"
    assert json.loads(path.read_text()) == {"TeViA/device": '"cuda"'}
    assert not list(path.parent.glob(".settings-*")), "no temporary files left"


def test_token_is_stored_only_when_asked_and_forgotten_after(tmp_path):
    store = settings.ModuleSettings(settings.JsonFileSettings(tmp_path / "s.json"))
    store.save_remote("https://gpu:8765", "t0ken", remember_token=False)
    assert store.remote_token() is None and "t0ken" not in (tmp_path / "s.json").read_text()
    store.save_remote("https://gpu:8765", "t0ken", remember_token=True)
    assert store.remote_token() == "t0ken"
    store.save_remote("https://gpu:8765", "t0ken", remember_token=False)
    assert store.remote_token() is None and "t0ken" not in (tmp_path / "s.json").read_text()


def test_consent_is_per_url(tmp_path):
    store = settings.ModuleSettings(settings.JsonFileSettings(tmp_path / "s.json"))
    assert not store.has_consent("https://gpu:8765")
    store.grant_consent("https://gpu:8765/")
    assert store.has_consent("https://gpu:8765") and not store.has_consent("https://other:8765")
