"""Object removal: maskers (box, Segment-Anything) and inpainters (OpenCV, LaMa)."""

from hsi.generate.inpaint.inpainters import Inpainter, LamaInpainter, OpenCVInpainter
from hsi.generate.inpaint.masks import BoxMasker, Masker, SamMasker

__all__ = ["BoxMasker", "Inpainter", "LamaInpainter", "Masker", "OpenCVInpainter", "SamMasker"]
