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
