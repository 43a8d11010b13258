"""An expected, explained error (here: a model file whose sha256 no longer matches model.json)
shows its message alone on every front end, in real processes: `tevia predict`, `evaluate`,
`train --init`, `domain`, `serve` and the worker's error event; the traceback appears only
under `--verbose` (the worker: `--log-level DEBUG`). Nothing is written for the failed run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import REPO, TESTDATA, build_tiny_model

MESSAGE = "does not match the sha256 in model.json"
PNG = TESTDATA / "volumes" / "totalseg-ct-slice15.png"
QATA = TESTDATA / "qata_samples"
VERBOSE = ["predict", "train"]  # the two ways a front end reports: printed, logged


def _environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO / "TeViASegment"), OMP_NUM_THREADS="1",
                HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def _commands(model, out) -> dict[str, list[str]]:
    """Each front end's command line on the tampered model, writing under ``out``."""
    model = str(model)
    return {
        "predict": ["predict", "--model", model, "--input", str(PNG), "--text", "liver", "--device", "cpu",
                    "--out", str(out / "predict" / "liver.nii.gz")],
        "evaluate": ["evaluate", "--model", model, "--data", str(QATA), "--split", "samples", "--device", "cpu",
                     "--out", str(out / "evaluate")],
        "train": ["train", "--config", str(REPO / "configs" / "default-qata-clicks.yaml"), f"data.root={QATA}",
                  "data.train_split=samples", "data.val_split=samples", "train.max_epochs=1", "train.threads=1",
                  f"train.out_dir={out / 'train'}", "--init", model],
        "domain": ["domain", "--model", model, "--data", str(QATA), "--train-split", "samples", "--device", "cpu"],
        "serve": ["serve", "--model", model, "--device", "cpu", "--port", "0", "--insecure-no-token"],
    }


def _run_tevia(arguments: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tevia", *arguments], capture_output=True, text=True,
                          env=_environment(), timeout=300)


def _run_worker(model, log_level: str) -> subprocess.CompletedProcess:
    """Load the model in a worker; once it answers, end its input (which shuts it down)."""
    process = subprocess.Popen([sys.executable, "-m", "tevia.serving.worker", "--threads", "1",
                                "--log-level", log_level], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_environment())
    process.stdin.write(json.dumps({"id": "load", "type": "load", "model": str(model), "device": "cpu"}) + "\n")
    process.stdin.flush()
    events = []
    for line in process.stdout:  # ready, then the load's answer
        events.append(line)
        if json.loads(line)["id"] == "load":
            break
    process.stdin.close()
    stdout, stderr = process.stdout.read(), process.stderr.read()  # a few lines: no pipe fills up
    return subprocess.CompletedProcess(process.args, process.wait(120), "".join(events) + stdout, stderr)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every front end run on a tampered copy of the tiny model; verbosely too where the message
    is printed (predict), logged (train) or an event (worker). Two processes at a time."""
    root = tmp_path_factory.mktemp("tampered")
    model = build_tiny_model(root / "model")
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight: still a readable file, no longer the recorded one
    weights.write_bytes(bytes(data))
    jobs = {}
    for verbose in (False, True):
        out = root / ("verbose" if verbose else "plain")
        for name, arguments in _commands(model, out).items():
            if name in VERBOSE or not verbose:
                jobs[name, verbose] = (_run_tevia, arguments + ["--verbose"] * verbose)
        jobs["worker", verbose] = (_run_worker, model, "DEBUG" if verbose else "INFO")
    with ThreadPoolExecutor(2) as pool:
        futures = {key: pool.submit(job[0], *job[1:]) for key, job in jobs.items()}
        results = {key: future.result() for key, future in futures.items()}
    shutil.rmtree(model)  # what is left under root is what the runs wrote
    return root, results


@pytest.mark.parametrize("command", ["predict", "evaluate", "train", "domain", "serve"])
def test_the_message_alone(runs, command):
    _, results = runs
    plain = results[command, False]
    assert plain.returncode == 2, plain.stderr
    assert f"tevia {command}: error: " in plain.stderr and MESSAGE in plain.stderr, plain.stderr
    assert "Traceback" not in plain.stderr and "CheckpointError" not in plain.stderr, plain.stderr


@pytest.mark.parametrize("command", VERBOSE)
def test_the_traceback_under_verbose(runs, command):
    _, results = runs
    verbose = results[command, True]
    assert verbose.returncode == 2, verbose.stderr
    assert MESSAGE in verbose.stderr and "Traceback (most recent call last)" in verbose.stderr, verbose.stderr
    assert verbose.stderr.rindex("Traceback") < verbose.stderr.rindex(f"tevia {command}: error: "), \
        "the message comes last, after the traceback"


def test_the_worker_answers_model_error_with_the_message_and_logs_no_traceback(runs):
    _, results = runs
    for verbose in (False, True):
        run = results["worker", verbose]
        events = [json.loads(line) for line in run.stdout.splitlines()]
        error = next(e for e in events if e["id"] == "load")
        assert error["event"] == "error" and error["code"] == "model_error", error
        assert MESSAGE in error["message"] and "CheckpointError" not in error["message"], error
        assert run.returncode == 0, run.stderr
        assert ("Traceback" in run.stderr) == verbose, run.stderr


def test_nothing_is_written_for_a_model_that_cannot_load(runs):
    root, _ = runs
    for mode in ("plain", "verbose"):
        folder = root / mode
        written = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
        assert written == [], written
