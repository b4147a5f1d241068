"""ComfyUI inside the batch's own process: the same executor, validation, caching and nodes a server uses, without
HTTP. For one machine without a running server (``--in-process COMFYUI_DIR``); the pack must be installed in that
ComfyUI's custom_nodes (or a folder its extra_model_paths.yaml names), as for a server.

Speaks the interface of :class:`~.client.ComfyClient` (check, upload, queue, wait, download), so the batch runs
the same code path either way.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import uuid
from pathlib import Path

from .client import PACK_NODE, NotUsable, PromptFailed, _http_error_message, execution_error


class _Reporter:
    """What ComfyUI's executor reports to: a server with no client attached."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


class InProcessComfy:
    url = "in-process"

    def __init__(self, comfyui_dir: Path, comfy_args: list[str] | None = None):
        comfyui_dir = Path(comfyui_dir).resolve()
        if not (comfyui_dir / "comfy").is_dir() or not (comfyui_dir / "execution.py").is_file():
            raise NotUsable(f"--in-process: {comfyui_dir} is not a ComfyUI folder (no comfy/ and execution.py)")
        sys.path.insert(0, str(comfyui_dir))
        from comfy import cli_args

        # ComfyUI's own flags (e.g. --cpu, --base-directory, --extra-model-paths-config), set before the modules
        # that read them at import
        vars(cli_args.args).update(vars(cli_args.parser.parse_args(comfy_args or [])))
        import folder_paths
        import utils.extra_config

        default_yaml = comfyui_dir / "extra_model_paths.yaml"
        configs = [str(default_yaml)] if default_yaml.is_file() else []
        configs += [c for group in cli_args.args.extra_model_paths_config or [] for c in group]
        for config in configs:
            utils.extra_config.load_extra_path_config(config)
        for name, setter in (("output_directory", folder_paths.set_output_directory), ("input_directory", folder_paths.set_input_directory)):  # fmt: skip
            if getattr(cli_args.args, name):
                setter(str(Path(getattr(cli_args.args, name)).resolve()))
        import execution

        import nodes

        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        self._folder_paths, self._execution, self._nodes = folder_paths, execution, nodes
        self._executor = execution.PromptExecutor(
            _Reporter(), cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0}
        )
        self._results: dict[str, dict] = {}

    def check(self) -> dict:
        """/object_info as a server would answer it (built by the pack's nodes/object_info.py)."""
        import importlib.util

        path = Path(__file__).resolve().parents[2] / "nodes" / "object_info.py"
        spec = importlib.util.spec_from_file_location("hs_batch_object_info", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        info = module.object_info(self._nodes.NODE_CLASS_MAPPINGS, self._nodes.NODE_DISPLAY_NAME_MAPPINGS)
        if PACK_NODE not in info:
            raise NotUsable(
                f"the ComfyUI in {Path(self._folder_paths.base_path)} did not load the HS-Diffusion pack (no "
                f"{PACK_NODE} node): install the pack into its custom_nodes folder, or look for 'IMPORT FAILED' above"
            )
        return info

    def upload(self, path: Path, name: str) -> str:
        shutil.copyfile(path, Path(self._folder_paths.get_input_directory()) / name)
        return name

    def queue(self, prompt: dict) -> str:
        prompt_id = uuid.uuid4().hex
        valid, error, outputs, node_errors = asyncio.run(self._execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            raise PromptFailed(
                _http_error_message("/prompt", 400, json.dumps({"error": error, "node_errors": node_errors}))
            )
        self._executor.execute(prompt, prompt_id, {}, outputs)
        self._results[prompt_id] = {
            "status": {
                "status_str": "success" if self._executor.success else "error",
                "completed": self._executor.success,
                "messages": self._executor.status_messages,
            },
            "outputs": self._executor.history_result.get("outputs", {}),
        }
        return prompt_id

    def wait(self, prompt_id: str, on_progress=None, lost_after: float = 0.0) -> dict:
        entry = self._results.pop(prompt_id)
        if not entry["status"]["completed"]:
            raise PromptFailed(execution_error(entry))
        return entry

    def download(self, image: dict, target: Path) -> Path:
        folder = self._folder_paths.get_directory_by_type(image.get("type", "output"))
        shutil.copyfile(Path(folder) / image.get("subfolder", "") / image["filename"], target)
        return target
