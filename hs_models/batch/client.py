"""A ComfyUI server seen through its HTTP API (standard library only: the batch runs on machines without
ComfyUI): upload an image, queue a prompt, follow it in /history, fetch its files."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

PACK_NODE = "HeadSwapPasteBack"  # any node of the pack: its presence in /object_info means the pack loaded


class ServerGone(ConnectionError):
    """The server stopped answering (connection refused or reset, timeout, 5xx, a prompt it forgot)."""


class PromptFailed(RuntimeError):
    """The server ran or rejected the prompt and reported an error: the pair's fault, not the server's."""


class NotUsable(RuntimeError):
    """The address answers but is not a ComfyUI server with the pack (checked before any pair is sent)."""


class ComfyClient:
    def __init__(self, url: str, timeout: float = 30.0, poll_interval: float = 0.2):
        url = url.strip().rstrip("/")
        if "://" not in url:
            url = "http://" + url
        self.url = url
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.client_id = uuid.uuid4().hex

    def __repr__(self) -> str:
        return f"ComfyClient({self.url})"

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _request(self, route: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
        request = urllib.request.Request(self.url + route, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (http(s) only)
                return response.read()
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", "replace")
            if e.code >= 500:
                raise ServerGone(f"{self.url}{route} answered {e.code}: {body[:300]}") from None
            raise PromptFailed(_http_error_message(route, e.code, body)) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServerGone(f"{self.url} is not reachable ({reason})") from None

    def _json(self, route: str, payload: dict | None = None):
        data = None if payload is None else json.dumps(payload).encode()
        raw = self._request(route, data, {"Content-Type": "application/json"} if data else None)
        return json.loads(raw)

    # -- checks -----------------------------------------------------------------------------------------------

    def check(self) -> dict:
        """/object_info of a ComfyUI server that has the pack; NotUsable (clear message) or ServerGone otherwise."""
        try:
            stats = self._json("/system_stats")
        except PromptFailed as e:
            raise NotUsable(f"{self.url} is not a ComfyUI server (GET /system_stats: {e})") from None
        except json.JSONDecodeError:
            raise NotUsable(f"{self.url} is not a ComfyUI server (GET /system_stats did not answer JSON)") from None
        if not isinstance(stats, dict) or "system" not in stats or "devices" not in stats:
            raise NotUsable(f"{self.url} is not a ComfyUI server (GET /system_stats answered {str(stats)[:200]})")
        version = stats["system"].get("comfyui_version", "?")
        object_info = self._json("/object_info")
        if PACK_NODE not in object_info:
            raise NotUsable(
                f"{self.url} runs ComfyUI {version} without the HS-Diffusion pack (no {PACK_NODE} node in its "
                f"/object_info): install the pack into that server's custom_nodes folder and restart it, or look "
                f"for 'IMPORT FAILED' in its start-up log"
            )
        return object_info

    # -- one prompt -------------------------------------------------------------------------------------------

    def upload(self, path: Path, name: str) -> str:
        """Upload ``path`` into the server's input folder as ``name``; returns the value for LoadImage's input."""
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'.encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="type"\r\n\r\ninput\r\n'.encode(),
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + Path(path).read_bytes()
            + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        raw = self._request(
            "/upload/image", b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        answer = json.loads(raw)
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    def queue(self, prompt: dict) -> str:
        answer = self._json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        return answer["prompt_id"]

    def wait(self, prompt_id: str, on_progress=None, lost_after: float = 10.0) -> dict:
        """Poll /history until the prompt finished; returns its history entry (PromptFailed on an error).

        A prompt that is neither in the history nor in the queue for ``lost_after`` seconds was lost (the server
        restarted): ServerGone, so the pair runs again somewhere."""
        missing_since = None
        last_queue_check = 0.0
        while True:
            entry = self._json(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") == "error" or not status.get("completed"):
                    raise PromptFailed(execution_error(entry))
                return entry
            now = time.monotonic()
            if entry is None and now - last_queue_check > 1.0:
                last_queue_check = now
                queue = self._json("/queue")
                queued = {item[1] for key in ("queue_running", "queue_pending") for item in queue.get(key, [])}
                if prompt_id in queued:
                    missing_since = None
                elif missing_since is None:
                    missing_since = now
                elif now - missing_since > lost_after:
                    raise ServerGone(f"{self.url} forgot prompt {prompt_id} (restarted?)")
            if on_progress is not None:
                on_progress()
            time.sleep(self.poll_interval)

    def download(self, image: dict, target: Path) -> Path:
        query = urllib.parse.urlencode(
            {
                "filename": image["filename"],
                "subfolder": image.get("subfolder", ""),
                "type": image.get("type", "output"),
            }
        )
        target.write_bytes(self._request(f"/view?{query}"))
        return target


def execution_error(entry: dict) -> str:
    """The execution_error of a history entry as one line: node, type, message."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return (
                f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_type')}: "
                f"{data.get('exception_message', '').strip()}"
            )
        if kind == "execution_interrupted":
            return f"interrupted on the server at node {data.get('node_id')} ({data.get('node_type')})"
    return "the server reported the prompt as not completed"


def _http_error_message(route: str, code: int, body: str) -> str:
    """A 4xx answer as one line; /prompt validation errors name each node and input."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return f"{route} answered {code}: {body[:300]}"
    if not isinstance(data, dict):
        return f"{route} answered {code}: {body[:300]}"
    parts = [str((data.get("error") or {}).get("message", "")).strip()] if isinstance(data.get("error"), dict) else []
    for node_id, node_error in (data.get("node_errors") or {}).items():
        for error in node_error.get("errors", []):
            parts.append(
                f"node {node_id} ({node_error.get('class_type')}): {error.get('message')}: {error.get('details')}"
            )
    return (
        f"{route} answered {code}: " + "; ".join(p for p in parts if p)
        if parts
        else f"{route} answered {code}: {body[:300]}"
    )
