"""The server choice panel (TeViASegmentLib.server_panel): the real Logic and its settings file,
a real TeViA server on 127.0.0.1 (tiny model) for Test connection, consent asked once per URL.
Only the Qt widgets are stand-ins: objects with the Python properties the panel sets and the
button's `clicked.connect`."""

from __future__ import annotations

import time
import types

import pytest
from slicer_fixtures import slicer_scene  # noqa: F401 (fixture)

from TeViASegmentLib import settings
from TeViASegmentLib.server_panel import ServerPanel

from server_helpers import TOKEN, module_server, segmenter  # noqa: E402,F401 (fixtures)


class _Clicked:
    """A button's `clicked` signal: records what is connected."""

    def __init__(self) -> None:
        self.slots: list = []

    def connect(self, slot) -> None:
        self.slots.append(slot)


@pytest.fixture
def setup(slicer_scene, tmp_path):
    """(panel, ui, events): the panel on stand-in widgets; events.answer is what confirm says."""
    import TeViASegment

    logic = TeViASegment.TeViASegmentLogic(settingsStore=settings.JsonFileSettings(tmp_path / "settings.json"))
    text = lambda: types.SimpleNamespace(text="")  # noqa: E731 (QLineEdit's `text` property)
    check = lambda: types.SimpleNamespace(checked=False)  # noqa: E731 (QCheckBox's `checked` property)
    ui = types.SimpleNamespace(remoteUrlEdit=text(), remoteTokenEdit=text(), useRemoteCheckBox=check(),
                               rememberTokenCheckBox=check(),
                               testConnectionButton=types.SimpleNamespace(enabled=True, clicked=_Clicked()))
    events = types.SimpleNamespace(questions=[], messages=[], calls=[], answer=False)

    def confirm(title: str, question: str) -> bool:
        events.questions.append((title, question))
        return events.answer

    panel = ServerPanel(logic, ui, confirm, events.messages.append, events.calls.append)
    yield panel, ui, events
    logic.shutdown()


def test_the_fields_show_the_saved_server_and_the_token_only_when_remembered(setup):
    panel, ui, _ = setup
    panel.logic.setRemoteServer("https://gpu.example.org/", "secret", rememberToken=True)
    panel.logic.settings.set("useRemote", True)
    panel.connect_widgets()
    assert (ui.remoteUrlEdit.text, ui.remoteTokenEdit.text) == ("https://gpu.example.org", "secret")
    assert ui.useRemoteCheckBox.checked and ui.rememberTokenCheckBox.checked
    assert ui.testConnectionButton.clicked.slots == [panel.test_connection]
    panel.logic.setRemoteServer("https://gpu.example.org", "secret", rememberToken=False)
    panel.connect_widgets()
    assert ui.remoteTokenEdit.text == "" and not ui.rememberTokenCheckBox.checked


def test_the_choice_goes_to_the_logic_and_is_remembered(setup):
    panel, ui, _ = setup
    ui.remoteUrlEdit.text, ui.remoteTokenEdit.text = " http://127.0.0.1:9/ ", "token"
    panel.apply_choice()
    assert panel.logic.remoteUrl is None and panel.logic.settings.get("useRemote") is False, "unchecked: local worker"
    ui.useRemoteCheckBox.checked = True
    panel.apply_choice()
    assert (panel.logic.remoteUrl, panel.logic.remoteToken) == ("http://127.0.0.1:9", "token")
    assert panel.logic.settings.get("useRemote") is True and panel.logic.settings.get("remoteUrl") == "http://127.0.0.1:9"


def test_consent_is_asked_once_per_server_and_a_no_sends_nothing(setup):
    panel, ui, events = setup
    panel.apply_choice()
    assert panel.consented() and events.questions == [], "the local worker needs no consent"
    ui.useRemoteCheckBox.checked, ui.remoteUrlEdit.text = True, "http://127.0.0.1:9"
    panel.apply_choice()
    assert not panel.consented() and panel.logic.remoteConsentNeeded()
    ((title, question),) = events.questions
    assert title == "Send volume to a remote server?" and "sent to http://127.0.0.1:9;" in question
    events.answer = True
    assert panel.consented() and not panel.logic.remoteConsentNeeded()
    assert panel.consented() and len(events.questions) == 2, "asked no more once granted"


def test_connection_test_runs_in_the_background_and_says_what_answered(setup, module_server):
    panel, ui, events = setup
    ui.remoteUrlEdit.text, ui.remoteTokenEdit.text = module_server.url, TOKEN
    panel.start_connection_test()
    assert not ui.testConnectionButton.enabled and events.messages == [f"Connecting to {module_server.url}..."]
    (call,) = events.calls
    start = time.monotonic()
    while call.poll(0.05):
        assert time.monotonic() - start < 30, "the connection test did not end"
    assert ui.testConnectionButton.enabled
    assert events.messages[-1].startswith("Connected: ") and events.messages[-1].endswith(" on cpu.")


def test_connection_test_without_a_url_starts_nothing(setup):
    panel, ui, events = setup
    with pytest.raises(ValueError, match="No remote server URL"):
        panel.start_connection_test()
    assert ui.testConnectionButton.enabled and events.calls == [] and events.messages == []
