"""Sources of images with class labels and object boxes (ImageNet on disk, the synthetic source)."""

from hsi.sources.record import Box, ClassInfo, ImageRecord, Skip, SourceIndex

__all__ = ["Box", "ClassInfo", "ImageRecord", "Skip", "SourceIndex"]


def load_source(cfg) -> SourceIndex:
    """Build the source named by a `source` config node (`_target_` + keys) and read it."""
    from hydra.utils import instantiate

    return instantiate(cfg).load()


__all__ += ["load_source"]
