"""`tevia serve`'s replica options: refused without --replicas, checked before Ray starts."""

from __future__ import annotations

import argparse

import pytest

from tevia.serving.server.command import configure_parser, main, settings_from_args


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(["--insecure-no-token", *argv])


@pytest.mark.parametrize("option", [["--threads", "2"], ["--gpus-per-replica", "0.5"], ["--ray-address", "auto"]])
def test_replica_options_without_replicas_are_refused(option):
    with pytest.raises(ValueError, match=f"{option[0]} goes with --replicas"):
        settings_from_args(_parse(*option))


def test_without_replicas_the_single_process_server_needs_no_ray():
    args = _parse()
    assert args.replicas is None
    assert settings_from_args(args).token is None


@pytest.mark.parametrize("argv, message", [(["--replicas", "0"], "--replicas must be an integer >= 1"),
                                           (["--replicas", "2", "--threads", "0"], "--threads must be an integer"),
                                           (["--replicas", "1", "--gpus-per-replica", "-1"], "--gpus-per-replica")])
def test_bad_replica_numbers_exit_2_before_ray_starts(argv, message, caplog):
    pytest.importorskip("ray")
    import ray

    assert main(_parse(*argv)) == 2
    assert message in caplog.text
    assert not ray.is_initialized()
