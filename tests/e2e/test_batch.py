"""The batch CLI (python -m hs_models.batch) against real ComfyUI servers on 127.0.0.1: a UI template spread over
two servers, one of them stopped mid-run (its pairs finish on the other), resume after an interruption, and bad
input (missing files, a template without the inputs, an address that is no ComfyUI, a ComfyUI without the pack).
"""

from __future__ import annotations

import csv
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from comfyui_hs_diffusion.hs_models.synthetic import Placement, random_figure
from hs_testing import PACK_DIR
from hs_testing.layouts import palette_png, photos, same_person_pairs
from hs_testing.server import start_server

TEMPLATE = PACK_DIR / "workflows" / "headswap_layout_stages.json"
SIZE = (320, 256)


def comfyui_dir() -> Path:
    """The ComfyUI tree the session's server runs (conftest puts it first on sys.path)."""
    import folder_paths

    return Path(folder_paths.__file__).parent


@pytest.fixture(scope="module")
def second_server(tmp_path_factory):
    server = start_server(comfyui_dir(), PACK_DIR, tmp_path_factory.mktemp("second_server"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """Six synthetic people: photo and palette layout each (the layout stages template needs both)."""
    folder = tmp_path_factory.mktemp("people")
    import torch

    g = torch.Generator().manual_seed(5)
    figures = [random_figure(g, long_hair=40.0 * (i % 2)) for i in range(6)]
    drawn = same_person_pairs(figures, [Placement(scale=0.6, shift=(-128, -60))] * 6, head_size=SIZE).head
    images = (photos(drawn) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    names = []
    for i, (d, image) in enumerate(zip(drawn, images, strict=True)):
        Image.fromarray(image).save(folder / f"person{i}.png")
        Image.fromarray(palette_png(d.labels.numpy())).save(folder / f"person{i}_layout.png")
        names.append(f"person{i}")
    return folder, names


def write_csv(path, rows, columns=("head", "body", "head_layout", "body_layout")):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def pair_rows(names, count):
    rows = []
    for i in range(count):
        h, b = names[i % len(names)], names[(i + 1 + i // len(names)) % len(names)]  # all different
        rows.append((f"{h}.png", f"{b}.png", f"{h}_layout.png", f"{b}_layout.png"))
    return rows


def batch_command(*args):
    return [sys.executable, "-m", "hs_models.batch", "--no-progress", *map(str, args)]


def run_batch(*args, timeout=300):
    return subprocess.run(batch_command(*args), cwd=PACK_DIR, capture_output=True, text=True, timeout=timeout)


def records(output):
    return {p.parent.name: json.loads(p.read_text()) for p in output.glob("*/record.json")}


def test_pairs_spread_over_two_servers_and_one_stopped_mid_run_finishes_on_the_other(
    comfy_server, second_server, people, tmp_path
):
    folder, names = people
    pairs = write_csv(folder / "pairs_spread.csv", pair_rows(names, 8))
    output = tmp_path / "out"
    process = subprocess.Popen(
        batch_command("--pairs", pairs, "--template", TEMPLATE, "--output", output, "--server", comfy_server.url,
                      "--server", second_server.url, "--seed", 3, "--retries", 1, "--retry-pause", 0.5),
        cwd=PACK_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        # stop the second server while it runs one of our prompts, after it finished at least one pair
        while time.monotonic() < deadline:
            done_there = [r for r in records(output).values() if r["server"] == second_server.url]
            if done_there and second_server.get("/queue").json()["queue_running"]:
                second_server.process.kill()
                second_server.process.wait(30)
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.02)
        else:
            pytest.fail("the second server never ran a pair")
        out, err = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "8 pairs: 8 done (0 from an earlier run), 0 failed" in err
    assert f"giving up on {second_server.url}; its pairs finish on the other servers" in err
    found = records(output)
    assert len(found) == 8 and all(r["status"] == "ok" for r in found.values()), found
    servers = [r["server"] for r in found.values()]
    assert servers.count(second_server.url) >= 1 and servers.count(comfy_server.url) >= 2
    moved = [r for r in found.values() if r["attempt"] == 2]
    assert moved and all(r["server"] == comfy_server.url for r in moved)  # the pair it was running
    summary = json.loads((output / "summary.json").read_text())
    assert summary["servers_given_up"] == [second_server.url] and summary["done"] == 8
    record = next(iter(found.values()))
    assert record["seed"] is None or record["seed"] == 3  # the layout template has no seed input
    assert record["files"]["head"].endswith(".png") and record["timings"]["total_s"] > 0
    assert record["settings"]["5 Neck Align (HeadSwap)"]["mode"] == "auto"
    for r in found.values():  # the outputs are real images of the body's size
        saved = [name for name in r["outputs"] if name.endswith(".png")]
        assert saved, r
        image = np.asarray(Image.open(output / r["id"] / saved[0]))
        assert image.shape[:2] == SIZE


def test_an_interrupted_batch_resumes_without_redoing_finished_pairs(comfy_server, people, tmp_path):
    folder, names = people
    pairs = write_csv(folder / "pairs_resume.csv", pair_rows(names, 6))
    output = tmp_path / "out"
    args = ("--pairs", pairs, "--template", TEMPLATE, "--output", output, "--server", comfy_server.url)
    process = subprocess.Popen(batch_command(*args), cwd=PACK_DIR, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(records(output)) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted: the same command resumes the batch" in err
    first = {k: (output / k / "record.json").stat().st_mtime_ns for k in records(output)}
    assert 2 <= len(first) < 6
    result = run_batch(*args)
    assert result.returncode == 0, result.stderr
    assert f"6 pairs: 6 done ({len(first)} from an earlier run), 0 failed" in result.stderr
    assert f"resuming: {len(first)} of 6 pairs are already done" in result.stderr
    assert {k: (output / k / "record.json").stat().st_mtime_ns for k in first} == first  # untouched
    assert len(records(output)) == 6
    result = run_batch(*args)  # nothing left: nothing is sent
    assert "6 pairs: 6 done (6 from an earlier run), 0 failed" in result.stderr


def test_missing_files_and_a_template_without_the_inputs_are_per_pair_errors(comfy_server, people, tmp_path):
    folder, names = people
    rows = pair_rows(names, 2) + [("nobody.png", f"{names[0]}.png", f"{names[0]}_layout.png", f"{names[0]}_layout.png")]  # fmt: skip
    pairs = write_csv(folder / "pairs_bad.csv", rows)
    output = tmp_path / "out"
    result = run_batch("--pairs", pairs, "--template", TEMPLATE, "--output", output, "--server", comfy_server.url)
    assert result.returncode == 1
    assert "3 pairs: 2 done (0 from an earlier run), 1 failed" in result.stderr
    bad = [r for r in records(output).values() if r["status"] == "error"]
    assert len(bad) == 1 and "head file not found: " in bad[0]["error"] and "nobody.png" in bad[0]["error"]
    # an API prompt with no "Head photo" loader: every pair says so, the batch still ends with a summary
    prompt = json.loads((PACK_DIR / "tests" / "e2e" / "prompts" / "headswap_layout_tools.api.json").read_text())
    api = tmp_path / "no_head.api.json"
    api.write_text(json.dumps(prompt))
    result = run_batch("--pairs", pairs, "--template", api, "--output", tmp_path / "out2", "--server", comfy_server.url)
    assert result.returncode == 1
    assert "3 pairs: 0 done (0 from an earlier run), 3 failed" in result.stderr
    errors = [r["error"] for r in records(tmp_path / "out2").values()]
    assert sum("template: the template has no image input for 'head'" in e for e in errors) == 2, errors
    summary = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert len(summary["failed"]) == 3


def test_a_server_that_is_not_comfyui_or_lacks_the_pack_is_refused_before_any_pair_is_sent(
    comfy_server, people, tmp_path, tmp_path_factory
):
    folder, names = people
    pairs = write_csv(folder / "pairs_servers.csv", pair_rows(names, 2))
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>a web server</html>")

        def log_message(self, *args):
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        other = f"http://127.0.0.1:{web.server_address[1]}"
        before = len(comfy_server.get("/history").json())
        result = run_batch("--pairs", pairs, "--template", TEMPLATE, "--output", tmp_path / "o",
                           "--server", comfy_server.url, "--server", other)  # fmt: skip
        assert result.returncode == 2
        assert f"{other} is not a ComfyUI server (GET /system_stats did not answer JSON)" in result.stderr
        assert hits == ["/system_stats"]
        assert len(comfy_server.get("/history").json()) == before  # nothing was sent
        assert not (tmp_path / "o").exists()
    finally:
        web.shutdown()
    # a real ComfyUI without custom nodes
    bare = start_server(
        comfyui_dir(), PACK_DIR, tmp_path_factory.mktemp("bare"), extra_args=["--disable-all-custom-nodes"]
    )
    try:
        result = run_batch("--pairs", pairs, "--template", TEMPLATE, "--output", tmp_path / "o", "--server", bare.url)
        assert result.returncode == 2
        assert f"{bare.url} runs ComfyUI 0.3.75 without the HS-Diffusion pack" in result.stderr
        assert bare.get("/history").json() == {}
    finally:
        bare.stop()
    result = run_batch("--pairs", pairs, "--template", TEMPLATE, "--output", tmp_path / "o", "--server", "127.0.0.1:9")
    assert result.returncode == 2 and "http://127.0.0.1:9 does not answer" in result.stderr
    assert requests.get(comfy_server.url + "/system_stats", timeout=10).ok and os.path.isdir(PACK_DIR)


def test_in_process_runs_the_same_template_without_a_server(people, tmp_path):
    folder, names = people
    pairs = write_csv(folder / "pairs_in_process.csv", pair_rows(names, 2))
    packs, base = tmp_path / "packs", tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    packs.mkdir()
    (packs / "ComfyUI-HS-Diffusion").symlink_to(PACK_DIR, target_is_directory=True)
    paths = tmp_path / "paths.yaml"
    paths.write_text(f"batch_tests:\n    custom_nodes: {packs}\n")
    comfy_args = f"--cpu --base-directory {base} --extra-model-paths-config {paths}"
    output = tmp_path / "out"
    result = run_batch("--pairs", pairs, "--template", TEMPLATE, "--output", output, "--in-process", comfyui_dir(),
                       "--comfy-args", comfy_args)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 pairs: 2 done (0 from an earlier run), 0 failed" in result.stderr
    found = records(output)
    assert {r["server"] for r in found.values()} == {"in-process"}
    for r in found.values():
        assert r["timings"]["execution_s"] > 0 and r["settings"]["5 Neck Align (HeadSwap)"]["mode"] == "auto"
        saved = [name for name in r["outputs"] if name.endswith(".png")]
        assert np.asarray(Image.open(output / r["id"] / saved[0])).shape[:2] == SIZE
