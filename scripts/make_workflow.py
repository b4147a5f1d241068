"""Build a UI-format template for workflows/ from an API-format prompt, using a running server's /object_info.

    python scripts/make_workflow.py tests/e2e/prompts/NAME.api.json workflows/NAME.json [--server URL]

Start the server with scripts/start.sh first. The e2e tier checks that each template converts back
to exactly its API twin, so templates and the prompts the tests run cannot drift apart.
"""

import argparse
import json
import sys
import urllib.request
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from hs_testing.workflow import api_to_ui, strip_meta, ui_to_api  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("api_prompt", type=Path)
    parser.add_argument("ui_workflow", type=Path)
    parser.add_argument("--server", default="http://127.0.0.1:8188")
    args = parser.parse_args()
    with urllib.request.urlopen(args.server + "/object_info") as response:  # noqa: S310 (loopback server)
        object_info = json.load(response)
    prompt = json.loads(args.api_prompt.read_text())
    workflow = api_to_ui(prompt, object_info)
    stripped = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}
    if strip_meta(ui_to_api(workflow, object_info)) != stripped:
        raise SystemExit("internal error: the UI workflow does not convert back to the API prompt")
    args.ui_workflow.write_text(json.dumps(workflow, indent=1) + "\n")
    print(f"wrote {args.ui_workflow} ({len(workflow['nodes'])} nodes, {len(workflow['links'])} links)")


if __name__ == "__main__":
    main()
