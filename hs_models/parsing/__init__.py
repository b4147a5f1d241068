"""Face parsing: BiSeNet and SegFormer CelebAMask-HQ parsers mapped onto the canonical label set (docs/method.md §3).

``network`` builds a parser from its files (architecture detected from the state-dict keys),
``pipeline`` turns image batches of any size into canonical8 label maps.
"""

from .network import (
    BISENET,
    EXPECTED_KINDS,
    SEGFORMER,
    FaceParsingNetwork,
    ParserFiles,
    build_parser,
    detect_kind,
)
from .pipeline import AUTO, HEAD_CROP, MODES, WHOLE_IMAGE, ParseResult, parse_images

__all__ = [
    "AUTO",
    "BISENET",
    "EXPECTED_KINDS",
    "HEAD_CROP",
    "MODES",
    "SEGFORMER",
    "WHOLE_IMAGE",
    "FaceParsingNetwork",
    "ParseResult",
    "ParserFiles",
    "build_parser",
    "detect_kind",
    "parse_images",
]
