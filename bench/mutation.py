"""Mutation testing of the method's core and its risky plumbing (a bench job, not in CI).

Runs mutmut 3 over a scratch copy of the engine (never the working tree: other people commit
from it), each mutated file against its fast, relevant tests only (TARGETS), and writes
bench/mutation.json: every mutant that ran (file, line, change) with its outcome, and for each
survivor the new test that kills it (checked: the test passes on the engine and fails with the
mutant applied) or why it is harmless (bench/mutation_verdicts.json, written by hand).

    python -m venv /tmp/mutmut-venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/mutmut-venv/lib/python3.11/site-packages/main.pth
    /tmp/mutmut-venv/bin/pip install mutmut==3.8.1
    nice -n 5 /tmp/mutmut-venv/bin/python bench/mutation.py --work /tmp/tevia-mutation

Stages (each can be run alone): ``--stage setup`` builds the scratch folder (and forgets earlier
results), ``--stage run`` runs a seeded per-file sample of the mutants not yet run (SAMPLE_SIZES,
``--sizes``, ``--all-mutants``), ``--stage report`` checks the verdicts' tests and writes the JSON.
Error messages and log lines are not mutated (their mutants change text, not the method).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["TARGETS", "setup", "describe", "selected", "sample", "run", "report"]

log = logging.getLogger("bench.mutation")
REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "TeViASegment" / "tevia"

# Mutated file -> the fast tests that guard it (mutmut runs, per mutant, those among them
# that call the mutated function, fastest first, stopping at the first failure).
TARGETS: dict[str, list[str]] = {
    "tevia/model/alignment.py": ["Testing/tevia/model/test_network.py",
                                 "Testing/tevia/model/test_architecture_options.py",
                                 "Testing/tevia/model/test_reference_fixture.py"],
    "tevia/model/prototype.py": ["Testing/tevia/model/test_network.py",
                                 "Testing/tevia/model/test_reference_fixture.py",
                                 "Testing/tevia/training/test_prototype_training.py"],
    "tevia/model/decoder.py": ["Testing/tevia/model/test_network.py",
                               "Testing/tevia/model/test_architecture_options.py",
                               "Testing/tevia/model/test_reference_fixture.py"],
    "tevia/volume/cache.py": ["Testing/tevia/inference/test_volume_reuse.py",
                              "Testing/tevia/inference/test_pipeline.py"],
    "tevia/inference/pipeline.py": ["Testing/tevia/inference/test_volume_reuse.py",
                                    "Testing/tevia/inference/test_pipeline.py"],
    "tevia/volume/geometry.py": ["Testing/tevia/volume/test_volume_geometry.py"],
    "tevia/prompts/sides.py": ["Testing/tevia/prompts/test_prompts.py",
                               "Testing/tevia/training/test_side_flips.py"],
}
# Of pipeline.py only the feature cache's keys: the intensity scaling remembered per fingerprint
# (_intensity_scaling), the fingerprint (image_fingerprint), and the segment_volume lines that
# compute, read or store the feature entry (matched on the original line's text).
KEY_LINES = ("digest = voxels_fingerprint", "key = (id(segmenter)", "digest, layout, scaler.low",
             "cached = feature_cache.get", "feature_cache.put(key", "if feature_cache is not None and chunks")
# Mutants per file in one bench run (0: all): the whole set (about 900 mutants, each running
# up to 2.5 minutes of tests when it survives) does not fit 40 CPU minutes on 2 shared cores.
SAMPLE_SIZES = {"tevia/model/alignment.py": 15, "tevia/model/prototype.py": 15, "tevia/model/decoder.py": 15,
                "tevia/volume/cache.py": 10, "tevia/inference/pipeline.py": 20, "tevia/volume/geometry.py": 10,
                "tevia/prompts/sides.py": 10}
# The review's mutation: the alignment loss turned into 1 + cos.
ALWAYS = {"tevia.model.alignment.x_alignment_loss__mutmut_38"}
HELPERS = ["Testing/conftest.py", "Testing/server_helpers.py", "Testing/slicer_fixtures.py",
           "Testing/volume_fixtures.py", "Testing/worker_process.py", "Testing/data", "configs", "docs/PROMPTS.md"]


def setup(work: Path) -> None:
    """A scratch project: tevia/ at the top (mutmut names mutants by path), the tests, a config."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(ENGINE, work / "tevia", ignore=shutil.ignore_patterns("__pycache__"))
    tests = sorted({t for ts in TARGETS.values() for t in ts})
    for rel in HELPERS + tests:
        src, dst = REPO / rel, work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    config = {"source_paths": ["tevia"], "only_mutate": list(TARGETS), "also_copy": ["Testing", "configs", "docs"],
              "pytest_add_cli_args": ["-q", "-p", "no:cacheprovider"],
              "pytest_add_cli_args_test_selection": tests,
              "timeout_multiplier": 5.0, "timeout_constant": 20.0}
    toml = "\n".join(f"{key} = {json.dumps(value)}" for key, value in config.items())
    (work / "pyproject.toml").write_text(f"[tool.mutmut]\n{toml}\n")
    log.info("scratch project in %s (%d test files)", work, len(tests))


def _environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TEVIA_SHARED_DATA=str(REPO.parent / "shared" / "data"),
               TEVIA_MODELS_DIR=str(REPO / "TeViASegment" / "Resources" / "Models"))
    env.pop("PYTHONPATH", None)
    return env


def sample(mutants: list[dict], sizes: dict[str, int] | None, seed: int = 29) -> list[str]:
    """The mutants to run: per file, up to ``sizes[file]`` (none for a file not named) of the
    selected ones not yet run, drawn with a fixed seed, plus the mutants named in ALWAYS; with
    ``sizes`` None, every selected mutant not yet run."""
    chosen = []
    for file in TARGETS:
        pending = [m["name"] for m in mutants if m["file"] == file and selected(m) and m["status"] is None]
        size = len(pending) if sizes is None else sizes.get(file, 0)
        chosen += pending if size >= len(pending) else random.Random(seed).sample(pending, size)
    return sorted(set(chosen) | {m["name"] for m in mutants if m["name"] in ALWAYS and m["status"] is None})


def run(work: Path, names: list[str]) -> None:
    """mutmut run in ``work`` with one child, over the mutants ``names``."""
    cmd = [str(Path(sys.executable).with_name("mutmut")), "run", "--max-children", "1", *names]
    log.info("running %d mutants in %s", len(names), work)
    subprocess.run(cmd, cwd=work, env=_environment(), check=False)


def _statement_spans(source: str) -> list[tuple[int, int]]:
    """Line spans of the raise statements and logging calls of a module (error messages and
    log lines: their mutants change text, not the method; they are left out)."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        logging_call = (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                        and isinstance(node.value.func, ast.Attribute)
                        and node.value.func.attr in ("debug", "info", "warning", "error", "exception"))
        if isinstance(node, ast.Raise) or logging_call:
            spans.append((node.lineno, node.end_lineno))
    return spans


def describe(work: Path) -> list[dict]:
    """Every mutant mutmut made in ``work``: name, file, function, file line, the original and
    mutated line(s), and its outcome (None before it ran)."""
    from mutmut.mutation.diff_apply import read_mutant_function, read_mutants_module, read_original_function
    from mutmut.stats import status_by_exit_code
    import libcst as cst

    mutants = []
    with _inside(work):
        for file in TARGETS:
            meta = json.loads((Path("mutants") / f"{file}.meta").read_text())
            source = Path(file).read_text()
            lines = source.split("\n")
            spans = _statement_spans(source)
            module = read_mutants_module(file)
            for name, code in meta["exit_code_by_key"].items():
                original = cst.Module([read_original_function(module, name)]).code.strip().split("\n")
                mutated = cst.Module([read_mutant_function(module, name)]).code.strip().split("\n")
                start = _block_start(lines, original)
                ops = [op for op in difflib.SequenceMatcher(None, original, mutated).get_opcodes() if op[0] != "equal"]
                first, last = ops[0][1], max(ops[-1][2], ops[0][1] + 1)
                line = start + first + 1
                mutants.append({
                    "name": name, "file": file, "function": _function_name(name),
                    "line": line,
                    "original": "\n".join(s.strip() for s in original[first:last]),
                    "mutated": "\n".join(s.strip() for op in ops for s in mutated[op[3]:op[4]]),
                    "in_message": any(a <= line <= b for a, b in spans),
                    "status": None if code is None else status_by_exit_code[code],
                })
    return mutants


def _function_name(mutant: str) -> str:
    """``Class.method`` or ``function`` from mutmut's mangled name (x_function, xǁClassǁmethod)."""
    mangled = mutant.rsplit("__mutmut_", 1)[0].rsplit(".", 1)[-1]
    return ".".join(mangled[1:].strip("ǁ").split("ǁ")) if mangled.startswith("xǁ") else mangled[2:]


def _block_start(lines: list[str], block: list[str]) -> int:
    """Index of the first line of ``block`` in ``lines``: libcst renders a function verbatim
    (a method without its class's indentation), so the lines match but for leading spaces."""
    wanted = [b.strip() for b in block]
    for i, text in enumerate(lines):
        if text.strip() == wanted[0] and [t.strip() for t in lines[i:i + len(block)]] == wanted:
            return i
    raise ValueError(f"function starting {block[0]!r} not found in its file")


class _inside:
    """Run a block with ``work`` as the working folder (mutmut reads its config from there)."""

    def __init__(self, work: Path) -> None:
        self.work, self.previous = work, Path.cwd()

    def __enter__(self) -> None:
        os.chdir(self.work)

    def __exit__(self, *exc: object) -> None:
        os.chdir(self.previous)


def selected(mutant: dict) -> bool:
    """The mutants this bench runs: not in error messages or log lines; of pipeline.py only the
    feature cache's keys."""
    if mutant["in_message"]:
        return False
    if mutant["file"] != "tevia/inference/pipeline.py":
        return True
    if mutant["function"] in ("_intensity_scaling", "image_fingerprint"):
        return True
    return mutant["function"] == "segment_volume" and any(k in mutant["original"] for k in KEY_LINES)


def _file_of(mutant: str) -> str:
    return next(f for f in TARGETS if mutant.startswith(f[:-3].replace("/", ".") + "."))


def _mutated_source(work: Path, mutant: str) -> tuple[str, str]:
    """(file, its source with the mutant applied): the mutated function's changed lines, indented
    as the function is in its file, spliced into the original."""
    from mutmut.mutation.diff_apply import read_mutant_function, read_mutants_module, read_original_function
    import libcst as cst

    file = _file_of(mutant)
    with _inside(work):
        module = read_mutants_module(file)
        original = cst.Module([read_original_function(module, mutant)]).code.strip().split("\n")
        mutated = cst.Module([read_mutant_function(module, mutant)]).code.strip().split("\n")
    lines = (work / file).read_text().split("\n")
    start = _block_start(lines, original)
    indent = lines[start][:len(lines[start]) - len(lines[start].lstrip())]
    spliced = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, original, mutated).get_opcodes():
        spliced += lines[start + i1:start + i2] if tag == "equal" else [indent + m if m else m for m in mutated[j1:j2]]
    return file, "\n".join(lines[:start] + spliced + lines[start + len(original):])


def verify(work: Path, verdicts: dict[str, dict]) -> dict[str, bool]:
    """For each survivor whose verdict names killing tests: whether those tests (today's, from
    the repository) fail with the mutant applied to a copy of the engine and pass without it."""
    tree = work / "verify"
    outcome: dict[str, bool] = {}
    clean: dict[tuple[str, ...], bool] = {}  # the tests pass on the unmutated engine (run once per set)
    for mutant, verdict in sorted(verdicts.items()):
        tests = verdict.get("killed_by")
        if not tests:
            continue
        passes = []
        for applied in (False, True):
            if not applied and tuple(tests) in clean:
                passes.append(clean[tuple(tests)])
                continue
            if tree.exists():
                shutil.rmtree(tree)
            shutil.copytree(ENGINE, tree / "TeViASegment" / "tevia", ignore=shutil.ignore_patterns("__pycache__"))
            for rel in HELPERS + sorted({t.split("::")[0] for t in tests}):
                src, dst = REPO / rel, tree / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
            if applied:
                file, source = _mutated_source(work, mutant)
                (tree / "TeViASegment" / file).write_text(source)
            env = dict(_environment(), PYTHONPATH=str(tree / "TeViASegment"))
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                                  cwd=tree, env=env, capture_output=True, text=True)
            passes.append(done.returncode == 0)
            if not applied:
                clean[tuple(tests)] = passes[-1]
        outcome[mutant] = passes == [True, False]
        log.info("%s: %s", mutant, "killed by " + ", ".join(tests) if outcome[mutant] else f"NOT killed {passes}")
    return outcome


def report(work: Path, verdicts_path: Path, out: Path, note: str = "") -> dict:
    """bench/mutation.json from mutmut's results and the verdicts on the survivors."""
    mutants = describe(work)
    verdicts = json.loads(verdicts_path.read_text()) if verdicts_path.is_file() else {}
    verified = verify(work, verdicts)
    ran = [m for m in mutants if m["status"] is not None]
    rows = []
    for m in ran:
        row = {k: m[k] for k in ("file", "line", "function", "original", "mutated", "status")}
        row["mutant"] = m["name"]
        if m["status"] == "survived":
            verdict = verdicts.get(m["name"], {})
            if verdict.get("killed_by"):
                row["killed_by_new_test"] = verdict["killed_by"]
                row["new_test_verified"] = verified.get(m["name"], False)
            row["why"] = verdict.get("why", "not yet judged")
        rows.append(row)
    survived = [r for r in rows if r["status"] == "survived"]
    summary = {
        "generated": len(mutants),
        "selected": sum(selected(m) for m in mutants),
        "run": len(ran),
        "killed": sum(r["status"] == "killed" for r in rows),
        "survived": len(survived),
        "other": sum(r["status"] not in ("killed", "survived") for r in rows),
        "survivors_killed_by_new_tests": sum(bool(r.get("new_test_verified")) for r in survived),
        "survivors_judged_harmless": sum("killed_by_new_test" not in r and r["why"] != "not yet judged"
                                         for r in survived),
    }
    result = {
        "command": "nice -n 5 /tmp/mutmut-venv/bin/python bench/mutation.py (see its docstring for the venv)",
        "tool": "mutmut 3.8.1", "machine": f"{platform.node()} ({os.cpu_count()} shared CPUs)",
        "date": time.strftime("%Y-%m-%d"), "targets": TARGETS, "sample_sizes": SAMPLE_SIZES,
        "note": note, "summary": summary, "mutants": rows,
    }
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    log.info("%s", summary)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/tevia-mutation"), help="scratch folder")
    parser.add_argument("--stage", choices=("all", "setup", "run", "report"), default="all")
    parser.add_argument("--all-mutants", dest="sample", action="store_false",
                        help="run every selected mutant instead of the per-file sample (hours on 2 cores)")
    parser.add_argument("--sizes", help='per-file sample sizes as JSON, e.g. {"tevia/model/decoder.py": 15} '
                                        "(default: SAMPLE_SIZES); mutants already run are not run again")
    parser.add_argument("--note", default="", help="how this run was made, for the JSON (passes, cut-offs)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.stage in ("all", "setup"):
        setup(args.work)
    if args.stage in ("all", "run"):
        sizes = json.loads(args.sizes) if args.sizes else SAMPLE_SIZES
        names = sample(describe(args.work), sizes if args.sample else None)
        run(args.work, names)
    if args.stage in ("all", "report"):
        report(args.work, REPO / "bench" / "mutation_verdicts.json", REPO / "bench" / "mutation.json", args.note)


if __name__ == "__main__":
    main()
