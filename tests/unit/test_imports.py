"""hs_models must import without ComfyUI (scripts and training use it on its own)."""

import subprocess
import sys

from hs_testing import PACK_DIR


def test_hs_models_imports_without_comfyui():
    code = (
        "import importlib, pkgutil, sys\n"
        "import hs_models\n"
        "for m in pkgutil.walk_packages(hs_models.__path__, 'hs_models.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths', 'nodes'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PACK_DIR, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_root_package_is_import_light():
    code = "import importlib.util, sys\n" + (
        f"spec = importlib.util.spec_from_file_location('pack', {str(PACK_DIR / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(PACK_DIR)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; spec.loader.exec_module(m)\n"
        "assert hasattr(m, 'comfy_entrypoint') and not hasattr(m, 'NODE_CLASS_MAPPINGS')\n"
        "assert 'comfy' not in sys.modules and 'pack.nodes' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _third_party_imports() -> set[str]:
    """Top-level modules the pack's code (hs_models/, nodes/, __init__.py) imports, minus the standard library."""
    import ast

    names = set()
    for path in [
        PACK_DIR / "__init__.py",
        *(PACK_DIR / "hs_models").rglob("*.py"),
        *(PACK_DIR / "nodes").rglob("*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__"}


def test_requirements_match_the_imports():
    """Every third-party import is declared (requirements.txt and pyproject.toml alike) or comes with ComfyUI,
    and nothing is declared that the pack does not import."""
    import re

    import tomllib

    comes_with_comfyui = {"torch", "comfy", "comfy_api", "comfy_extras", "folder_paths", "node_helpers",
                          "latent_preview", "nodes", "server", "PIL", "yaml", "transformers",
                          "execution", "utils", "tqdm"}  # fmt: skip
    import_names = {"opencv-python-headless": "cv2"}
    lines = (PACK_DIR / "requirements.txt").read_text().splitlines()
    required = {
        re.split(r"[<>=!~\[ ;]", line.strip())[0] for line in lines if line.strip() and not line.startswith("#")
    }
    project = tomllib.loads((PACK_DIR / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {re.split(r"[<>=!~\[ ;]", d)[0] for d in project} == required
    declared = {import_names.get(name, name) for name in required}
    imported = _third_party_imports()
    assert imported - comes_with_comfyui <= declared, (
        f"imported but not declared: {imported - comes_with_comfyui - declared}"
    )
    assert declared <= imported, f"declared but never imported: {declared - imported}"
