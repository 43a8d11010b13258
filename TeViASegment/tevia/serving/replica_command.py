"""The `tevia serve` options of model replicas on Ray Serve (`--replicas N`); imports no Ray.

Without `--replicas`, `tevia serve` is the single process it always was; with it, the same app
runs on Ray Serve (tevia.serving.replicas), which needs the `ray` extra
(`pip install "tevia[ray]"`).
"""

from __future__ import annotations

import argparse
import logging

from tevia.serving.server.settings import ServerSettings

__all__ = ["add_replica_arguments", "check_replica_arguments", "serve_replicas"]

logger = logging.getLogger(__name__)


def add_replica_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --replicas, --threads, --gpus-per-replica and --ray-address to `tevia serve`."""
    group = parser.add_argument_group("replicas on Ray Serve (the `ray` extra; see docs/SCALE.md)")
    group.add_argument("--replicas", type=int,
                       help="run N model replicas on Ray Serve behind the same API (default: one process, no Ray)")
    group.add_argument("--threads", type=int, help="CPU threads of each replica (with --replicas; default 1)")
    group.add_argument("--gpus-per-replica", type=float,
                       help="GPUs of each replica, 0.5 to share one between two (with --replicas; default 0)")
    group.add_argument("--ray-address", help="join this Ray cluster ('auto' for the one `ray start` runs here) "
                                             "instead of starting Ray in this process (with --replicas)")


def check_replica_arguments(args: argparse.Namespace) -> None:
    """Refuse the replica options without --replicas (they would be ignored).

    Raises:
        ValueError: naming the option and what to do.
    """
    if args.replicas is None:
        for name in ("threads", "gpus_per_replica", "ray_address"):
            if getattr(args, name) is not None:
                raise ValueError(f"--{name.replace('_', '-')} goes with --replicas N; add --replicas or leave it out")


def serve_replicas(args: argparse.Namespace, settings: ServerSettings) -> int:
    """Run `tevia serve --replicas N` until interrupted.

    Returns:
        0 after a clean shutdown, 2 when the options are refused or Ray is not installed.
    """
    try:
        import ray  # noqa: F401  (the check that the extra is installed)
    except ImportError:
        logger.error("tevia serve: --replicas needs Ray Serve: pip install \"tevia[ray]\"")
        return 2
    from tevia.serving.replicas import ReplicaOptions, run_replicas

    try:
        options = ReplicaOptions(model=str(args.model), device=args.device, precision=args.precision,
                                 replicas=args.replicas, threads=1 if args.threads is None else args.threads,
                                 gpus_per_replica=args.gpus_per_replica or 0.0)
    except ValueError as error:
        logger.error("tevia serve: %s", error)
        return 2
    run_replicas(options, settings, args.host, args.port,
                 ssl_certfile=str(args.ssl_certfile) if args.ssl_certfile else None,
                 ssl_keyfile=str(args.ssl_keyfile) if args.ssl_keyfile else None, address=args.ray_address)
    return 0
