"""A real ComfyUI server for the e2e tier: started on a free loopback port with this pack loaded."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests

PACK_FOLDER_NAME = "ComfyUI-HS-Diffusion"
MODEL_FOLDERS = ("headswap_parsing", "headswap_layout", "headswap_diffusion", "checkpoints")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ComfyServer:
    url: str
    base_dir: Path
    log_path: Path
    process: subprocess.Popen

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    def models_dir(self, folder: str) -> Path:
        path = self.base_dir / "models" / folder
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def get(self, route: str, **kwargs) -> requests.Response:
        return requests.get(self.url + route, timeout=30, **kwargs)

    def queue(self, prompt: dict) -> requests.Response:
        """POST /prompt; returns the raw response (400 responses carry validation errors)."""
        return requests.post(self.url + "/prompt", json={"prompt": prompt, "client_id": str(uuid.uuid4())}, timeout=30)

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """Poll /history until the prompt completed (successfully or not); returns its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").json().get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if not self.alive():
                raise RuntimeError(f"ComfyUI exited while running {prompt_id}:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        response = self.queue(prompt)
        if response.status_code != 200:
            raise AssertionError(f"prompt rejected ({response.status_code}): {response.text}")
        return self.wait(response.json()["prompt_id"], timeout)

    def output_files(self, entry: dict, node_id: str) -> list[Path]:
        images = entry["outputs"][node_id]["images"]
        return [self.base_dir / img["type"] / img["subfolder"] / img["filename"] for img in images]

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def error_message(entry: dict) -> str:
    """The execution_error message of a failed prompt's history entry ('' if none)."""
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_error":
            return f"{data.get('exception_type')}: {data.get('exception_message')}"
    return ""


def start_server(
    comfyui_dir: Path, pack_dir: Path, work: Path, startup_timeout: float = 180.0, extra_args: list[str] | None = None
) -> ComfyServer:
    """Start ``main.py --cpu`` with this pack (linked into a custom_nodes folder outside the ComfyUI tree)."""
    base = work / "base"
    for folder in ("custom_nodes", "input", "output"):  # custom_nodes must exist before start
        (base / folder).mkdir(parents=True)
    for folder in MODEL_FOLDERS:
        (base / "models" / folder).mkdir(parents=True)
    packs = work / "packs"
    packs.mkdir()
    (packs / PACK_FOLDER_NAME).symlink_to(pack_dir, target_is_directory=True)
    paths_yaml = work / "extra_model_paths.yaml"
    paths_yaml.write_text(f"headswap_tests:\n    custom_nodes: {packs}\n")
    port = free_port()
    log_path = work / "comfyui.log"
    command = [
        sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--disable-auto-launch", "--dont-print-server", "--disable-api-nodes",
        "--database-url", "sqlite:///:memory:", "--base-directory", str(base),
        "--extra-model-paths-config", str(paths_yaml), *(extra_args or []),
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=comfyui_dir, stdout=log, stderr=subprocess.STDOUT)
    server = ComfyServer(f"http://127.0.0.1:{port}", base, log_path, process)
    deadline = time.monotonic() + startup_timeout
    try:
        while True:
            if not server.alive():
                raise RuntimeError(f"ComfyUI exited during start-up:\n{server.log()[-4000:]}")
            try:
                if requests.get(server.url + "/system_stats", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"ComfyUI did not answer within {startup_timeout} s:\n{server.log()[-4000:]}")
            time.sleep(0.25)
    except BaseException:  # whatever ends the wait (even Ctrl-C), no server outlives it
        server.stop()
        raise
    return server


def copy_to_input(server: ComfyServer, source: Path, name: str | None = None) -> str:
    name = name or source.name
    shutil.copy(source, server.input_dir / name)
    return name
