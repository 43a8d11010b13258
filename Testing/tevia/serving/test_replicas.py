"""`tevia serve --replicas`: the server's app on a real Ray Serve with two model replicas.

One Ray (2 CPUs) and one Serve application (the bundled default model, two replicas of one
thread, the test token) are started for the module: Serve took about a minute to start on the
loaded 2-core machine. The last test kills a replica and waits for Serve to restart it.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from server_helpers import TOKEN, auth, cropped_volume, read_answer, real_volume, same_geometry, wait_until

ray = pytest.importorskip("ray", reason="tevia[ray] is part of the dev extra")
from ray import serve  # noqa: E402

from tevia.serving.replica_backend import volume_id  # noqa: E402
from tevia.serving.replicas import APP_NAME, ReplicaOptions, build_application  # noqa: E402
from tevia.serving.server.settings import ServerSettings  # noqa: E402

REPLICAS = 2
SLOW_PROMPTS = ["liver", "spleen", "left lung", "right lung", "left kidney", "right kidney", "stomach", "heart"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(base URL, replica handle) of the Serve application on 127.0.0.1."""
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = ServerSettings(token=TOKEN, queue_limit=4, max_uploads=16, temp_dir=tmp_path_factory.mktemp("replica-tmp"))
        serve.run(build_application(ReplicaOptions(model="default", replicas=REPLICAS, threads=1), settings),
                  name=APP_NAME, route_prefix="/", blocking=False)
        yield f"http://127.0.0.1:{port}", serve.get_deployment_handle("ModelReplica", app_name=APP_NAME)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def session():
    """The bundled default model in this process (one thread, as each replica): the local engine."""
    import torch

    from tevia.inference.session import InferenceSession

    torch.set_num_threads(1)
    session = InferenceSession(2**30)
    session.load("default", "cpu")
    return session


def _crop(image: sitk.Image, shift: int) -> sitk.Image:
    return image[10 + shift: 70 + shift, 20:80, 4:12]


def _nrrd(image: sitk.Image, folder: Path, name: str) -> bytes:
    path = folder / f"{name}.nrrd"
    sitk.WriteImage(image, str(path), useCompression=True)
    return path.read_bytes()


def _segment(url: str, data: bytes, prompts: list[str], options: str | None = None,
             token: str = TOKEN) -> httpx.Response:
    fields = {"text": prompts, **({"options": options} if options else {})}
    return httpx.post(f"{url}/v1/segment", headers=auth(token), files={"volume": ("v.nrrd", data)}, data=fields,
                      timeout=300)


def _replica_pids() -> set[int]:
    """Processes of live model replicas (Ray titles them ray::ServeReplica:<app>:<deployment>; Linux /proc)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if entry.name.isdigit() and title.startswith(f"ray::ServeReplica:{APP_NAME}:ModelReplica".encode()):
            pids.add(int(entry.name))
    return pids


def test_two_replicas_answer_like_the_local_engine_and_check_the_token(cluster, session, tmp_path):
    url, handle = cluster
    assert httpx.get(f"{url}/v1/health").json()["replicas"] == REPLICAS  # no token needed
    assert httpx.get(f"{url}/v1/info").status_code == 401
    assert httpx.get(f"{url}/v1/info", headers=auth("wrong-token-0123456789")).status_code == 401
    info = httpx.get(f"{url}/v1/info", headers=auth()).json()
    assert info["api"] == 2 and info["replicas"] == REPLICAS and info["limits"]["queue_limit"] == 4
    ct = sitk.ReadImage(str(real_volume("totalseg-ct.nii.gz")))
    volumes = [_crop(ct, shift) for shift in (0, 20, 40, 50)]
    uploads = [_nrrd(image, tmp_path, f"v{n}") for n, image in enumerate(volumes)]
    assert _segment(url, uploads[0], ["liver"], token="wrong-token-0123456789").status_code == 401
    with concurrent.futures.ThreadPoolExecutor(len(uploads)) as pool:
        answers = list(pool.map(lambda data: _segment(url, data, ["liver", "right lung"]), uploads))
    for image, answer in zip(volumes, answers):
        assert answer.status_code == 200, answer.text
        payload, labelmap = read_answer(answer, tmp_path)
        assert payload["labels"] == {"1": "liver", "2": "right lung"}
        assert same_geometry(labelmap, image)
        expected = session.segment(image, ["liver", "right lung"]).labelmap
        assert np.array_equal(sitk.GetArrayFromImage(labelmap), sitk.GetArrayFromImage(expected))
    # both replicas took part: the volumes' ids are spread over both processes
    pids = {handle.options(multiplexed_model_id=volume_id(data)).pid.remote().result() for data in uploads}
    assert pids == _replica_pids() and len(pids) == REPLICAS


def test_the_slicer_client_segments_and_clicks_on_the_replicas_as_on_one_server(cluster, session):
    from TeViASegmentLib.remote_client import RemoteClient
    from tevia.volume.geometry import ijk_to_ras

    url, _ = cluster
    image = _crop(sitk.ReadImage(str(real_volume("totalseg-ct.nii.gz"))), 30)
    volume, matrix = sitk.GetArrayFromImage(image), ijk_to_ras(image)
    client = RemoteClient(url, TOKEN, timeout=120)
    assert client.info()["replicas"] == REPLICAS  # the API version check passes
    first = client.segment_answer(volume, matrix, ["liver"], {})
    assert np.array_equal(first.labelmap, sitk.GetArrayFromImage(session.segment(image, ["liver"]).labelmap))
    time.sleep(1.0)
    centre = (matrix @ [30, 30, 4, 1])[:3].tolist()  # a voxel of slice K=4, in RAS
    click = client.segment_answer(volume, matrix, ["liver"], {}, clicks=[[{"ras": centre, "positive": True}]])
    assert click.fields["refined_slices"] == [4] and click.fields["timings"]["cache_hit"] == 1.0


def test_a_volume_prompted_again_lands_on_the_replica_holding_its_features(cluster, tmp_path):
    url, _ = cluster
    ct = sitk.ReadImage(str(real_volume("totalseg-ct.nii.gz")))
    uploads = [_nrrd(_crop(ct, shift), tmp_path, f"r{shift}") for shift in (5, 25, 45)]
    for data in uploads:
        first = _segment(url, data, ["liver"]).json()
        assert first["timings"]["cache_hit"] == 0.0
    time.sleep(1.0)  # as a user would: the replicas' volume ids reach the router meanwhile
    hits = 0
    reprompts = ["spleen", "left lung", "bilateral pulmonary infection"]
    for prompt in reprompts:
        for data in uploads:
            answer = _segment(url, data, [prompt])
            assert answer.status_code == 200, answer.text
            hits += answer.json()["timings"]["cache_hit"] == 1.0
    assert hits == len(reprompts) * len(uploads)


def test_past_capacity_the_replicas_answer_503_with_retry_after(cluster, tmp_path):
    url, _ = cluster
    ct = sitk.ReadImage(str(real_volume("totalseg-ct.nii.gz")))
    # 2 running + 4 waiting fit; 12 distinct volumes sent at once (16 uploads may arrive together) overflow it,
    # each of them slow enough (8 prompts, one slice per batch) to be running or waiting when the last arrive
    uploads = [_nrrd(_crop(ct, shift), tmp_path, f"c{shift}") for shift in range(0, 48, 4)]
    with concurrent.futures.ThreadPoolExecutor(len(uploads)) as pool:
        answers = list(pool.map(lambda data: _segment(url, data, SLOW_PROMPTS, '{"batch_size": 1}'), uploads))
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) == {200, 503}, statuses
    refused = [answer for answer in answers if answer.status_code == 503]
    assert all(int(answer.headers["retry-after"]) >= 1 and "busy" in answer.json()["detail"] for answer in refused)


def test_a_replica_killed_mid_request_does_not_lose_it_and_the_service_recovers(cluster, session, tmp_path):
    url, handle = cluster
    image = cropped_volume("totalseg-ct.nii.gz")
    data = _nrrd(image, tmp_path, "killed")
    assert _segment(url, data, ["liver"]).status_code == 200  # a replica now holds this volume
    victim = handle.options(multiplexed_model_id=volume_id(data)).pid.remote().result()
    before = _replica_pids()
    assert victim in before
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # another slice axis and 8 prompts, one slice per batch: seconds of work on the replica, which is killed
        pending = pool.submit(_segment, url, data, SLOW_PROMPTS, '{"slice_axis": "coronal", "batch_size": 1}')
        assert wait_until(lambda: httpx.get(f"{url}/v1/health").json()["busy"], 30)
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        answer = pending.result(timeout=300)
    assert answer.status_code == 200, answer.text  # sent again to the other replica
    assert httpx.get(f"{url}/v1/health").json()["resent"] == 1
    payload, labelmap = read_answer(answer, tmp_path)
    from tevia.inference.segment_options import SegmentOptions

    expected = session.segment(image, SLOW_PROMPTS, SegmentOptions(slice_axis="coronal", batch_size=1)).labelmap
    assert np.array_equal(sitk.GetArrayFromImage(labelmap), sitk.GetArrayFromImage(expected))
    # Serve starts a new replica in place of the killed one
    assert wait_until(lambda: len(_replica_pids()) == REPLICAS and victim not in _replica_pids(), 180)
    assert _segment(url, data, ["spleen"]).status_code == 200
