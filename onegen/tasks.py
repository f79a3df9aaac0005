"""Task tokens and the class-colour palette, spelled as the released OneDiffusion prompt guide.

Prompts built here work with the released checkpoint, so its spellings win over the paper's
descriptive names. The direction of a two-view task (depth->image or image->depth) is chosen
at sampling time by which view is noised, not by the token.
"""

from __future__ import annotations

from typing import NamedTuple

TEXT2IMAGE = "[[text2image]]"
DEPTH2IMAGE = "[[depth2image]]"
SEMANTIC2IMAGE = "[[semanticmap2image]]"
BBOX2IMAGE = "[[boundingbox2image]]"
POSE2IMAGE = "[[pose2image]]"
CANNY2IMAGE = "[[canny2image]]"
HED2IMAGE = "[[hed2img]]"
DEBLUR = "[[deblurring]]"
INPAINT = "[[image_inpainting]]"
IMAGE_EDITING = "[[image_editing]]"
FACEID = "[[faceid]]"
MULTIVIEW = "[[multiview]]"
SUBJECT_DRIVEN = "[[subject_driven]]"
# The released guide has no upscaling token; the paper trains the task, so we name it alike.
UPSCALE = "[[upscaling]]"

TASK_TOKENS = (
    TEXT2IMAGE, DEPTH2IMAGE, SEMANTIC2IMAGE, BBOX2IMAGE, POSE2IMAGE, CANNY2IMAGE, HED2IMAGE,
    DEBLUR, INPAINT, IMAGE_EDITING, FACEID, MULTIVIEW, SUBJECT_DRIVEN, UPSCALE,
)


class PaletteColor(NamedTuple):
    hex: str  # "RRGGBB", upper case, no '#'
    name: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.hex[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


PALETTE = tuple(
    PaletteColor(h, n)
    for h, n in [
        ("FF0000", "red"), ("00FF00", "lime"), ("0000FF", "blue"), ("FFFF00", "yellow"),
        ("FF00FF", "magenta"), ("00FFFF", "cyan"), ("FFA500", "orange"), ("800080", "purple"),
        ("A52A2A", "brown"), ("008000", "green"), ("FFC0CB", "pink"), ("008080", "teal"),
        ("FF8C00", "darkorange"), ("8A2BE2", "blueviolet"), ("006400", "darkgreen"),
        ("FF4500", "orangered"), ("000080", "navy"), ("FFD700", "gold"), ("40E0D0", "turquoise"),
        ("DA70D6", "orchid"),
    ]
)
MAX_ENTITIES = 10  # paper §4: at most 10 entities per image


def palette_tag(color: PaletteColor, label: str, kind: str) -> str:
    """``<#FFFF00 yellow mask: mouse>`` (kind "mask") or ``... boundingbox: mouse>``."""
    return f"<#{color.hex} {color.name} {kind}: {label}>"


def task_prompt(task: str, caption: str, tags: list[str] | None = None) -> str:
    """The text fed to the model: token, then palette tags, then the caption."""
    return " ".join([task, *(tags or []), caption]).strip()


def faceid_prompt(captions: list[str]) -> str:
    """``[[faceid]] [[img0]] target caption [[img1]] caption of source 1 ...``."""
    return " ".join([FACEID, *(f"[[img{i}]] {c}" for i, c in enumerate(captions))])
