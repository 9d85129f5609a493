"""Token geometry of one attention call: the latent video grid and where the text tokens sit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TextPosition = Literal["before", "after"]


@dataclass(frozen=True)
class VideoLayout:
    """A video of ``frames x height x width`` tokens (frame-major, row-major) plus ``text`` joint text tokens.

    ``text_position`` says whether the text tokens come before the video (CogVideoX) or after it
    (HunyuanVideo, Mochi). Wan self-attention has no text tokens.
    """

    frames: int
    height: int
    width: int
    text: int = 0
    text_position: TextPosition = "after"

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"VideoLayout.{name} must be a positive int, got {value!r}")
        if not isinstance(self.text, int) or self.text < 0:
            raise ValueError(f"VideoLayout.text must be a non-negative int, got {self.text!r}")
        if self.text_position not in ("before", "after"):
            raise ValueError(f"VideoLayout.text_position must be 'before' or 'after', got {self.text_position!r}")

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def video_tokens(self) -> int:
        return self.frames * self.height * self.width

    @property
    def total_tokens(self) -> int:
        return self.video_tokens + self.text

    @property
    def video_start(self) -> int:
        """Index of the first video token in the joint sequence."""
        return self.text if self.text_position == "before" else 0

    @property
    def video_slice(self) -> slice:
        """The video tokens' positions in the joint sequence."""
        return slice(self.video_start, self.video_start + self.video_tokens)

    @property
    def text_slice(self) -> slice:
        """The text tokens' positions in the joint sequence (empty without text)."""
        start = 0 if self.text_position == "before" else self.video_tokens
        return slice(start, start + self.text)

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)

    def with_text(self, text: int, text_position: TextPosition) -> "VideoLayout":
        return VideoLayout(self.frames, self.height, self.width, text, text_position)

    @classmethod
    def parse(cls, spec: str) -> "VideoLayout":
        """Parse ``"FxHxW"`` (e.g. ``"21x30x52"``) as used on the command line."""
        return cls(*parse_dims(spec, "FxHxW", "21x30x52", "grid"))

    def __str__(self) -> str:
        text = f"+{self.text} text ({self.text_position})" if self.text else ""
        return f"{self.frames}x{self.height}x{self.width}{text}"


def parse_dims(spec: str, names: str, example: str, name: str) -> tuple[int, ...]:
    """Sizes such as ``"21x30x52"`` from the command line: as many ints as ``names`` (e.g. ``"FxHxW"``) has parts."""
    try:
        dims = tuple(int(part) for part in spec.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != len(names.split("x")):
        raise ValueError(f"{name} must look like {names} (e.g. {example}), got {spec!r}")
    return dims
