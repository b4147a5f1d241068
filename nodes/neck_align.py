"""Neck alignment node: scale and move the head photo so its head sits where the body's own head was (docs/method.md §4)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..hs_models.alignment import MODES, AlignmentOptions, HeadTransform, estimate_alignment, warp_head
from ..hs_models.layout import SemanticLayout
from ._tensors import broadcast_batches
from .types import HeadSwapLayout, HeadSwapTransform, PoseKeypoint
from .validation import validate_schema_values

CATEGORY = "headswap/alignment"
_POSE_HELP = (
    "expected POSE_KEYPOINT data: a list with one OpenPose frame per image, each a dict "
    "{'people': [{'pose_keypoints_2d': [x, y, confidence, …]}], 'canvas_width': W, 'canvas_height': H}; connect "
    "the POSE_KEYPOINT output of a pose estimator (OpenPose/DWPose) or leave the input unconnected"
)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_pose(pose, name: str) -> None:
    """Refuse POSE_KEYPOINT data that is not OpenPose JSON before any of it is read, naming what is wrong."""
    frames = [pose] if isinstance(pose, dict) else pose
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{name}: got {type(pose).__name__} {str(pose)[:60]!r}; {_POSE_HELP}")
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise ValueError(f"{name}: frame {i} is a {type(frame).__name__}, not a dict; {_POSE_HELP}")
        for key in ("canvas_width", "canvas_height"):
            value = frame.get(key)
            if value is not None and (not _is_number(value) or value <= 0):
                raise ValueError(f"{name}: frame {i} has {key} {value!r}, not a positive number; {_POSE_HELP}")
        people = frame.get("people")
        if people is not None and not isinstance(people, list):
            raise ValueError(f"{name}: frame {i} has 'people' of type {type(people).__name__}; {_POSE_HELP}")
        for j, person in enumerate(people or []):
            points = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
            if not isinstance(person, dict) or not isinstance(points, (list, tuple, type(None))):
                raise ValueError(f"{name}: frame {i}, person {j} is not a dict with a keypoint list; {_POSE_HELP}")
            bad = next((v for v in points or () if not _is_number(v)), None)
            if bad is not None:
                raise ValueError(
                    f"{name}: frame {i}, person {j} has the keypoint value {bad!r}; pose_keypoints_2d must be "
                    f"numbers (x, y, confidence triplets); {_POSE_HELP}"
                )


class HeadSwapNeckAlign(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapNeckAlign",
            display_name="Neck Align (HeadSwap)",
            category=CATEGORY,
            description=(
                "Scales and moves the head photo (and its layout) onto the body photo's canvas so that the new head "
                "sits where the body's own head was, at its size: the scale comes from the two faces (width across "
                "the cheeks, read from the free side where hair covers one), the head's chin point goes onto the "
                "body's, and the neck joins below. Face heights and the visible necks are only cross-checks. Uses "
                "OpenPose keypoints instead when both poses are connected. Of several faces in a photo the largest "
                "is used (a warning names it when another is of similar size). Outputs the warped head image and "
                "layout, the MASK of the canvas the head photo covers, the transform (for nodes that map results "
                "back) and a readable report naming the cue that decided and any disagreement."
            ),
            inputs=[
                io.Image.Input("head_image", tooltip="The photo whose head (face and hair) is kept."),
                HeadSwapLayout.Input("head_layout", tooltip="Layout of the head photo (same size as head_image)."),
                HeadSwapLayout.Input("body_layout", tooltip="Layout of the body photo; its size is the output canvas."),
                io.Combo.Input(
                    "mode",
                    options=list(MODES),
                    default="auto",
                    tooltip=(
                        "auto: keypoints where both poses are connected and complete, else the layouts. "
                        "layout: the faces of the two layouts (size across the cheeks, chin point). keypoints: "
                        "OpenPose neck and shoulders. "
                        "none: no alignment (pre-aligned pairs; other canvas sizes are fitted by height)."
                    ),
                ),
                io.Float.Input(
                    "scale_min",
                    default=0.5,
                    min=0.05,
                    max=1.0,
                    step=0.01,
                    tooltip=(
                        "Smallest allowed scale, relative to the ratio of the two faces' widths (the size ratio of "
                        "the canvases where a face is missing), so a close-up head photo onto a full body needs no "
                        "change. Guards keypoint estimates that disagree with the faces; clamping is reported."
                    ),
                ),
                io.Float.Input(
                    "scale_max",
                    default=2.0,
                    min=1.0,
                    max=20.0,
                    step=0.01,
                    tooltip="Largest allowed scale, relative to the ratio of the two faces' widths (see scale_min).",
                ),
                io.Float.Input(
                    "max_rotation",
                    default=0.0,
                    min=0.0,
                    max=45.0,
                    step=0.5,
                    tooltip=(
                        "Largest rotation in degrees (0 = never rotate). Layout mode turns the head to the tilt of "
                        "the body's own head; keypoint mode follows the shoulder line."
                    ),
                ),
                io.Float.Input(
                    "scale_nudge",
                    default=1.0,
                    min=0.25,
                    max=4.0,
                    step=0.01,
                    tooltip="Multiplies the estimated scale, about the chin point (the neck stays attached).",
                ),
                io.Int.Input(
                    "offset_x", default=0, min=-8192, max=8192, tooltip="Moves the head right (pixels of the body)."
                ),
                io.Int.Input(
                    "offset_y", default=0, min=-8192, max=8192, tooltip="Moves the head down (pixels of the body)."
                ),
                PoseKeypoint.Input(
                    "head_pose", optional=True, tooltip="OpenPose keypoints of the head photo (POSE_KEYPOINT)."
                ),
                PoseKeypoint.Input(
                    "body_pose", optional=True, tooltip="OpenPose keypoints of the body photo (POSE_KEYPOINT)."
                ),
            ],
            outputs=[
                io.Image.Output(display_name="image"),
                HeadSwapLayout.Output(display_name="layout"),
                io.Mask.Output(display_name="valid_mask"),
                HeadSwapTransform.Output(display_name="transform"),
                io.String.Output(display_name="report"),
            ],
        )

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        # poses typed into an API prompt (OpenPose JSON) are accepted as data and checked here
        for name in ("head_pose", "body_pose"):
            if inputs.get(name) is not None:
                try:
                    check_pose(inputs[name], name)
                except ValueError as e:
                    return str(e)
        return validate_schema_values(cls, inputs, checked_by_node=("head_pose", "body_pose"))

    @classmethod
    def execute(
        cls,
        head_image: torch.Tensor,
        head_layout: SemanticLayout,
        body_layout: SemanticLayout,
        mode: str,
        scale_min: float,
        scale_max: float,
        max_rotation: float,
        scale_nudge: float,
        offset_x: int,
        offset_y: int,
        head_pose=None,
        body_pose=None,
    ) -> io.NodeOutput:
        if tuple(head_image.shape[1:3]) != (head_layout.height, head_layout.width):
            raise ValueError(
                f"head_image is {head_image.shape[2]}×{head_image.shape[1]} but head_layout is "
                f"{head_layout.width}×{head_layout.height}; give the layout parsed from this image"
            )
        for pose, name in ((head_pose, "head_pose"), (body_pose, "body_pose")):
            if pose is not None:
                check_pose(pose, name)
        image, labels = broadcast_batches(("head_image", head_image), ("head_layout", head_layout.labels))
        head_layout = head_layout.with_labels(labels.contiguous()) if labels is not head_layout.labels else head_layout
        options = AlignmentOptions(
            mode=mode,
            scale_min=scale_min,
            scale_max=scale_max,
            max_rotation=max_rotation,
            scale_nudge=scale_nudge,
            offset=(float(offset_x), float(offset_y)),
        )
        transform: HeadTransform = estimate_alignment(head_layout, body_layout, options, head_pose, body_pose)
        warped = warp_head(image, head_layout, transform)
        return io.NodeOutput(warped.image, warped.layout, warped.valid, transform, transform.describe())


NODES = [HeadSwapNeckAlign]
