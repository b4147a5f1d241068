"""A clean start-up: nothing of this pack fails or raises while ComfyUI loads it.

ComfyUI 0.3.75 itself reports IMPORT FAILED for its two core audio node files in this set-up (they import
torchaudio, which has no build for torch 2.14; scripts/start.sh marks those lines as expected). Anything else
failing at start-up, and any traceback that mentions the pack, is a failure here.
"""

from __future__ import annotations

import re

from hs_testing.server import PACK_FOLDER_NAME

EXPECTED_CORE_FAILURES = {"nodes_audio.py", "nodes_audio_encoder.py"}  # torchaudio missing


def _startup_log(server) -> str:
    """The log up to the first queued prompt: what a user sees when the server starts."""
    return server.log().split("\ngot prompt\n", 1)[0]


def _tracebacks(log: str) -> list[str]:
    """Each traceback with the lines up to the next blank line (its frames and the exception)."""
    return re.findall(r"Traceback \(most recent call last\):\n(?:.+\n)+", log)


def test_nothing_of_the_pack_fails_at_start_up(comfy_server):
    log = _startup_log(comfy_server)
    assert "Import times for custom nodes:" in log, log[-3000:]
    pack_lines = [line for line in log.splitlines() if PACK_FOLDER_NAME in line]
    assert pack_lines and all("IMPORT FAILED" not in line for line in pack_lines), pack_lines
    failed = set(re.findall(r"^IMPORT FAILED: (\S+)", log, flags=re.MULTILINE))
    assert failed <= EXPECTED_CORE_FAILURES, f"unexpected import failures: {failed - EXPECTED_CORE_FAILURES}"
    for traceback in _tracebacks(log):
        assert PACK_FOLDER_NAME not in traceback and "comfyui_hs_diffusion" not in traceback, traceback
        assert "No module named 'torchaudio'" in traceback, traceback
    assert "comfy_entrypoint" not in log  # ComfyUI names the entry point only when calling it failed
    assert comfy_server.get("/object_info/HeadSwapNeckAlign").json()  # and the nodes are there
