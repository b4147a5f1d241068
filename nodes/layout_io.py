"""Layout I/O nodes: load a label map from an image, preview it, turn classes into a MASK, convert label sets."""

from __future__ import annotations

import hashlib
import os

import folder_paths
import node_helpers
import numpy as np
import torch
from comfy_api.latest import io, ui
from PIL import Image

from ..hs_models.labels import LABEL_SETS, PAPER5, convert_labels, get_label_set
from ..hs_models.layout import (
    SemanticLayout,
    colorize,
    labels_from_indices,
    labels_from_rgb,
    resolve_class_selection,
)
from ._tensors import broadcast_batches
from .types import HeadSwapLayout
from .validation import validate_schema_values

CATEGORY = "headswap/layout"
DECODE_MODES = ("auto", "indices", "palette")


def _input_images() -> list[str]:
    input_dir = folder_paths.get_input_directory()
    files = [f for f in os.listdir(input_dir) if os.path.isfile(os.path.join(input_dir, f))]
    return sorted(folder_paths.filter_files_content_types(files, ["image"]))


_ANNOTATED_FOLDERS = {
    "[input]": folder_paths.get_input_directory,
    "[output]": folder_paths.get_output_directory,
    "[temp]": folder_paths.get_temp_directory,
}


def _not_in_input_folder(image: str) -> str:
    return (
        f"image: {image!r} is not in the input folder (or is not a file); upload the layout (or copy it into "
        f"{folder_paths.get_input_directory()}) and pick it from the list. Names are relative to the input folder; "
        f"absolute paths and '..' are not accepted"
    )


def resolve_input_file(image: str) -> str:
    """The path of ``image`` inside ComfyUI's input folder (or the output/temp folder for names annotated
    ``name [output]`` / ``name [temp]``, as core LoadImage allows), or ValueError.

    Names that leave the folder (absolute paths, ``..``, symbolic links pointing out) get the same message as
    names that do not exist, decided before anything outside the folder is looked at, so the error never
    tells whether an outside path exists.
    """
    name, base_dir = image, folder_paths.get_input_directory()
    for suffix, folder in _ANNOTATED_FOLDERS.items():
        if image.endswith(" " + suffix) or image.endswith(suffix):
            name, base_dir = image[: -len(suffix)].rstrip(" "), folder()
            break
    base = os.path.realpath(base_dir)
    if not name or "\0" in name or os.path.isabs(name):
        raise ValueError(_not_in_input_folder(image))
    joined = os.path.normpath(os.path.join(base, name))
    if os.path.commonpath([base, joined]) != base:  # decided from the name alone
        raise ValueError(_not_in_input_folder(image))
    resolved = os.path.realpath(joined)  # follows links only for names inside the folder
    if os.path.commonpath([base, resolved]) != base or not os.path.isfile(resolved):
        raise ValueError(_not_in_input_folder(image))
    return resolved


def open_layout_image(path: str, image: str) -> Image.Image:
    """Open and fully read an image file; a file that is not a readable image gets a clear error."""
    try:
        img = node_helpers.pillow(Image.open, path)
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(
            f"image: {image!r} could not be read as an image ({type(e).__name__}: {str(e)[:160]}); the file may be "
            f"damaged or not an image. Save the layout again as PNG (an indexed or RGB PNG in the palette "
            f"colours) and upload it"
        ) from None
    return img


def decode_layout_image(img: Image.Image, label_set_name: str, decode: str, source: str) -> torch.Tensor:
    """PIL image → (H,W) int64 labels. Indexed/greyscale images hold ids; RGB images hold palette colours."""
    label_set = get_label_set(label_set_name)
    mode = img.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        alpha = np.asarray(img.convert("RGBA").getchannel("A"))
        if (alpha < 255).any():
            raise ValueError(
                f"{source}: {int((alpha < 255).sum())} pixels are transparent; a layout must be opaque "
                f"(flatten the image onto the background colour before saving)"
            )
    index_modes = ("P", "L", "LA", "PA", "I", "I;16", "1")
    if decode == "auto" and mode in ("P", "PA"):
        return _decode_indexed(img, label_set, source)
    if decode == "auto":
        decode = "indices" if mode in index_modes else "palette"
    if decode == "indices":
        if mode in ("P", "PA"):
            indices = np.asarray(img.convert("P") if mode == "PA" else img)
        elif mode in ("L", "LA", "I", "I;16", "1"):
            indices = np.asarray(img.getchannel(0) if mode == "LA" else img).astype(np.int64)
        else:
            raise ValueError(
                f"{source}: decode='indices' needs an indexed (P) or greyscale image, but the file is {mode}; "
                f"use decode='palette' for colour layouts"
            )
        return labels_from_indices(np.asarray(indices).astype(np.int64), label_set, source)
    if decode == "palette":
        if mode not in ("RGB", "RGBA", "P", "PA", "L", "LA"):
            raise ValueError(f"{source}: cannot read colours from a {mode} image; save the layout as RGB PNG")
        rgb = np.asarray(img.convert("RGB"))
        return labels_from_rgb(rgb, label_set, source)
    raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")


def _decode_indexed(img: Image.Image, label_set, source: str) -> torch.Tensor:
    """An indexed image in auto mode: by its colours when they are all palette colours, else by its indices.

    Paint programs and PNG optimisers save an RGB layout with few colours as an indexed image with their own
    palette order, so the indices of a drawing mean nothing while its colours are exact; a label map saved
    with ids as indices and a palette of its own (e.g. grey levels) has colours that are not the pack's.
    Where the palette matches the pack's, both readings agree.
    """
    try:
        return labels_from_rgb(np.asarray(img.convert("RGB")), label_set, source)
    except ValueError as colour_error:
        indices = np.asarray(img.convert("P") if img.mode == "PA" else img).astype(np.int64)
        try:
            return labels_from_indices(indices, label_set, source)
        except ValueError as index_error:
            raise ValueError(
                f"{source}: this indexed image is neither a layout drawn in the {label_set.name!r} palette nor a "
                f"map of its class ids. As colours: {colour_error} As class ids: {index_error}"
            ) from None


class HeadSwapLoadLayout(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapLoadLayout",
            display_name="Load Layout (HeadSwap)",
            category=CATEGORY,
            description=(
                "Loads a semantic layout (label map) from an image in the input folder. Indexed PNGs and "
                "greyscale images hold class ids directly (255 = UNKNOWN, a hole to fill); RGB images must use "
                "the exact colours of the chosen palette (as drawn by Layout Preview). Colours outside the "
                "palette are an error, never rounded to the nearest class."
            ),
            inputs=[
                io.Combo.Input("image", options=_input_images(), upload=io.UploadType.image),
                io.Combo.Input(
                    "label_set",
                    options=list(LABEL_SETS),
                    default="canonical8",
                    tooltip="Numbering and palette of the layout: canonical8 (the pack's) or paper5 (the paper's figures).",
                ),
                io.Combo.Input(
                    "decode",
                    options=list(DECODE_MODES),
                    default="auto",
                    tooltip="auto: indexed/greyscale files hold class ids, colour files hold palette colours.",
                ),
            ],
            outputs=[HeadSwapLayout.Output(display_name="layout")],
        )

    @classmethod
    def execute(cls, image: str, label_set: str, decode: str) -> io.NodeOutput:
        img = open_layout_image(resolve_input_file(image), image)
        labels = decode_layout_image(img, label_set, decode, source=f"image {image!r}")
        layout = SemanticLayout(labels[None], get_label_set(label_set))
        preview = colorize(layout.labels, layout.label_set)
        return io.NodeOutput(layout, ui=ui.PreviewImage(preview, cls=cls))

    @classmethod
    def fingerprint_inputs(cls, image: str, label_set: str, decode: str) -> str:
        try:
            path = resolve_input_file(image)
        except ValueError:
            return ""  # validation refuses the name; nothing to fingerprint
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        image = inputs.get("image")
        if image is not None:
            try:
                resolve_input_file(str(image))
            except ValueError as e:
                return str(e)
        return validate_schema_values(cls, inputs, checked_by_node=("image",))


class HeadSwapLayoutPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapLayoutPreview",
            display_name="Layout Preview (HeadSwap)",
            category=CATEGORY,
            description=(
                "Draws a layout in its palette colours (UNKNOWN in white), optionally blended over an image of the "
                "same size, shows it and returns it as IMAGE."
            ),
            inputs=[
                HeadSwapLayout.Input("layout"),
                io.Image.Input("image", optional=True, tooltip="Optional photo to draw the layout over (same size)."),
                io.Float.Input(
                    "opacity",
                    default=0.5,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="Opacity of the colours over the image (used only when an image is connected).",
                ),
            ],
            outputs=[io.Image.Output(display_name="image")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        return validate_schema_values(cls, inputs)

    @classmethod
    def execute(cls, layout: SemanticLayout, opacity: float, image: torch.Tensor | None = None) -> io.NodeOutput:
        if not isinstance(layout, SemanticLayout):
            raise ValueError(
                f"layout: got a {type(layout).__name__}, not a HEADSWAP_LAYOUT; connect a layout output (Load Layout, "
                f"Face Parse, Layout Blend, …)"
            )
        colours = colorize(layout.labels, layout.label_set)
        if image is not None:
            if tuple(image.shape[1:3]) != (layout.height, layout.width):
                raise ValueError(
                    f"image is {image.shape[2]}×{image.shape[1]} but the layout is {layout.width}×{layout.height}; "
                    f"preview the layout over an image of the same size"
                )
            colours, photo = broadcast_batches(("layout", colours), ("image", image[..., :3].to(colours)))
            colours = photo * (1.0 - opacity) + colours * opacity
        return io.NodeOutput(colours, ui=ui.PreviewImage(colours, cls=cls))


class HeadSwapLayoutToMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapLayoutToMask",
            display_name="Layout to Mask (HeadSwap)",
            category=CATEGORY,
            description="A MASK that is 1 where the layout has one of the chosen classes, for core mask nodes.",
            inputs=[
                HeadSwapLayout.Input("layout"),
                io.String.Input(
                    "classes",
                    default="head",
                    tooltip=(
                        "Comma-separated class names (e.g. 'hair, face'), groups (head, neck, body, person, "
                        "background), 'unknown', or class ids."
                    ),
                ),
            ],
            outputs=[io.Mask.Output(display_name="mask")],
        )

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        return validate_schema_values(cls, inputs)

    @classmethod
    def execute(cls, layout: SemanticLayout, classes: str) -> io.NodeOutput:
        ids = resolve_class_selection(classes, layout.label_set)
        return io.NodeOutput(layout.mask_of(ids))


class HeadSwapConvertLayout(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapConvertLayout",
            display_name="Convert Layout (HeadSwap)",
            category=CATEGORY,
            description=(
                "Renumbers a layout into another label set, e.g. the pack's canonical8 layouts into the paper's "
                "paper5 classes for a diffusion model trained on them: hat joins hair, arms and other join clothes "
                "(docs/method.md §3.2). UNKNOWN pixels stay UNKNOWN. A layout already in the chosen set passes unchanged."
            ),
            inputs=[
                HeadSwapLayout.Input("layout"),
                io.Combo.Input(
                    "label_set",
                    options=list(LABEL_SETS),
                    default=PAPER5.name,
                    tooltip="The label set to convert to: the one your diffusion model was trained with.",
                ),
            ],
            outputs=[HeadSwapLayout.Output(display_name="layout")],
        )

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        return validate_schema_values(cls, inputs)

    @classmethod
    def execute(cls, layout: SemanticLayout, label_set: str) -> io.NodeOutput:
        target = get_label_set(label_set)
        try:
            labels = convert_labels(layout.labels, layout.label_set, target)
        except ValueError as e:
            raise ValueError(f"layout: {e}") from None
        return io.NodeOutput(SemanticLayout(labels, target))


NODES = [HeadSwapLoadLayout, HeadSwapLayoutPreview, HeadSwapLayoutToMask, HeadSwapConvertLayout]
