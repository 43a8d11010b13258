"""The `tevia` command: a thin dispatcher over the engine's subcommand modules.

Each subcommand module exposes `configure_parser(parser)` and `main(args) -> int`; it is
imported only when its subcommand runs, so `tevia --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

__all__ = ["main", "report_error", "SUBCOMMANDS"]

log = logging.getLogger(__name__)

SUBCOMMANDS = {
    "train": ("tevia.training.train", "train a model from a YAML config (PyTorch Lightning)"),
    "evaluate": ("tevia.commands.evaluate", "evaluate a model on a CSV split; writes metrics.json"),
    "predict": ("tevia.commands.predict", "segment images or volumes from text prompts"),
    "serve": ("tevia.serving.server", "run the HTTP inference server"),
    "domain": ("tevia.commands.domain", "describe a model's training images (flags inputs unlike them)"),
    # the browser front end lives outside the engine (web/tevia_web, the `web` extra): named, never imported here
    "web": ("tevia_web.command", "run the web page (trame-slicer) for annotators without desktop Slicer"),
}


def _usage() -> str:
    lines = ["usage: tevia COMMAND [options]   (tevia COMMAND --help for its options)", ""]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def report_error(command: str, error: BaseException, logger: logging.Logger | None = None,
                 message: str | None = None) -> int:
    """Report an expected, explained error (a bad option, a missing or tampered model, bad input).

    The user sees ``tevia COMMAND: error: MESSAGE`` on stderr (printed, or logged at ERROR by
    ``logger`` when one is given); the traceback goes to the debug log only, which
    ``--verbose`` shows. A bug (an error the command does not expect) is not reported here:
    its traceback stays.

    Args:
        command: the subcommand's name.
        error: the error; its message is shown unless ``message`` is given.
        logger: the command's logger, for commands that report through the log.
        message: the text to show instead of ``str(error)``.

    Returns:
        The exit status, 2.
    """
    log.debug("tevia %s: where the error below was raised", command, exc_info=error)
    text = f"tevia {command}: error: {error if message is None else message}"
    if logger is not None:
        logger.error("%s", text)
    else:
        print(text, file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"tevia: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # Every command runs beside other work: a server or predict beside Slicer, a fine-tune started
    # from Slicer, a training beside a test suite (an epoch took over 16 minutes instead of 2.2
    # under load without this: docs/BENCHMARKS.md, OpenMP spinning).
    from tevia.openmp import limit_spinning

    limit_spinning()
    module = importlib.import_module(SUBCOMMANDS[command][0])
    parser = argparse.ArgumentParser(prog=f"tevia {command}", description=SUBCOMMANDS[command][1])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    module.configure_parser(parser)
    args = parser.parse_args(rest)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
