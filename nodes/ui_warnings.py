"""Warnings shown on the node in the UI, not only in the server console.

Every warning the pack logs while a node runs (e.g. "no neck drawn", "skin tone not matched", "face moved back
onto the canvas") changes what the user gets, so it must reach the place the user looks. ``show_warnings_on_node``
wraps a node's ``execute``: the pack logger's WARNING records emitted by that call, in that thread, are collected
and returned as the node's UI output under ``WARNINGS_KEY`` (next to any preview the node returns). ComfyUI stores
the UI output in ``/history/<prompt_id>`` (``outputs[node_id]``) and sends it in the websocket ``executed``
message, where ``web/js/hs_warnings.js`` renders it on the node; the records still reach the console unchanged.

It is applied once, at registration (``nodes/__init__.py``), so every node of the pack gets it and nodes keep
logging with ``logger.warning`` as before.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from contextlib import contextmanager

from comfy_api.latest import io

from ..hs_models.log import logger

WARNINGS_KEY = "hs_warnings"
"""Key of the UI output that carries the warnings (a list of strings), as in ``/history`` and ``executed``."""

_WRAPPED = "_hs_shows_warnings"


class _ThreadCapture(logging.Handler):
    """Collects the formatted WARNING+ records logged from one thread (the one running the node)."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextmanager
def capture_warnings():
    """Yields the list the pack's warnings logged in this thread are appended to while the block runs."""
    handler = _ThreadCapture()
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def with_warnings(output, messages: list[str]):
    """``output`` (whatever ``execute`` returned) with ``messages`` added to its UI output; unchanged if none."""
    if not messages:
        return output
    if output is None:
        output = io.NodeOutput()
    elif isinstance(output, tuple):
        output = io.NodeOutput(*output)
    elif isinstance(output, dict):
        output = io.NodeOutput.from_dict(output)
    if not isinstance(output, io.NodeOutput):
        return output
    ui = output.ui
    if ui is None:
        ui = {}
    elif not isinstance(ui, dict):
        ui = ui.as_dict()
    output.ui = {**ui, WARNINGS_KEY: [*ui.get(WARNINGS_KEY, []), *messages]}
    return output


def show_warnings_on_node(node_cls: type[io.ComfyNode]) -> type[io.ComfyNode]:
    """Make ``node_cls.execute`` return the pack's warnings it logged as UI output (idempotent; returns the class)."""
    execute = node_cls.__dict__.get("execute")
    function = getattr(execute, "__func__", None)
    if function is None or getattr(function, _WRAPPED, False):
        return node_cls

    if inspect.iscoroutinefunction(function):
        # Concurrent async nodes share the thread: only sync nodes can be told apart safely.
        return node_cls

    @functools.wraps(function)
    def wrapped(cls, *args, **kwargs):
        with capture_warnings() as messages:
            output = function(cls, *args, **kwargs)
        return with_warnings(output, messages)

    setattr(wrapped, _WRAPPED, True)
    node_cls.execute = classmethod(wrapped)
    return node_cls
