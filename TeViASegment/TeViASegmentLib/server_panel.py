"""The module panel's server choice: the local worker or a remote TeViA server (URL, token,
"remember token", "use remote"), the user's consent before a volume is sent, Test connection.

The Widget builds the UI and hands this panel the widgets it needs; the panel fills them from the
user's settings, applies the choice to the Logic (`logic.setRemoteServer`), asks for consent
through `confirm` (the Widget's Yes / No dialog) and tests the connection in the background
(`logic.testRemoteConnectionAsync`, polled by the Widget's timer).

Qt is used only through `connect_widgets` and the error displays of `test_connection` and a
failed connection: the rest runs on any object with the widgets' Python properties, as the tests do.
"""

from __future__ import annotations

from collections.abc import Callable

import slicer.util

__all__ = ["ServerPanel"]


class ServerPanel:
    """Which server segments, and whether the user agreed to send it volumes.

    Args:
        logic: the module's `TeViASegmentLogic`.
        ui: the Widget's `ui` namespace: `remoteUrlEdit`, `remoteTokenEdit` (QLineEdit),
            `useRemoteCheckBox`, `rememberTokenCheckBox` (QCheckBox), `testConnectionButton`.
        confirm: asks the user a Yes / No question (title, text); True for Yes.
        on_message: called with each message for the user.
        start_call: called with a started `background.BackgroundCall` (the Widget polls it).
    """

    def __init__(self, logic, ui, confirm: Callable[[str, str], bool], on_message: Callable[[str], None],
                 start_call: Callable[[object], None]) -> None:
        self.logic = logic
        self.ui = ui
        self.confirm = confirm
        self.on_message = on_message
        self.start_call = start_call

    def connect_widgets(self) -> None:
        """Fill the fields from the user's settings (the token only when remembered) and connect
        Test connection."""
        s = self.logic.settings
        self.ui.remoteUrlEdit.text = s.get("remoteUrl", "")
        self.ui.rememberTokenCheckBox.checked = bool(s.get("rememberToken", False))
        self.ui.useRemoteCheckBox.checked = bool(s.get("useRemote", False))
        self.ui.remoteTokenEdit.text = s.remote_token() or ""
        self.ui.testConnectionButton.clicked.connect(self.test_connection)

    def apply_choice(self) -> None:
        """Segment on the remote server when "use remote" is checked, else on the local worker;
        the choice is remembered."""
        self.logic.settings.set("useRemote", bool(self.ui.useRemoteCheckBox.checked))
        url = self.ui.remoteUrlEdit.text if self.ui.useRemoteCheckBox.checked else None
        self.logic.setRemoteServer(url, self.ui.remoteTokenEdit.text, self.ui.rememberTokenCheckBox.checked)

    def consented(self) -> bool:
        """Whether volumes may go to the chosen server: always for the local worker; for a remote
        server once the user agreed (asked the first time, then remembered for that URL)."""
        if self.logic.remoteConsentNeeded():
            if not self.confirm("Send volume to a remote server?",
                                f"The volume's voxels and geometry will be sent to {self.logic.remoteUrl}; "
                                "no patient information is sent. Continue?"):
                return False
            self.logic.grantRemoteConsent()
        return True

    def test_connection(self) -> None:
        """Test connection: ask the server in the fields for its health and info."""
        with slicer.util.tryWithErrorDisplay("Connection to the TeViA server failed.", waitCursor=True):
            self.start_connection_test()

    def start_connection_test(self) -> None:
        """Start the connection test in the background; `on_connection_tested` gets its answer.

        Raises:
            ValueError: no server URL (nothing starts).
        """
        self.logic.setRemoteServer(self.ui.remoteUrlEdit.text, self.ui.remoteTokenEdit.text,
                                   self.ui.rememberTokenCheckBox.checked)
        call = self.logic.testRemoteConnectionAsync(onDone=self.on_connection_tested)
        self.ui.testConnectionButton.enabled = False
        self.on_message(f"Connecting to {self.logic.remoteUrl}...")
        self.start_call(call)

    def on_connection_tested(self, info: dict | None, error: Exception | None) -> None:
        self.ui.testConnectionButton.enabled = True
        if error is not None:
            self.on_message(f"Connection failed: {error}")
            slicer.util.errorDisplay(f"Connection to the TeViA server failed: {error}")
        else:
            self.on_message(f"Connected: {info.get('name')} {info.get('version')} on {info.get('device')}.")
