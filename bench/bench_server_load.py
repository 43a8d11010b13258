"""Bounded load test of `tevia serve` on loopback; writes bench/server_load.json.

Starts the real server (`python -m tevia.commands.cli serve`, a random token, a small queue limit) on a
free 127.0.0.1 port, then N client threads each send M POST /v1/segment requests one after the
other (no retry) with a real CT (by default the whole TotalSegmentator example CT, 122x101x30,
.nii.gz) and one prompt. Records per request the HTTP status and the latency; reports how many
requests were admitted and answered, refused with 503 (queue or upload slots full), lost
(transport errors) or answered with another 5xx, whether each answer's labels were right, and
the server's resident memory: idle after loading the model, and its peak (VmHWM) over the run.
It stops by itself: no new request after --time-limit seconds, a per-request timeout, and the
server is stopped at the end. Target: nothing lost, no 5xx other than 503, every answer right.

    python bench/bench_server_load.py                                   # default model, 8 clients x 2, queue 2
    python bench/bench_server_load.py --model tiny --clients 16 --requests 4 --queue-limit 16
"""

from __future__ import annotations

import argparse
import base64
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

REPO = Path(__file__).resolve().parents[1]
VOLUME = REPO / "Testing" / "data" / "volumes" / "totalseg-ct.nii.gz"
PROMPTS = ["liver", "spleen", "left kidney", "right kidney", "aorta", "stomach", "lung", "heart"]
log = logging.getLogger("bench_server_load")


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


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak so far) of a process, in MiB (Linux /proc)."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                values[key] = round(int(line.split()[1]) / 1024, 1)
    return values


def start_server(model: str, port: int, token: str, args: argparse.Namespace, temp: Path) -> subprocess.Popen:
    env = {**os.environ, "TEVIA_SERVER_TOKEN": token, "PYTHONPATH": str(REPO / "TeViASegment"),
           "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "tevia.commands.cli", "serve", "--model", model, "--device", args.device,
               "--port", str(port), "--queue-limit", str(args.queue_limit), "--temp-dir", str(temp / "server"),
               "--request-timeout", str(args.request_timeout)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(temp / "server.log", "w"))
    deadline = time.monotonic() + 180
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
    raise RuntimeError("the server did not answer /v1/health within 180 s")


def multipart(volume: bytes, prompt: str) -> tuple[bytes, str]:
    boundary = f"bench{secrets.token_hex(8)}"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{prompt}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="volume"; filename="ct.nii.gz"\r\n'
            f'Content-Type: application/octet-stream\r\n\r\n').encode() + volume + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def answer_ok(payload: bytes, prompt: str) -> bool:
    """Whether a 200 answer is API 2 JSON with the prompt as label 1 and a gzip labelmap."""
    try:
        answer = json.loads(payload)
        labelmap = base64.b64decode(answer["labelmap"]["data"])
    except (ValueError, KeyError, TypeError):
        return False
    return answer.get("api") == 2 and answer.get("labels") == {"1": prompt} and labelmap[:2] == b"\x1f\x8b"


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
                record["answer_ok"] = answer_ok(payload, prompt)
            connection.close()
        except (OSError, http.client.HTTPException) as error:
            record["status"] = "lost"
            record["error"] = f"{type(error).__name__}: {error}"
        record["seconds"] = time.perf_counter() - began
        records.append(record)


def summarise(records: list[dict], wall: float) -> dict:
    done = [r for r in records if r["status"] == 200]
    refused = [r for r in records if r["status"] == 503]
    latencies = np.array([r["seconds"] for r in done])
    statuses: dict[str, int] = {}
    for record in records:
        statuses[str(record["status"])] = statuses.get(str(record["status"]), 0) + 1
    server_errors = sum(n for s, n in statuses.items() if s.isdigit() and int(s) >= 500 and s != "503")
    return {
        "requests": len(records),
        "admitted_and_answered_200": len(done),
        "wrong_answers": sum(1 for r in done if not r.get("answer_ok")),
        "refused_503": len(refused),
        "refused_503_max_seconds": round(max((r["seconds"] for r in refused), default=0.0), 3),
        "lost": statuses.get("lost", 0),
        "server_errors_5xx_other_than_503": server_errors,
        "not_sent_after_time_limit": statuses.get("not_sent", 0),
        "status_counts": statuses,
        "wall_seconds": round(wall, 3),
        "throughput_rps": round(len(done) / wall, 3) if wall else 0.0,
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 3) if len(done) else None,
        "latency_max_s": round(float(latencies.max()), 3) if len(done) else None,
        "errors": sorted({r["error"] for r in records if "error" in r})[:10],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help='"default", "tiny" (random-weight test model) or a folder')
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="requests per client, sent one after the other")
    parser.add_argument("--volume", type=Path, default=VOLUME, help="NIfTI or NRRD file sent by every request")
    parser.add_argument("--queue-limit", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=60.0, help="no new request after this many seconds")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads of the server")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "server_load.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    load_before = round(os.getloadavg()[0], 2)
    volume = args.volume.read_bytes()
    with tempfile.TemporaryDirectory(prefix="tevia-bench-") as folder:
        temp = Path(folder)
        model, description = model_folder(args.model, temp)
        token, port = secrets.token_urlsafe(32), free_port()
        server = start_server(model, port, token, args, temp)
        try:
            idle = memory_mb(server.pid)
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
            after = memory_mb(server.pid)
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
        "volume": {"file": args.volume.name, "bytes": len(volume)},
        **summarise(records, wall),
        "server_memory_mb": {"idle_after_model_load": idle["VmRSS"], "after_run": after["VmRSS"],
                             "peak_resident": after["VmHWM"]},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_1min_before": load_before},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    result["target_met"] = (result["lost"] == 0 and result["server_errors_5xx_other_than_503"] == 0
                            and result["wrong_answers"] == 0)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("%d requests: %d admitted and answered, %d refused (503), %d lost, %d other 5xx; server peak RSS %.0f MiB "
             "-> %s", result["requests"], result["admitted_and_answered_200"], result["refused_503"], result["lost"],
             result["server_errors_5xx_other_than_503"], after["VmHWM"], args.out)
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
