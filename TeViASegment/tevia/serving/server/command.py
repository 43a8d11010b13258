"""`tevia serve`: run the HTTP inference server on uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path

from tevia.device import add_precision_argument
from tevia.serving.replica_command import add_replica_arguments, check_replica_arguments, serve_replicas
from tevia.serving.server.auth import LOOPBACK_HOST, TOKEN_ENV, check_bind, load_token
from tevia.serving.server.settings import ServerSettings
from tevia.serving.server.tempfiles import open_temp_root

__all__ = ["configure_parser", "main", "settings_from_args", "DEFAULT_PORT"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8765


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the `tevia serve` options to `parser`."""
    defaults = ServerSettings()
    parser.add_argument("--model", default="default", help="bundled model name or model folder (default: default)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    add_precision_argument(parser)
    parser.add_argument("--host", default=LOOPBACK_HOST, help=f"address to bind (default {LOOPBACK_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--token-file", type=Path, help=f"file holding the bearer token (else ${TOKEN_ENV})")
    parser.add_argument("--insecure-no-token", action="store_true",
                        help=f"serve without a token (binds to {LOOPBACK_HOST} only; for local tests)")
    parser.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes / 2**20,
                        help="largest accepted request body in MB (413 beyond it)")
    parser.add_argument("--queue-limit", type=int, default=defaults.queue_limit,
                        help="requests that may wait behind the running one (503 + Retry-After beyond it)")
    parser.add_argument("--max-uploads", type=int, default=defaults.max_uploads,
                        help="requests whose body may be arriving at once (503 + Retry-After beyond it)")
    parser.add_argument("--memory-budget-mb", type=int, default=defaults.memory_budget_bytes // 2**20,
                        help="memory one request's volume may take while decoded and segmented, every copy "
                             "counted (413 beyond it, before decoding)")
    parser.add_argument("--request-timeout", type=float, default=defaults.request_timeout,
                        help="seconds per request, upload and inference together")
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections,
                        help="open connections served at once (503 beyond them)")
    parser.add_argument("--head-timeout", type=float, default=defaults.head_timeout,
                        help="seconds a connection may take to send a request's line and headers")
    parser.add_argument("--cache-mb", type=int, default=defaults.feature_cache_bytes // 2**20,
                        help="image-feature cache bound in MiB (as the worker's --cache-mb)")
    parser.add_argument("--ssl-certfile", type=Path, help="TLS certificate (PEM); serve HTTPS with --ssl-keyfile")
    parser.add_argument("--ssl-keyfile", type=Path, help="TLS private key (PEM)")
    parser.add_argument("--temp-dir", type=Path,
                        help="the server's own temporary folder, created with mode 0700 if missing; refused if "
                             "it is a link, another user's or writable by others (default: a fresh folder in the "
                             "system's)")
    add_replica_arguments(parser)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """ServerSettings from parsed `tevia serve` options.

    Raises:
        ValueError: a refused combination (no token without --insecure-no-token, the flag off
            127.0.0.1, half a TLS pair, missing files, bad numbers, a --temp-dir others can
            write, replica options without --replicas), saying what to do.
    """
    check_replica_arguments(args)
    token = load_token(args.token_file)
    check_bind(args.host, token, args.insecure_no_token)
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise ValueError("--ssl-certfile and --ssl-keyfile go together; give both or neither")
    for name in ("ssl_certfile", "ssl_keyfile"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            raise ValueError(f"--{name.replace('_', '-')} {str(path)!r} does not exist")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if args.temp_dir is not None:
        open_temp_root(args.temp_dir)
    return ServerSettings(token=token, max_upload_bytes=int(args.max_upload_mb * 2**20),
                          queue_limit=args.queue_limit, max_uploads=args.max_uploads,
                          memory_budget_bytes=args.memory_budget_mb * 2**20, request_timeout=args.request_timeout,
                          feature_cache_bytes=args.cache_mb * 2**20, temp_dir=args.temp_dir,
                          max_connections=args.max_connections, head_timeout=args.head_timeout)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(args: argparse.Namespace) -> int:
    """Check the security options, load the model once, then serve until interrupted.

    Returns:
        0 after a clean shutdown, 2 for refused options or a model that cannot load (the
        message says which and why).
    """
    from tevia.commands.cli import report_error

    try:
        settings = settings_from_args(args)
    except ValueError as error:
        return report_error("serve", error, logger)
    if args.replicas is not None:
        return serve_replicas(args, settings)
    import uvicorn

    from tevia.checkpoint import CheckpointError
    from tevia.inference.segmenter import Segmenter
    from tevia.serving.server.app import create_app
    from tevia.serving.server.transport import uvicorn_config

    if args.ssl_certfile is None and not _is_loopback(args.host):
        logger.warning("serving plain HTTP on %s: the token and the volumes travel unencrypted; "
                       "use --ssl-certfile/--ssl-keyfile or a TLS proxy", args.host)
    try:
        segmenter = Segmenter.load(str(args.model), device=args.device, precision=args.precision)
    except (ValueError, FileNotFoundError, CheckpointError) as error:
        return report_error("serve", error, logger, f"cannot load the model: {error}")
    app = create_app(segmenter, settings)
    scheme = "https" if args.ssl_certfile else "http"
    logger.info("serving model %s on %s://%s:%d (token %s)", segmenter.spec.name, scheme, args.host, args.port,
                "required" if settings.token else "NOT required")
    config = uvicorn_config(app, settings, args.host, args.port, ssl_certfile=args.ssl_certfile,
                            ssl_keyfile=args.ssl_keyfile, log_level=logging.getLogger().getEffectiveLevel())
    uvicorn.Server(config).run()
    return 0
