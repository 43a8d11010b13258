"""`tevia web`: the browser front end (the `web` extra), registered in tevia.commands.cli by name.

Headless machines render with OSMesa (Debian `libosmesa6`) or EGL: VTK picks one at run time;
`VTK_DEFAULT_OPENGL_WINDOW=vtkOSOpenGLRenderWindow` forces OSMesa (set here when no display
is present and the variable is unset).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path

__all__ = ["configure_parser", "main", "sample_files"]

logger = logging.getLogger(__name__)

_REPO = Path(__file__).resolve().parents[2]


def sample_files() -> dict[str, Path]:
    """The samples offered one click away: the chest X-ray and the CT of the project's test data."""
    volumes = _REPO / "Testing" / "data" / "volumes"
    xray = sorted((_REPO / "Testing" / "data" / "qata_samples" / "Images").glob("*.png"))
    found = {"ct": volumes / "totalseg-ct.nii.gz"}
    if xray:
        found["xray"] = xray[0]
    return {name: path for name, path in found.items() if path.is_file()}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other "
                        "needs a token: --token-file or TEVIA_SERVER_TOKEN)")
    parser.add_argument("--port", type=int, default=8080, help="port (0: a free one; default 8080)")
    parser.add_argument("--token-file", default=None, help="file holding the page's token (>= 16 characters); "
                        "open the page as http://HOST:PORT/?token=TOKEN")
    parser.add_argument("--data", default=None, help="a folder whose volumes the page may open (nothing "
                        "outside it is read)")
    parser.add_argument("--model", action="append", default=[], help="a model folder offered besides the "
                        "bundled and per-user models (repeatable)")
    parser.add_argument("--remote", default=None, help="a TeViA server URL offered as a model choice "
                        "(its token from TEVIA_REMOTE_TOKEN)")
    parser.add_argument("--training-dir", default=None, help="folder that 'Add to training set' writes to")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--max-upload-mb", type=int, default=2048, help="largest upload (default 2048 MB)")
    parser.add_argument("--settings-file", default=None, help="where the page keeps prompt history and "
                        "settings (default ~/.config/TeViA/web-settings.json)")
    parser.add_argument("--open-browser", action="store_true", help="open the page in a browser")


def _settings(args: argparse.Namespace):
    from tevia_web.uploads import UploadLimits
    from tevia_web.workflow import WebSettings

    data = Path(args.data).resolve() if args.data else None
    if data is not None and not data.is_dir():
        raise ValueError(f"--data {args.data!r} is not a folder")
    for folder in args.model:
        if not (Path(folder) / "model.json").is_file():
            raise ValueError(f"--model {folder!r} is not a model folder (it has no model.json)")
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    return WebSettings(data_dir=data, samples=sample_files(), models=[str(Path(m).resolve()) for m in args.model],
                       remote_url=args.remote, remote_token=os.environ.get("TEVIA_REMOTE_TOKEN"),
                       training_dir=Path(args.training_dir).resolve() if args.training_dir else None,
                       limits=UploadLimits(max_bytes=args.max_upload_mb * 1024 * 1024), device=args.device)


def _token(host: str, token_file: str | None) -> str | None:
    """The page's token; refuses another host than 127.0.0.1 without one (`tevia serve`'s rule)."""
    from tevia.serving.server.auth import LOOPBACK_HOST, load_token

    token = load_token(token_file)
    try:
        loopback = ipaddress.ip_address(host) == ipaddress.ip_address(LOOPBACK_HOST)
    except ValueError:
        loopback = False
    if token is None and not loopback:
        raise ValueError(f"--host {host!r} serves the page beyond this computer: give --token-file PATH or set "
                         f"TEVIA_SERVER_TOKEN (at least 16 characters), or bind {LOOPBACK_HOST}")
    return token


def main(args: argparse.Namespace) -> int:
    try:
        token = _token(args.host, args.token_file)
        settings = _settings(args)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    for name in ("trame_server", "trame_client", "wslink", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not os.environ.get("DISPLAY") and not os.environ.get("VTK_DEFAULT_OPENGL_WINDOW"):
        os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkOSOpenGLRenderWindow"
    try:
        from tevia_web.access import token_middleware
        from tevia_web.app import TeviaWebApp
    except ImportError as error:
        logger.error("tevia web needs the web extra (%s): pip install 'tevia[web]' from the source checkout", error)
        return 2

    app = TeviaWebApp(settings, settings_file=Path(args.settings_file) if args.settings_file else None)
    if token is not None:
        app.server.controller.on_server_bind.add(lambda wslink: wslink.app.middlewares.append(token_middleware(token)))
    app.server.start(host=args.host, port=args.port, open_browser=args.open_browser)
    return 0
