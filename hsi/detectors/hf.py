"""Open-vocabulary detectors through transformers, from a local folder only (never the network).

    owlvit          OwlViTForObjectDetection + OwlViTProcessor (paper 004, §2: OWL-ViT)
    owlv2           Owlv2ForObjectDetection + Owlv2Processor
    grounding_dino  AutoModelForZeroShotObjectDetection + AutoProcessor (paper 000, App. D)

The folder is what `save_pretrained` writes (or `huggingface-cli download <repo> --local-dir`):
config.json, the weights, the processor's files.

Score and box of one (image, class query): every predicted box gets the sigmoid of its logit for
the query (Grounding DINO: the largest over the query's text tokens, as its post-processing
does); the score is the largest over boxes, the box is that box -- no threshold (paper 004, §2).
Boxes come back normalised (cx, cy, w, h) and are rescaled to the source image's pixels:
OWL-ViT squashes the image to a square, so x scales by its width and y by its height; OWLv2 pads
it to a square (bottom and right) before resizing, so both scale by max(width, height);
Grounding DINO keeps the aspect and normalises by the unpadded image, so like OWL-ViT.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from PIL import Image

from hsi.detectors.base import Detection, Query, clip_box, cxcywh_to_box

KINDS = ("owlvit", "owlv2", "grounding_dino")
EXAMPLE_REPOS = {
    "owlvit": "google/owlvit-base-patch32",
    "owlv2": "google/owlv2-base-patch16-ensemble",
    "grounding_dino": "IDEA-Research/grounding-dino-tiny",
}


def folder_identity(folder: Path) -> str:
    """A short hash of the folder's file listing (relative paths, sizes, mtimes): its weights' id."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            st = p.stat()
            h.update(
                f"{p.relative_to(folder).as_posix()}\x1f{st.st_size}\x1f{st.st_mtime_ns}\n".encode()
            )
    return h.hexdigest()[:16]


def local_folder(path, key: str, kind: str) -> Path:
    """The model folder, or a ValueError naming `key`, the folder and how to fill it."""
    hint = (
        f"download it on a machine with network (`huggingface-cli download {EXAMPLE_REPOS[kind]} "
        f"--local-dir <folder>`), copy it here and set {key}=<folder>"
    )
    if path is None or str(path) in ("", "???"):
        raise ValueError(
            f"{key} is not set: the {kind} detector needs a local model folder; {hint}"
        )
    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{key}={path}: no such folder ({folder.resolve()}); {hint}")
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"{key}={path}: {folder.resolve()} has no config.json, so it is not a saved "
            f"transformers model; {hint}"
        )
    return folder


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class OpenVocabDetector:
    """An OWL-ViT / OWLv2 / Grounding DINO detector loaded from a local folder (module doc)."""

    def __init__(self, kind: str, path, device: str = "auto", key: str = "detector.path"):
        import transformers

        if kind not in KINDS:
            raise ValueError(f"detector.kind={kind!r}: expected one of {[*KINDS, 'cam']}")
        self.kind = kind
        self.folder = local_folder(path, key, kind)
        classes = {
            "owlvit": ("OwlViTForObjectDetection", "OwlViTProcessor"),
            "owlv2": ("Owlv2ForObjectDetection", "Owlv2Processor"),
            "grounding_dino": ("AutoModelForZeroShotObjectDetection", "AutoProcessor"),
        }[kind]
        model_cls, processor_cls = (getattr(transformers, c) for c in classes)
        try:
            self.model = model_cls.from_pretrained(self.folder, local_files_only=True)
            self.processor = processor_cls.from_pretrained(self.folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{key}={path}: cannot load a {kind} model and processor from {self.folder.resolve()} "
                f"({type(err).__name__}: {str(err).strip().splitlines()[0][:300]})"
            ) from None
        self.device = pick_device(str(device))
        self.model.to(self.device).eval()
        self.tokenizer = self.processor.tokenizer
        limit = getattr(self.model.config, "text_config", None)
        limit = getattr(limit, "max_position_embeddings", None)
        if kind == "grounding_dino":
            limit = int(getattr(self.model.config, "max_text_len", limit or 256))
        self.max_tokens = int(limit) if limit else None
        self.name = f"{kind}|{self.folder.resolve()}|{folder_identity(self.folder)}"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, verbose=False)["input_ids"])

    def text(self, prompt: str) -> str:
        # Grounding DINO's queries are lower case and end with a full stop (its training format)
        return prompt.lower().rstrip(". ") + "." if self.kind == "grounding_dino" else prompt

    @torch.inference_mode()
    def detect(self, images: list[Image.Image], queries: list[Query]) -> list[Detection]:
        if len(images) != len(queries):
            raise ValueError(f"detect: {len(images)} images but {len(queries)} queries")
        if not images:
            return []
        images = [im.convert("RGB") for im in images]
        texts = [self.text(q.prompt) for q in queries]
        if self.kind == "grounding_dino":
            inputs = self.processor(
                images=images,
                text=texts,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_tokens,  # its max_text_len (256)
            )
        else:
            inputs = self.processor(
                text=[[t] for t in texts],
                images=images,
                return_tensors="pt",
                padding="max_length",
                truncation=True,
                max_length=self.max_tokens,  # the text model's positions (OWL: 16)
            )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        outputs = self.model(**inputs)
        logits = outputs.logits.float()
        if self.kind == "grounding_dino":
            mask = inputs["attention_mask"].bool()  # (B, L): the query's tokens
            length = mask.shape[1]
            probs = logits[..., :length].sigmoid().masked_fill(~mask[:, None, :], 0.0)
            per_box = probs.max(dim=-1).values  # (B, boxes)
        else:
            per_box = logits[..., 0].sigmoid()  # (B, boxes): one query per image
        scores, best = per_box.max(dim=1)
        boxes = outputs.pred_boxes.float()
        found = []
        for i, im in enumerate(images):
            w, h = im.size
            cx, cy, bw, bh = (float(v) for v in boxes[i, best[i]].cpu())
            sx, sy = (max(w, h), max(w, h)) if self.kind == "owlv2" else (w, h)
            box = clip_box(cxcywh_to_box(cx, cy, bw, bh, sx, sy), w, h)
            found.append(Detection(score=float(scores[i]), box=box))
        return found
