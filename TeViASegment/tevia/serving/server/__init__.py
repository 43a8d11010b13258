"""The HTTP inference server (`tevia serve`): FastAPI on uvicorn, bearer-token auth, bounded queue.

The subcommand entry points live in `command` and import nothing heavy; `create_app` is
imported lazily so that `tevia serve --help` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from tevia.serving.server.settings import ServerSettings

__all__ = ["configure_parser", "main", "create_app", "ServerSettings"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """`tevia serve`'s options (tevia.serving.server.command; imported here so that the upload
    checks of this package load without torch)."""
    from tevia.serving.server.command import configure_parser as configure

    configure(parser)


def main(args: argparse.Namespace) -> int:
    """Run `tevia serve` (tevia.serving.server.command.main)."""
    from tevia.serving.server.command import main as run

    return run(args)


def create_app(segmenter: Any, settings: ServerSettings | None = None) -> Any:
    """Build the FastAPI app around a loaded Segmenter (see tevia.serving.server.app.create_app)."""
    from tevia.serving.server.app import create_app as build

    return build(segmenter, settings)
