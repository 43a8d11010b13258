"""What Ray buys and costs: replicas, affinity and cohort workers against one process; writes bench/scale.json.

Four measurements, each ratio from one run on one machine (other jobs share its CPUs: the load
average is recorded):

1. throughput: `tevia serve --replicas 2 --threads 1` against `--replicas 1 --threads 1`,
   8 client threads sending distinct real CT volumes (122x101x30 slabs of the TotalSegmentator
   example CT, every request an encoder pass) for a fixed number of requests;
2. affinity: the share of re-prompts (the same volume again, another prompt) answered from the
   feature cache with the volume's hash as Serve's multiplexed model id, against the same two
   replicas routed without it (Serve's default power-of-two-choices router);
3. cohort: volumes per minute of `tevia predict --engine ray` with 2 workers against 1 (and the
   local engine), the same CSV of slabs;
4. cost: seconds from starting `tevia serve` (plain, and `--replicas 1`) to its first answer
   of /v1/health, and the resident memory of its whole process tree then (Ray's own processes
   included).

    python bench/bench_scale.py                 # about 10 minutes on a loaded 2-core machine
    python bench/bench_scale.py --requests 2 --cohort 6   # a quicker, rougher run
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_CT = REPO.parent / "shared" / "data" / "volumes" / "totalseg-example-ct" / "ct_112slices.nii.gz"
log = logging.getLogger("bench_scale")
PROMPTS = ["liver", "spleen", "left lung", "right lung"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slabs(folder: Path, count: int, depth: int = 30) -> list[Path]:
    """`count` distinct slabs of `depth` slices of the 112-slice example CT, as .nii.gz files."""
    import SimpleITK as sitk

    folder.mkdir(exist_ok=True)
    ct = sitk.ReadImage(str(SHARED_CT))
    step = max(1, (ct.GetSize()[2] - depth) // max(1, count - 1))
    paths = []
    for n in range(count):
        start = min(n * step, ct.GetSize()[2] - depth)
        path = folder / f"slab{n:02d}.nii.gz"
        sitk.WriteImage(ct[:, :, start: start + depth], str(path), useCompression=True)
        paths.append(path)
    return paths


def post(url: str, data: bytes, prompt: str, timeout: float = 600) -> tuple[int, dict]:
    import httpx

    answer = httpx.post(f"{url}/v1/segment", files={"volume": ("v.nii.gz", data)}, data={"text": [prompt]},
                        timeout=timeout)
    return answer.status_code, answer.json() if answer.headers.get("content-type") == "application/json" else {}


def deploy(replicas: int, affinity: bool, port: int) -> str:
    """Deploy the app with `replicas` model replicas (no token: loopback only); returns its URL."""
    from ray import serve

    from tevia.serving.replicas import APP_NAME, ReplicaOptions, build_application
    from tevia.serving.server.settings import ServerSettings

    settings = ServerSettings(queue_limit=32, max_uploads=16)
    began = time.perf_counter()
    serve.run(build_application(ReplicaOptions(model="default", replicas=replicas, threads=1), settings,
                                affinity=affinity), name=APP_NAME, route_prefix="/", blocking=False)
    log.info("deployed %d replica(s), affinity %s, in %.1f s", replicas, affinity, time.perf_counter() - began)
    return f"http://127.0.0.1:{port}"


def throughput(url: str, volumes: list[bytes], clients: int) -> dict:
    """Each request a distinct volume, `clients` at a time; requests per second over the run."""
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda data: post(url, data, "liver"), volumes))
    seconds = time.perf_counter() - began
    ok = sum(status == 200 for status, _ in answers)
    return {"requests": len(volumes), "answered_200": ok, "other": len(volumes) - ok, "seconds": round(seconds, 2),
            "requests_per_second": round(ok / seconds, 3)}


def reprompt_hits(url: str, volumes: list[bytes], prompts: list[str], clients: int) -> dict:
    """First prompt on every volume, then each other prompt on every volume (interleaved, `clients`
    at a time); the share of re-prompts answered from the feature cache. With one re-prompt per
    volume, a miss means the re-prompt reached the replica that had not seen the volume."""
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda data: post(url, data, prompts[0]), volumes))
        time.sleep(1.0)  # the replicas' volume ids reach the router
        jobs = [(data, prompt) for prompt in prompts[1:] for data in volumes]
        answers = list(pool.map(lambda job: post(url, *job), jobs))
    hits = sum(status == 200 and body["timings"]["cache_hit"] == 1.0 for status, body in answers)
    return {"reprompts": len(jobs), "cache_hits": hits, "hit_rate": round(hits / len(jobs), 3),
            "failed": sum(status != 200 for status, _ in answers)}


def cohort(table: Path, out: Path, engine: list[str]) -> dict:
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tevia.commands.cli", "predict", "--model", "default", "--csv",
                             str(table), "--out", str(out), "--device", "cpu", *engine],
                            capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - began
    done = sum(1 for line in (out / "tevia-status.csv").read_text().splitlines()[1:] if ",done," in line)
    if result.returncode != 0:
        log.warning("cohort run %s ended %d: %s", engine, result.returncode, result.stderr[-2000:])
    import csv
    from datetime import datetime

    with (out / "tevia-status.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["status"] == "done"]
    ends = [datetime.fromisoformat(row["finished"]).timestamp() for row in rows]
    starts = [end - float(row["seconds"]) for end, row in zip(ends, rows)]
    span = max(ends) - min(starts)  # from the first case's start to the last one's end, as the workers timed them
    return {"engine": " ".join(engine) or "--engine local", "cases_done": done, "seconds": round(seconds, 1),
            "volumes_per_minute": round(60 * done / seconds, 2),
            "segmenting_seconds": round(span, 1), "steady_volumes_per_minute": round(60 * len(rows) / span, 2),
            "mean_case_seconds": round(sum(float(row["seconds"]) for row in rows) / len(rows), 2),
            "note": "volumes_per_minute: the whole command (Ray's start, model loads); steady: from the first case's "
                    "start to the last case's end, as the workers timed them"}


def tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants, MiB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def startup(extra: list[str]) -> dict:
    """Seconds from starting `tevia serve` to its first /v1/health answer; its process tree's memory then."""
    import httpx

    port = free_port()
    began = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "tevia.commands.cli", "serve", "--model", "default",
                                "--insecure-no-token", "--port", str(port), *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.perf_counter() - began > 300:
                raise RuntimeError(f"tevia serve {extra} did not start")
            time.sleep(0.2)
        seconds = time.perf_counter() - began
        time.sleep(5)  # let the replicas finish loading the model
        return {"command": " ".join(["tevia serve", *extra]), "seconds_to_health": round(seconds, 1),
                "tree_rss_mib": tree_rss_mb(process.pid)}
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3, help="requests per client in the throughput runs")
    parser.add_argument("--cohort", type=int, default=24, help="volumes of the cohort runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "scale.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.path.insert(0, str(REPO / "TeViASegment"))
    import ray
    from ray import serve

    results: dict = {"machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
                     "load_average_before": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "command": "python " + " ".join(sys.argv), "model": "default (bundled)",
                     "ray": ray.__version__}
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        files = slabs(folder, 24 + 36 + 1)  # throughput, affinity, the warm-up (last)
        volumes = [path.read_bytes() for path in files]
        cohort_files = slabs(folder / "cohort", args.cohort, depth=56)
        load = volumes[: args.clients * args.requests]
        assert len(load) <= 24, "--clients x --requests must be at most 24 (the other slabs measure affinity)"
        port = free_port()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            url = deploy(1, True, port)
            post(url, volumes[60], "liver")  # warm
            one = throughput(url, load, args.clients)
            url = deploy(2, True, port)
            post(url, volumes[60], "liver")
            two = throughput(url, load, args.clients)
            # volumes no replica has seen: 24.. for affinity, 42.. for the run without it
            affinity = {"first_reprompt_1_client": reprompt_hits(url, volumes[24:36], PROMPTS[:2], 1),
                        "4_reprompts_4_clients": reprompt_hits(url, volumes[36:42], PROMPTS, 4)}
            url = deploy(2, False, port)
            round_robin = {"first_reprompt_1_client": reprompt_hits(url, volumes[42:54], PROMPTS[:2], 1),
                           "4_reprompts_4_clients": reprompt_hits(url, volumes[54:60], PROMPTS, 4)}
        finally:
            serve.shutdown()
            ray.shutdown()
        results["throughput"] = {"clients": args.clients, "volume": "122x101x30 CT slabs, one prompt, distinct",
                                 "replicas_1": one, "replicas_2": two,
                                 "ratio": round(two["requests_per_second"] / one["requests_per_second"], 2)}
        results["affinity"] = {"replicas": 2, "with_volume_id": affinity, "without_volume_id": round_robin,
                               "note": "first_reprompt: 12 volumes, a first prompt each, then one re-prompt each, one "
                                       "request at a time; 4_reprompts: 6 volumes, a first prompt, then 3 re-prompts "
                                       "each, 4 at a time (a busy replica's volume goes elsewhere after Serve's 1 s)"}
        table = folder / "cohort" / "cohort.csv"
        table.write_text("input,text\n" + "".join(f"{p.name},liver\n" for p in cohort_files))
        runs = [cohort(table, folder / "local", []),
                cohort(table, folder / "ray1", ["--engine", "ray", "--workers", "1"]),
                cohort(table, folder / "ray2", ["--engine", "ray", "--workers", "2"])]
        results["cohort"] = {"cases": args.cohort, "volume": "122x101x56 CT slabs, one prompt", "runs": runs,
                             "ratio_2_workers_to_1": round(runs[2]["volumes_per_minute"] / runs[1]["volumes_per_minute"], 2),
                             "steady_ratio_2_workers_to_1": round(runs[2]["steady_volumes_per_minute"]
                                                                  / runs[1]["steady_volumes_per_minute"], 2)}
        results["cost"] = [startup([]), startup(["--replicas", "1"])]
    results["load_average_after"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    log.info("wrote %s", args.out)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
