"""Bounded load test of `tevia serve` on loopback; writes bench/server_load.json.

Starts the real server (`python -m tevia.cli serve`, a random token, a queue deep enough for
every client) on a free 127.0.0.1 port, then N client threads each send M POST /v1/segment
requests with a small real CT (a crop of Testing/data/volumes/totalseg-ct.nii.gz, NRRD) and
a prompt. Records per request the HTTP status and the latency; reports throughput, p50/p95
latency and errors by kind. It stops by itself: no new request after --time-limit seconds, a
per-request timeout, and the server is stopped at the end. Target: no request lost (transport
error) or answered with a 5xx under 16 concurrent clients; 503s from the queue limit are
counted apart (the default queue limit makes them impossible).

    python bench/bench_server_load.py                          # 16 clients x 4 requests, tiny model
    python bench/bench_server_load.py --model default --clients 8 --requests 2
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "Testing" / "data" / "volumes" / "totalseg-ct.nii.gz"
PROMPTS = ["liver", "spleen", "left kidney", "right kidney", "aorta", "stomach", "lung", "heart"]
log = logging.getLogger("bench_server_load")


def small_volume(out: Path, size: tuple[int, int, int]) -> bytes:
    """A centred crop of the real example CT with `size` (I, J, K) voxels, as NRRD bytes."""
    image = sitk.ReadImage(str(SOURCE))
    start = [max(0, (n - s) // 2) for n, s in zip(image.GetSize(), size)]
    crop = sitk.RegionOfInterest(image, [min(s, n) for s, n in zip(size, image.GetSize())], start)
    sitk.WriteImage(crop, str(out), useCompression=True)
    return out.read_bytes()


def model_folder(name: str, folder: Path) -> tuple[str, str]:
    """(model argument for `tevia serve`, description); "tiny" builds the random-weight test model."""
    if name != "tiny":
        return name, name
    sys.path[:0] = [str(REPO / "Testing"), str(REPO / "TeViASegment")]
    from conftest import build_tiny_model

    return str(build_tiny_model(folder / "tiny")), "tiny random-weight test model"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, token: str, args: argparse.Namespace, temp: Path) -> subprocess.Popen:
    env = {**os.environ, "TEVIA_SERVER_TOKEN": token, "PYTHONPATH": str(REPO / "TeViASegment"),
           "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "tevia.cli", "serve", "--model", model, "--device", args.device,
               "--port", str(port), "--queue-limit", str(args.queue_limit), "--temp-dir", str(temp / "server"),
               "--request-timeout", str(args.request_timeout)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(temp / "server.log", "w"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {(temp / 'server.log').read_text()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/v1/health")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("the server did not answer /v1/health within 120 s")


def multipart(volume: bytes, prompt: str) -> tuple[bytes, str]:
    boundary = f"bench{secrets.token_hex(8)}"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{prompt}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="volume"; filename="v.nrrd"\r\n'
            f'Content-Type: application/octet-stream\r\n\r\n').encode() + volume + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def client(index: int, port: int, token: str, volume: bytes, count: int, stop_at: float, timeout: float,
           records: list[dict]) -> None:
    """Send `count` requests one after the other (none after `stop_at`)."""
    for number in range(count):
        if time.monotonic() > stop_at:
            records.append({"client": index, "status": "not_sent"})
            continue
        prompt = PROMPTS[(index + number) % len(PROMPTS)]
        body, content_type = multipart(volume, prompt)
        began = time.perf_counter()
        record = {"client": index, "prompt": prompt}
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            connection.request("POST", "/v1/segment", body, {"Authorization": f"Bearer {token}",
                                                              "Content-Type": content_type})
            response = connection.getresponse()
            payload = response.read()
            record["status"] = response.status
            if response.status == 200:
                labels = json.loads(response.headers["X-TeViA-Labels"])["labels"]
                record["answer_ok"] = labels == {"1": prompt} and payload[:2] == b"\x1f\x8b"
            connection.close()
        except (OSError, http.client.HTTPException) as error:
            record["status"] = "lost"
            record["error"] = f"{type(error).__name__}: {error}"
        record["seconds"] = time.perf_counter() - began
        records.append(record)


def summarise(records: list[dict], wall: float) -> dict:
    done = [r for r in records if r["status"] == 200]
    latencies = np.array([r["seconds"] for r in done])
    statuses: dict[str, int] = {}
    for record in records:
        statuses[str(record["status"])] = statuses.get(str(record["status"]), 0) + 1
    server_errors = sum(n for s, n in statuses.items() if s.isdigit() and int(s) >= 500 and s != "503")
    return {
        "requests": len(records),
        "ok": len(done),
        "wrong_answers": sum(1 for r in done if not r.get("answer_ok")),
        "status_counts": statuses,
        "lost": statuses.get("lost", 0),
        "server_errors_5xx": server_errors,
        "busy_503": statuses.get("503", 0),
        "not_sent_after_time_limit": statuses.get("not_sent", 0),
        "wall_seconds": round(wall, 3),
        "throughput_rps": round(len(done) / wall, 3) if wall else 0.0,
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 3) if len(done) else None,
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 3) if len(done) else None,
        "latency_max_s": round(float(latencies.max()), 3) if len(done) else None,
        "errors": sorted({r["error"] for r in records if "error" in r})[:10],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help='"tiny" (random-weight test model), "default" or a folder')
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--size", type=int, nargs=3, default=[64, 64, 8], metavar=("I", "J", "K"))
    parser.add_argument("--queue-limit", type=int, default=None, help="default: clients (no 503 possible)")
    parser.add_argument("--time-limit", type=float, default=90.0, help="no new request after this many seconds")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads of the server")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "server_load.json")
    args = parser.parse_args()
    args.queue_limit = args.queue_limit or args.clients
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="tevia-bench-") as folder:
        temp = Path(folder)
        model, description = model_folder(args.model, temp)
        volume = small_volume(temp / "volume.nrrd", tuple(args.size))
        token, port = secrets.token_urlsafe(32), free_port()
        server = start_server(model, port, token, args, temp)
        try:
            records: list[dict] = []
            stop_at = time.monotonic() + args.time_limit
            threads = [threading.Thread(target=client, args=(i, port, token, volume, args.requests, stop_at,
                                                             args.request_timeout, records))
                       for i in range(args.clients)]
            began = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - began
        finally:
            server.terminate()
            server.wait(30)
    result = {
        "benchmark": "server_load",
        "model": description,
        "device": args.device,
        "server_threads": args.threads,
        "clients": args.clients,
        "requests_per_client": args.requests,
        "queue_limit": args.queue_limit,
        "volume": {"size_ijk": args.size, "bytes": len(volume), "source": "Testing/data/volumes/totalseg-ct.nii.gz"},
        **summarise(records, wall),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_1min_before": load_before},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    result["target_met"] = result["lost"] == 0 and result["server_errors_5xx"] == 0 and result["wrong_answers"] == 0
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("%d/%d ok, %.2f req/s, p50 %s s, p95 %s s, lost %d, 5xx %d, 503 %d -> %s", result["ok"],
             result["requests"], result["throughput_rps"], result["latency_p50_s"], result["latency_p95_s"],
             result["lost"], result["server_errors_5xx"], result["busy_503"], args.out)
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
