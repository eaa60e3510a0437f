"""What a Hard-Spurious-ImageNet build is: the `dataset` node parsed once, and the build's keys.

`DatasetSpec.from_config` applies the defaults and checks every value (paper 000, §4: the
resolution, three object sizes, counts per group, the pasting variant of App. E); an error
names the key and the fix. `GENERATION_KEYS` decide the output, `RUNTIME_KEYS` only how a build
runs (hsi.generate.layout saves the former in the built folder).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from hsi.generate.recipe import FALLBACKS, POLICIES, RecipeCounts
from hsi.groups import default_sizes

# The keys that decide what is built (saved in the built folder) ...
GENERATION_KEYS = ("seed", "source", "mask", "inpaint", "dataset")
# ... and the keys that change how a build runs, never what it holds: left out of the saved
# config (also from the source node) and of anything that names the data a job uses.
RUNTIME_KEYS = ("workers", "progress", "shard", "num_shards", "cache", "cache_dir", "detect_cache")
ASSET_KINDS = ("bg", "core", "alpha")
RESIZE_MODES = ("squash", "fit")
PASTE_MODES = ("rect", "alpha")
CORE_BOXES = ("largest", "first")


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the key and the fix."""


# ----------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class DatasetSpec:
    """The `dataset` node with its defaults applied and checked (conf/dataset/*.yaml)."""

    name: str
    resolution: int
    sizes: tuple[int, int, int]
    counts: RecipeCounts
    classes: tuple[str, ...] | None = None
    pairs: object = None  # null (v1) | "paper" | {fg_wnid: bg_wnid}
    pairs_from: str | None = None
    pairs_count: int = 10
    coverage: str = "error"  # a class short of boxed images: error | reuse | drop | detect
    coverage_fallback: str = "error"  # after detect, for a class still short: error | reuse | drop
    detector: dict | None = None  # a conf/detector/<kind>.yaml node (coverage=detect)
    min_score: float = 0.3  # detector boxes kept at or above this score
    resize_mode: str = "squash"
    paste: str = "rect"
    core_box: str = "largest"
    crop_cap: int | None = None  # shorter side of a stored core crop, px (None: full resolution)

    @classmethod
    def from_config(cls, node: Mapping) -> DatasetSpec:
        """Parse (and check) a `dataset` node; every error names its key and the fix."""
        node = _plain(node)
        resolution = _int(node, "resolution", None)
        if resolution < 1:
            raise ConfigError(f"dataset.resolution={resolution}: must be a positive pixel count")
        raw_sizes = node.get("sizes")
        sizes = default_sizes(resolution) if raw_sizes is None else tuple(raw_sizes)
        bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int)]
        if bad or len(sizes) != 3 or list(sizes) != sorted(set(sizes)):
            raise ConfigError(
                f"dataset.sizes={list(sizes)}: give three distinct whole pixel sizes, small to "
                f"large (e.g. dataset.sizes=[16,24,32]), or null for 1/4, 3/8, 1/2 of the resolution"
            )
        if sizes[0] < 1 or sizes[-1] > resolution:
            raise ConfigError(
                f"dataset.sizes={list(sizes)}: every size must lie in 1..dataset.resolution "
                f"({resolution}); set dataset.sizes=null for {list(default_sizes(resolution))}"
            )
        counts = node.get("counts") or {}
        train = counts.get("train") or {}
        try:
            recipe_counts = RecipeCounts(
                train_easy=train.get("easy"),
                train_medium=train.get("medium"),
                train_hard=train.get("hard"),
                val=counts.get("val"),
                test=counts.get("test"),
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(f"dataset.counts: {e}") from None
        classes = node.get("classes")
        coverage = _coverage(node)
        detector = node.get("detector")
        if coverage == "detect" and not detector:
            raise ConfigError(
                "dataset.coverage=detect needs a detector: add +detector@dataset.detector=<kind> "
                "(conf/detector/: owlv2, owlvit, grounding_dino, cam) with its path or checkpoint"
            )
        if detector is not None and not isinstance(detector, Mapping):
            raise ConfigError(
                f"dataset.detector={detector!r}: must be a detector config node (conf/detector/) or null"
            )
        min_score = node.get("min_score", 0.3)
        if isinstance(min_score, bool) or not isinstance(min_score, (int, float)):
            raise ConfigError(f"dataset.min_score={min_score!r}: must be a number in [0, 1]")
        if not 0.0 <= min_score <= 1.0:
            raise ConfigError(f"dataset.min_score={min_score}: must lie in [0, 1]")
        spec = cls(
            name=str(node.get("name", "hsi")),
            resolution=resolution,
            sizes=tuple(int(s) for s in sizes),
            counts=recipe_counts,
            classes=None if classes is None else tuple(str(c) for c in classes),
            pairs=node.get("pairs"),
            pairs_from=node.get("pairs_from") or None,
            pairs_count=_int(node, "pairs_count", 10),
            coverage=coverage,
            coverage_fallback=str(node.get("coverage_fallback") or "error"),
            detector=None if detector is None else dict(detector),
            min_score=float(min_score),
            resize_mode=str(node.get("resize_mode", "squash")),
            paste=str(node.get("paste", "rect")),
            core_box=str(node.get("core_box", "largest")),
            crop_cap=_crop_cap(node.get("crop_cap", "auto"), sizes),
        )
        for key, value, allowed in (
            ("resize_mode", spec.resize_mode, RESIZE_MODES),
            ("paste", spec.paste, PASTE_MODES),
            ("core_box", spec.core_box, CORE_BOXES),
            ("coverage_fallback", spec.coverage_fallback, FALLBACKS),
        ):
            if value not in allowed:
                raise ConfigError(f"dataset.{key}={value!r}: must be one of {', '.join(allowed)}")
        return spec

    @property
    def asset_kinds(self) -> tuple[str, ...]:
        """Assets each image needs: the alpha mask only for `paste: alpha` (SAM variant)."""
        return ASSET_KINDS if self.paste == "alpha" else ASSET_KINDS[:2]


def _coverage(node: Mapping) -> str:
    """`dataset.coverage`, with the old `dataset.replacement=true` read as `coverage: reuse`."""
    coverage = str(node.get("coverage") or "error")
    if coverage not in POLICIES:
        raise ConfigError(f"dataset.coverage={coverage!r}: must be one of {', '.join(POLICIES)}")
    replacement = node.get("replacement")
    if replacement not in (None, False, True):
        raise ConfigError(
            f"dataset.replacement={replacement!r}: the old key takes true or false; "
            "use dataset.coverage=reuse instead"
        )
    if replacement:
        if coverage not in ("error", "reuse"):
            raise ConfigError(
                f"dataset.replacement=true (the old spelling of dataset.coverage=reuse) "
                f"contradicts dataset.coverage={coverage}; remove dataset.replacement"
            )
        coverage = "reuse"
    return coverage


def _crop_cap(value: object, sizes: tuple[int, ...]) -> int | None:
    """`dataset.crop_cap`: auto = the largest pasted size, null = no cap, or a size >= it.

    A crop whose shorter side is at least the largest size s keeps every pixel the composition
    can use: squash resizes each side to s, fit the longer side to s (the shorter one to less).
    """
    if value is None:
        return None
    if value == "auto":
        return int(max(sizes))
    if isinstance(value, bool) or not isinstance(value, int) or value < max(sizes):
        raise ConfigError(
            f"dataset.crop_cap={value!r}: give auto (the largest size, {max(sizes)}), null (full "
            f"resolution) or a whole number >= {max(sizes)}; a smaller cap would lose pixels"
        )
    return value


def _plain(node: Mapping) -> dict:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node)


def _int(node: Mapping, key: str, default: int | None) -> int:
    value = node.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"dataset.{key}={value!r}: must be a whole number")
    return value


def generation_config(cfg: DictConfig | Mapping) -> str:
    """The resolved YAML of the keys that decide the output (what the built folder saves)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    chosen = OmegaConf.to_container(OmegaConf.masked_copy(cfg, list(GENERATION_KEYS)), resolve=True)
    return OmegaConf.to_yaml(OmegaConf.create(without_runtime_keys(chosen)))


def without_runtime_keys(generate: Mapping) -> dict:
    """A plain copy of a generation config without RUNTIME_KEYS, at its top and in its source.

    What is left names the data a build holds: two configs that differ only in runtime keys
    give the same dataset (and the same saved config).
    """
    node = dict(generate)
    for key in RUNTIME_KEYS:
        node.pop(key, None)
    if isinstance(node.get("source"), Mapping):
        node["source"] = {k: v for k, v in node["source"].items() if k not in RUNTIME_KEYS}
    return node
