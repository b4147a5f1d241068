"""``python -m hs_models.batch``: head swaps for many pairs over one or more ComfyUI servers (docs/batch.md)."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from ..log import logger
from . import (
    BatchOptions,
    BatchRun,
    ComfyClient,
    NotUsable,
    PairsError,
    ServerGone,
    TemplateError,
    missing_node_types,
    pairs_from_folders,
    read_csv,
    read_template,
    to_prompt,
)
from .template import parse_setting

EXAMPLES = """examples:
  python -m hs_models.batch --pairs pairs.csv --template workflows/headswap_sd15.json --output out/
  python -m hs_models.batch --heads heads/ --bodies bodies/ --template workflows/headswap_sd15.json \\
      --server 127.0.0.1:8188 --server 127.0.0.1:8189 --output out/ --seed 7
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hs_models.batch",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("pairs (a CSV, or two folders)")
    source.add_argument("--pairs", type=Path, help="CSV with 'head' and 'body' columns (optional: id, seed, and "
                        "columns for other image inputs of the template, e.g. head_layout)")  # fmt: skip
    source.add_argument("--heads", type=Path, help="folder of head photos")
    source.add_argument("--bodies", type=Path, help="folder of body photos")
    source.add_argument("--pairing", choices=("all", "same-name"), default="all",
                        help="folders: every head on every body (default), or files with the same name")  # fmt: skip
    parser.add_argument("--template", type=Path, required=True,
                        help="a workflow (UI format, e.g. workflows/headswap_sd15.json) or an API-format prompt")  # fmt: skip
    parser.add_argument("--output", type=Path, required=True,
                        help="folder for the results: <pair id>/ with the images and record.json; running again "
                        "with the same folder resumes")  # fmt: skip
    parser.add_argument("--server", action="append", default=[],
                        help="a running ComfyUI server (URL or host:port); repeat for several (one queue each). "
                        "Default: 127.0.0.1:8188")  # fmt: skip
    parser.add_argument("--in-process", type=Path, metavar="COMFYUI_DIR",
                        help="run the prompts inside this process with the ComfyUI in COMFYUI_DIR (no server needed; "
                        "the pack must be in its custom_nodes); ComfyUI flags follow --comfy-args")  # fmt: skip
    parser.add_argument("--comfy-args", default="", metavar="'FLAGS'",
                        help="with --in-process: ComfyUI's own flags, e.g. '--cpu --base-directory /data/comfy'")  # fmt: skip
    parser.add_argument("--input", action="append", default=[], metavar="COLUMN=NODE",
                        help="which image loader takes a column's files (node id or title prefix); default: the "
                        "loader titled like the column ('Head photo…', 'Body photo…')")  # fmt: skip
    parser.add_argument(
        "--seed", type=int, help="seed for every pair (default: the template's; a CSV seed column wins)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                        help="override a node input for every pair, e.g. --set 17.steps=30 (node id or title)")  # fmt: skip
    parser.add_argument("--retries", type=int, default=3,
                        help="reconnection attempts for a server that went away (default 3)")  # fmt: skip
    parser.add_argument("--retry-pause", type=float, default=2.0, help="seconds before the first retry (doubles)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _pairs(args, parser):
    if args.pairs and (args.heads or args.bodies):
        parser.error("give either --pairs CSV or --heads and --bodies, not both")
    if args.pairs:
        return read_csv(args.pairs)
    if not (args.heads and args.bodies):
        parser.error("give --pairs CSV, or both --heads and --bodies folders")
    return pairs_from_folders(args.heads, args.bodies, args.pairing)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[batch] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        pairs = _pairs(args, parser)
        template = read_template(args.template)
        inputs = {}
        for item in args.input:
            column, sep, node = item.partition("=")
            if not sep or not column or not node:
                parser.error(f"--input {item!r}: expected COLUMN=NODE, e.g. --input head=1")
            inputs[column.strip()] = node.strip()
        settings = [parse_setting(s) for s in args.set]
        if args.in_process and args.server:
            parser.error("give --in-process or --server, not both")
        if args.in_process:
            from .inprocess import InProcessComfy

            clients = [InProcessComfy(args.in_process, shlex.split(args.comfy_args))]
        else:
            clients = [ComfyClient(url) for url in (args.server or ["127.0.0.1:8188"])]
        # every server is checked before any pair is sent
        infos = []
        for client in clients:
            try:
                infos.append(client.check())
            except ServerGone as e:
                raise NotUsable(f"{client.url} does not answer ({e}); start it or leave it out") from None
        prompt = to_prompt(template, infos[0])
        for client, info in zip(clients, infos, strict=True):
            missing = missing_node_types(prompt, info)
            if missing:
                raise NotUsable(
                    f"{client.url} lacks nodes the template uses: {', '.join(missing)} (install the packs that "
                    f"provide them there, or leave that server out)"
                )
    except (PairsError, TemplateError, NotUsable, ValueError) as e:
        logger.error("%s", e)
        return 2
    options = BatchOptions(
        template_path=str(args.template),
        output=args.output,
        inputs=inputs,
        seed=args.seed,
        settings=settings,
        retries=args.retries,
        retry_pause=args.retry_pause,
        progress=not args.no_progress,
    )
    logger.info("%d pairs, template %s, servers: %s", len(pairs), args.template, ", ".join(c.url for c in clients))
    try:
        summary = BatchRun(clients, prompt, pairs, options).run()
    except KeyboardInterrupt:
        return 130
    logger.info("%s", summary["line"])
    return 0 if not summary["failed"] and not summary["not_run"] else 1


if __name__ == "__main__":
    sys.exit(main())
