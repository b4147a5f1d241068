"""Runs the pairs of a batch through the template on one or more ComfyUI servers.

One worker per server takes the next pair, uploads its files, queues the prompt and waits for it, so each server
has one queue and faster servers take more pairs. A server that goes away hands its pair back to the others and
is tried again a few times (with growing pauses) before it is given up. Every finished pair leaves
``<output>/<pair id>/record.json`` (written last, atomically): a later run with the same output folder skips the
pairs recorded as done, which is how an interrupted batch resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..log import logger
from .client import ComfyClient, PromptFailed, ServerGone
from .pairs import Pair
from .template import apply_settings, find_input_node, seeds, set_seed, settings_of

RECORD = "record.json"
SUMMARY = "summary.json"
WARNINGS_KEY = "hs_warnings"  # the pack's per-node warnings in a node's UI output (nodes/ui_warnings.py)


@dataclass
class BatchOptions:
    template_path: str
    output: Path
    inputs: dict[str, str] = field(default_factory=dict)  # column → node id or title prefix
    seed: int | None = None
    settings: list[tuple[str, str, object]] = field(default_factory=list)
    retries: int = 3  # reconnection attempts of a server that went away
    retry_pause: float = 2.0  # seconds before the first reconnection attempt; doubles each time
    max_attempts: int = 3  # servers a pair may take down before it is recorded as failed
    progress: bool = True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, data: dict) -> None:
    """Write ``path`` whole or not at all (a crash leaves the previous file or none)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, default=str))
    os.replace(partial, path)


def build_prompt(base: dict, pair: Pair, options: BatchOptions) -> tuple[dict, dict[str, str]]:
    """The pair's prompt (seed and settings applied) and {column: node id} of its files; ValueError on a
    template without the inputs this pair needs."""
    prompt = json.loads(json.dumps(base))
    nodes = {column: find_input_node(prompt, column, options.inputs.get(column)) for column in pair.files}
    seed = pair.seed if pair.seed is not None else options.seed
    if seed is not None:
        set_seed(prompt, seed)
    apply_settings(prompt, options.settings)
    return prompt, nodes


def upload_name(path: Path) -> str:
    """A name for the server's input folder that two different files never share."""
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:12]
    return f"hs_batch_{digest}_{path.name}"


class _Work:
    """The shared to-do list: pairs waiting, pairs running; a pair handed back wakes the idle workers."""

    def __init__(self, pairs: list[Pair]):
        self.waiting: deque[tuple[Pair, int]] = deque((p, 0) for p in pairs)
        self.running = 0
        self.stop = threading.Event()
        self.cond = threading.Condition()

    def take(self) -> tuple[Pair, int] | None:
        with self.cond:
            while not self.waiting and self.running and not self.stop.is_set():
                self.cond.wait(0.5)
            if not self.waiting or self.stop.is_set():
                return None
            self.running += 1
            return self.waiting.popleft()

    def done(self, back: tuple[Pair, int] | None = None) -> None:
        with self.cond:
            self.running -= 1
            if back is not None:
                self.waiting.appendleft(back)
            self.cond.notify_all()


class BatchRun:
    def __init__(self, clients: list[ComfyClient], prompt: dict, pairs: list[Pair], options: BatchOptions):
        self.clients = clients
        self.prompt = prompt
        self.pairs = pairs
        self.options = options
        self.results: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.bar = None

    # -- one pair ---------------------------------------------------------------------------------------------

    def _record(self, pair: Pair, status: str, **fields) -> dict:
        record = {
            "id": pair.id,
            "status": status,
            "files": {column: str(path) for column, path in pair.files.items()},
            "template": self.options.template_path,
            **fields,
        }
        folder = self.options.output / pair.id
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / RECORD, record)
        with self.lock:
            self.results[pair.id] = record
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(failed=sum(r["status"] != "ok" for r in self.results.values()))
        if status != "ok":
            logger.warning("pair %s failed: %s", pair.id, record.get("error"))
        return record

    def _fail(self, pair: Pair, error: str, **fields) -> dict:
        return self._record(pair, "error", error=error, **fields)

    def run_pair(self, client: ComfyClient, pair: Pair, attempt: int) -> None:
        """Run one pair on ``client``; ServerGone propagates (the caller hands the pair to another server)."""
        problems = pair.problems + pair.missing_files()
        if problems:
            self._fail(pair, "; ".join(problems))
            return
        try:
            prompt, nodes = build_prompt(self.prompt, pair, self.options)
        except ValueError as e:
            self._fail(pair, f"template: {e}")
            return
        started = time.monotonic()
        timings = {"started_at": _now()}
        for column, node_id in nodes.items():
            prompt[node_id]["inputs"]["image"] = client.upload(pair.files[column], upload_name(pair.files[column]))
        timings["upload_s"] = round(time.monotonic() - started, 3)
        common = {
            "server": client.url,
            "attempt": attempt + 1,
            "seed": (lambda s: s[0] if len(s) == 1 else s or None)(seeds(prompt)),
            "inputs": {
                column: {"node": node_id, "value": prompt[node_id]["inputs"]["image"]}
                for column, node_id in nodes.items()
            },  # fmt: skip
            "settings": settings_of(prompt),
        }
        try:
            prompt_id = client.queue(prompt)
            common["prompt_id"] = prompt_id
            queued = time.monotonic()
            entry = client.wait(prompt_id)
        except PromptFailed as e:
            timings["total_s"] = round(time.monotonic() - started, 3)
            self._fail(pair, str(e), timings=timings, **common)
            return
        timings["run_s"] = round(time.monotonic() - queued, 3)
        timings["execution_s"] = _execution_seconds(entry)
        folder = self.options.output / pair.id
        folder.mkdir(parents=True, exist_ok=True)
        fetched = time.monotonic()
        outputs, warnings, ui = [], {}, {}
        for node_id, output in sorted(entry.get("outputs", {}).items()):
            for image in output.get("images", []):
                name = f"{node_id}_{image['type']}_{image['filename'].replace('/', '_')}"
                client.download(image, folder / name)
                outputs.append(name)
            if output.get(WARNINGS_KEY):
                warnings[node_id] = output[WARNINGS_KEY]
            rest = {k: v for k, v in output.items() if k not in ("images", WARNINGS_KEY)}
            if rest:
                ui[node_id] = rest
        timings["download_s"] = round(time.monotonic() - fetched, 3)
        timings["total_s"] = round(time.monotonic() - started, 3)
        timings["finished_at"] = _now()
        metrics = {k: v for k, v in ui.items() if "metric" in self.prompt.get(k, {}).get("class_type", "").lower()}
        self._record(pair, "ok", outputs=outputs, warnings=warnings, metrics=metrics, ui=ui, timings=timings, **common)

    # -- one server -------------------------------------------------------------------------------------------

    def _reconnect(self, client: ComfyClient) -> bool:
        pause = self.options.retry_pause
        for attempt in range(1, self.options.retries + 1):
            if self.work.stop.wait(pause):
                return False
            try:
                client.check()
                logger.warning("%s answers again (attempt %d); it takes pairs again", client.url, attempt)
                return True
            except Exception as e:  # noqa: BLE001 (any failure means: still not usable)
                logger.warning(
                    "%s still unavailable (attempt %d of %d): %s", client.url, attempt, self.options.retries, e
                )
            pause *= 2
        return False

    def _worker(self, client: ComfyClient) -> None:
        while True:
            job = self.work.take()
            if job is None:
                return
            pair, attempts = job
            try:
                self.run_pair(client, pair, attempts)
            except ServerGone as e:
                attempts += 1
                if attempts >= self.options.max_attempts:
                    self._fail(pair, f"{attempts} servers went away while running this pair; last: {e}")
                    self.work.done()
                else:
                    logger.warning("%s went away while running pair %s (%s); it goes to the next server", client.url, pair.id, e)  # fmt: skip
                    self.work.done((pair, attempts))
                if not self._reconnect(client):
                    logger.warning("giving up on %s; its pairs finish on the other servers", client.url)
                    with self.lock:
                        self.gone.append(client.url)
                    return
                continue
            except Exception as e:  # noqa: BLE001 (a pair's unexpected error must not stop the batch)
                logger.exception("pair %s: unexpected error", pair.id)
                self._fail(pair, f"{type(e).__name__}: {e}", server=client.url)
            self.work.done()

    # -- the batch --------------------------------------------------------------------------------------------

    def run(self) -> dict:
        output = self.options.output
        output.mkdir(parents=True, exist_ok=True)
        todo, resumed = [], 0
        for pair in self.pairs:
            record = read_record(output / pair.id)
            if record and record.get("status") == "ok":
                resumed += 1
                self.results[pair.id] = record
            else:
                todo.append(pair)
        if resumed:
            logger.info("resuming: %d of %d pairs are already done in %s", resumed, len(self.pairs), output)
        self.work = _Work(todo)
        self.gone: list[str] = []
        if self.options.progress:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=len(self.pairs), initial=resumed, unit="pair", desc="head swaps")
            except ImportError:
                self.bar = None
        threads = [threading.Thread(target=self._worker, args=(c,), daemon=True, name=c.url) for c in self.clients]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        except KeyboardInterrupt:
            self.work.stop.set()
            logger.warning("interrupted: the same command resumes the batch (finished pairs are kept)")
            raise
        finally:
            if self.bar is not None:
                self.bar.close()
        left = [pair for pair, _ in self.work.waiting]
        return self._summary(resumed, left)

    def _summary(self, resumed: int, left: list[Pair]) -> dict:
        done = [r for r in self.results.values() if r["status"] == "ok"]
        failed = [r for r in self.results.values() if r["status"] != "ok"]
        summary = {
            "pairs": len(self.pairs),
            "done": len(done),
            "resumed": resumed,
            "failed": {r["id"]: r.get("error") for r in failed},
            "not_run": [p.id for p in left],
            "servers_given_up": self.gone,
            "finished_at": _now(),
        }
        write_json(self.options.output / SUMMARY, summary)
        line = f"{len(self.pairs)} pairs: {len(done)} done ({resumed} from an earlier run), {len(failed)} failed"
        if left:
            line += f", {len(left)} not run (no server left; run the same command again to resume)"
        summary["line"] = line
        return summary


def _execution_seconds(entry: dict) -> float | None:
    stamps = {kind: data.get("timestamp") for kind, data in entry.get("status", {}).get("messages", [])}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    return round((end - start) / 1000.0, 3) if start and end else None
