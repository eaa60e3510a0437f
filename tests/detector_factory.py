"""Tiny randomly initialised detectors saved to local folders, as `save_pretrained` leaves a
downloaded one, and a tiny classifier checkpoint for the cam detector: no weights are fetched.

OWL-ViT / OWLv2: 32 px images, 8 px patches, a 2-layer text and vision transformer of width 32
(`projection_dim` must equal the text model's width), and a CLIP tokenizer over single bytes
(every text tokenizes, one token per character). Grounding DINO: a 1-block-per-stage Swin, a
1-layer BERT over a 60-word vocabulary, 10 queries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from hsi.sources.record import ImageRecord

OWL_SIDE = 32


def clip_tokenizer():
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=16)


def save_tiny_owl(folder: Path, kind: str, seed: int = 0) -> Path:
    import transformers as tf

    tokenizer = clip_tokenizer()
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        image_size=OWL_SIDE,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    size = {"height": OWL_SIDE, "width": OWL_SIDE}
    torch.manual_seed(seed)
    if kind == "owlvit":
        model = tf.OwlViTForObjectDetection(
            tf.OwlViTConfig(text_config=text, vision_config=vision, projection_dim=32)
        )
        processor = tf.OwlViTProcessor(
            image_processor=tf.OwlViTImageProcessor(size=size, crop_size=size), tokenizer=tokenizer
        )
    else:
        model = tf.Owlv2ForObjectDetection(
            tf.Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)
        )
        processor = tf.Owlv2Processor(
            image_processor=tf.Owlv2ImageProcessor(size=size), tokenizer=tokenizer
        )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


GDINO_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "photo", "of"]


def save_tiny_grounding_dino(folder: Path, seed: int = 0) -> Path:
    import transformers as tf

    letters = "bcdefghijklmnopqrstuvwxyz"
    words = GDINO_WORDS + list(letters) + ["##" + c for c in "a" + letters]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = tf.BertTokenizer(vocab=str(folder / "vocab.txt"))
    backbone = tf.SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=2,
        out_features=["stage2", "stage3", "stage4"],
    )
    text = tf.BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=32,
    )
    config = tf.GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,  # GroupNorm(32, d_model) in the input projections
        encoder_layers=1,
        decoder_layers=2,  # its box heads are tied across decoder layers: needs two
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=10,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
    )
    torch.manual_seed(seed)
    model = tf.GroundingDinoForObjectDetection(config)
    image_processor = tf.GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    processor = tf.GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_detector(folder: Path, kind: str) -> Path:
    return (
        save_tiny_grounding_dino(folder)
        if kind == "grounding_dino"
        else save_tiny_owl(folder, kind)
    )


def save_cam_checkpoint(path: Path, num_classes: int, name: str = "resnet10t", seed: int = 0):
    """A Lightning-style checkpoint of an hsi classifier (`model.` prefix), and its network."""
    torch.manual_seed(seed)
    net = timm.create_model(name, num_classes=num_classes)
    state = {"model." + k: v for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "state_dict": state}, path)
    return net.eval()


def write_images(root: Path, sizes: list[tuple[int, int]], labels: list[int], boxes=None):
    """PNG images of the given (width, height) under root/train/ with their records."""
    records = []
    for i, ((w, h), label) in enumerate(zip(sizes, labels, strict=True)):
        rng = np.random.default_rng(i)
        path = root / "train" / f"img_{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        records.append(
            ImageRecord(
                image_id=f"img_{i:03d}",
                split="train",
                wnid=f"n{label:08d}",
                label=label,
                path=f"train/img_{i:03d}.png",
                width=w,
                height=h,
                boxes=tuple(boxes[i]) if boxes else (),
            )
        )
    return records
