"""The timm model factory: configs, offline weights, hsi checkpoints, embeddings."""

import re
import time
from pathlib import Path

import pytest
import timm
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import save_file

from hsi.models import (
    classifier,
    create_model,
    embed,
    embedding_dim,
    model_input_config,
)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "conf" / "model").glob("*.yaml"))
SMALL = [p for p in CONFIGS if not OmegaConf.load(p).pretrained]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_the_paper_and_demo_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {
        "resnet18",
        "resnet10t",
        "resnet50",
        "resnet50_aug",
        "convnext_base",
        "coatnet",
        "hiera_base",
        "mvitv2_small",
        "vit_b_clip",
        "deit_small",
    } <= names
    assert {p.stem for p in SMALL} >= {"resnet18", "resnet10t"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_names_a_timm_model(path):
    cfg = OmegaConf.load(path)
    assert cfg._target_ == "hsi.models.create_model"
    assert cfg._partial_ is True
    assert {"name", "pretrained", "weights", "checkpoint"} <= set(cfg)
    assert cfg.weights is None and cfg.checkpoint is None
    if cfg.pretrained:
        assert cfg.name in timm.list_pretrained(), f"{cfg.name} has no timm weights"
        text = path.read_text()
        # says where the paper uses it and how to supply the weights offline
        assert re.search(r"(Tables?|Figure) \d", text) and "model.weights=" in text
    else:
        assert cfg.name in timm.list_models()


@pytest.mark.parametrize("path", SMALL, ids=lambda p: p.stem)
def test_small_models_instantiate_and_embed_at_64px(path):
    model = instantiate(OmegaConf.load(path))(num_classes=5)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        features = embed(model, x)
    assert logits.shape == (2, 5)
    assert features.shape == (2, embedding_dim(model)) == (2, model.num_features)
    head = classifier(model)
    assert isinstance(head, torch.nn.Linear) and head.out_features == 5
    with torch.no_grad():  # the head applied to the embedding is the forward pass
        assert torch.allclose(head(features), logits, atol=1e-5)
    cfg = model_input_config(model)
    assert tuple(cfg["mean"]) == IMAGENET_MEAN and tuple(cfg["std"]) == IMAGENET_STD


# resnet18's steps take over 5 s on a CPU; the smaller models stay in the quick run
TRAIN_CASES = [
    pytest.param(p, marks=pytest.mark.slow) if p.stem == "resnet18" else p for p in SMALL
]


@pytest.mark.parametrize("path", TRAIN_CASES, ids=lambda p: p.stem)
def test_small_models_train_at_64px(path):
    """A few Adam steps on a fixed batch of 8 images at least halve the loss."""
    torch.manual_seed(0)
    model = instantiate(OmegaConf.load(path))(num_classes=5).train()
    x, y = torch.randn(8, 3, 64, 64), torch.arange(8) % 5
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def backbone_equal(model, reference_state, head="fc."):
    state = model.state_dict()
    keys = [k for k in reference_state if not k.startswith(head)]
    assert keys and set(keys) == {k for k in state if not k.startswith(head)}
    return all(torch.equal(state[k], reference_state[k]) for k in keys)


def random_resnet18(num_classes, seed):
    torch.manual_seed(seed)
    return timm.create_model("resnet18", num_classes=num_classes)


def test_local_weight_file_keeps_backbone_and_resets_a_1000_class_head(tmp_path):
    source = random_resnet18(1000, seed=1).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(source, path)
    model = create_model("resnet18", 5, weights=str(path))
    assert backbone_equal(model, source)
    assert model.get_classifier().weight.shape == (5, 512)


def test_local_safetensors_with_matching_head_loads_the_head(tmp_path):
    source = random_resnet18(5, seed=2).state_dict()
    path = tmp_path / "resnet18_5.safetensors"
    save_file(source, str(path))
    model = create_model("resnet18", 5, weights=str(path))
    assert backbone_equal(model, source)
    assert torch.equal(model.fc.weight, source["fc.weight"])
    assert torch.equal(model.fc.bias, source["fc.bias"])


def save_lightning_checkpoint(net, path):
    state = {"model." + k: v for k, v in net.state_dict().items()}
    state["dfr_head.weight"] = torch.zeros(2, 2)  # another submodule of the training module
    torch.save({"epoch": 3, "state_dict": state, "hyper_parameters": {"lr": 1e-3}}, path)


def test_hsi_checkpoint_loads_backbone_and_head(tmp_path):
    net = random_resnet18(5, seed=3)
    path = tmp_path / "last.ckpt"
    save_lightning_checkpoint(net, path)
    model = create_model("resnet18", 5, checkpoint=str(path), pretrained=True)
    for key, value in net.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_plain_state_dict_checkpoint(tmp_path):
    net = random_resnet18(5, seed=4)
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    model = create_model("resnet18", 5, checkpoint=str(path))
    assert torch.equal(model.fc.weight, net.fc.weight)
    assert backbone_equal(model, net.state_dict())


def test_checkpoint_with_other_class_count_resets_the_head(tmp_path):
    net = random_resnet18(5, seed=5)
    path = tmp_path / "last.ckpt"
    save_lightning_checkpoint(net, path)
    model = create_model("resnet18", 3, checkpoint=str(path))
    assert backbone_equal(model, net.state_dict())
    assert model.num_classes == 3 and model.get_classifier().weight.shape == (3, 512)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "last.ckpt"
    save_lightning_checkpoint(random_resnet18(5, seed=6), path)
    with pytest.raises(ValueError, match=r"(?s)last\.ckpt.*resnet10t.*model\.name"):
        create_model("resnet10t", 5, checkpoint=str(path))


def test_lightning_checkpoint_without_model_prefix_is_refused(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"net.fc.weight": torch.zeros(5, 512)}}, path)
    with pytest.raises(ValueError, match=r"other\.ckpt.*'model\.\*'"):
        create_model("resnet18", 5, checkpoint=str(path))


@pytest.mark.parametrize("key", ["weights", "checkpoint"])
def test_missing_files_name_the_path_and_the_key(tmp_path, key):
    missing = tmp_path / "nowhere" / "file.pth"
    with pytest.raises(FileNotFoundError) as err:
        create_model("resnet18", 5, **{key: str(missing)})
    assert str(missing) in str(err.value) and f"model.{key}" in str(err.value)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Point the Hugging Face and torch hub caches at empty folders; network allowed by env."""
    import huggingface_hub.constants

    hf_cache = tmp_path / "hf"
    hf_cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the check must not rely on it
    return hf_cache


def test_pretrained_without_weights_fails_at_once(empty_caches):
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as err:
        create_model("resnet50.tv_in1k", 5, pretrained=True)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "model.weights=" in message and "timm/resnet50.tv_in1k" in message
    assert str(empty_caches) in message


def test_pretrained_from_a_populated_hf_cache(empty_caches):
    # the hub cache layout: models--{org}--{name}/refs/main -> snapshots/{commit}/{file}
    repo = empty_caches / "models--timm--resnet18.a1_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    source = random_resnet18(1000, seed=7).state_dict()
    save_file(source, str(snapshot / "model.safetensors"))

    model = create_model("resnet18", 5, pretrained=True)
    assert backbone_equal(model, source)
    assert model.get_classifier().out_features == 5
