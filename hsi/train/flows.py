"""The method flows of `hsi-train` (method.algorithm): erm, evaluate, jtt, dfr."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from hsi.methods.erm import ERMModule
from hsi.train.job import (
    CHECKPOINT_DIR,
    Job,
    checkpoint_paths,
    erm_stage1,
    eval_device,
    evaluate,
    fit,
    main_callbacks,
    make_module,
    make_trainer,
    stage1_network,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- ERM
def run_erm(job: Job) -> dict[str, Any]:
    """ERM, ERM_easy, ERM_all: one fit, then val and test of the best checkpoint."""
    cfg = job.cfg
    epochs = int(cfg.trainer.max_epochs)
    module = make_module(job, cfg.method.module, epochs, method=str(cfg.method.name))
    outcome = fit(job, module, job.out, job.loggers, None, cfg.ckpt_path, main_callbacks(job))
    results = {
        "epochs": outcome.epochs,
        "global_step": outcome.global_step,
        **evaluate(job, outcome),
    }
    results["checkpoints"] = checkpoint_paths(best=outcome.best, last=outcome.last)
    return results


# --------------------------------------------------------------------------- pretrained
def run_evaluate(job: Job) -> dict[str, Any]:
    """A model as it is (no training): val and test group accuracy (Table 3's "Pretrained" row).

    The model comes from ``model.checkpoint`` (e.g. a source-pretraining run), ``model.weights``
    or ``model.pretrained``; its head must already fit the data's classes.
    """
    model_cfg = job.cfg.model
    if not (model_cfg.get("checkpoint") or model_cfg.get("weights") or model_cfg.get("pretrained")):
        raise ValueError(
            "method=pretrained evaluates a trained model: set model.checkpoint=<run folder or "
            ".ckpt>, model.weights=<file> or model.pretrained=true"
        )
    network = job.model_factory()(num_classes=job.num_classes, require_head=True)
    module = ERMModule(
        model=network, num_classes=job.num_classes, groups=job.groups, method="pretrained"
    )
    trainer, _ = make_trainer(job, job.out, job.loggers, max_epochs=0, checkpointing=False)
    trainer.validate(module, datamodule=job.datamodule, verbose=False)
    trainer.test(module, datamodule=job.datamodule, verbose=False)
    return {
        "epochs": 0,
        "global_step": 0,
        **{s: dict(module.last_metrics[s]) for s in ("val", "test")},
    }


# --------------------------------------------------------------------------- JTT
def run_jtt(job: Job) -> dict[str, Any]:
    """JTT: error set of the stage-1 model, then ERM on the upsampled train split."""
    from hsi.methods.jtt import (
        compute_error_set,
        error_set_report,
        upsample_repeats,
        write_error_set,
    )

    cfg, dm = job.cfg, job.datamodule
    if getattr(dm, "sampling", "standard") != "standard" or not hasattr(dm, "set_train_repeats"):
        raise ValueError(
            "method=jtt upsamples the train split as built: use data=hsi (hsi_v2, hsi_sam) with data.sampling=standard"
        )
    stage1, stage1_record = erm_stage1(job)
    errors = compute_error_set(
        stage1_network(job, stage1, require_head=True), dm.train_eval_dataloader(), eval_device(cfg)
    )
    train_set = dm.dataset("train")
    errors.insert(1, "sample_id", train_set.sample_ids)
    errors["category"] = [job.groups[g].category for g in errors["group_id"]]
    errors["group"] = [job.groups[g].name for g in errors["group_id"]]
    report = error_set_report(errors, errors["category"])
    lambda_up = int(cfg.method.lambda_up)
    dm.set_train_repeats(
        upsample_repeats(len(errors), np.flatnonzero(errors["error"].to_numpy()), lambda_up)
    )
    # The multiplicity each sample really gets in a stage-2 epoch, read off the sampler in use.
    sampler = dm.train_dataloader().sampler
    errors["multiplicity"] = np.bincount(sampler.indices(0), minlength=len(errors))
    report["lambda_up"] = lambda_up
    report["epoch_size"] = len(sampler)
    write_error_set(job.out, errors, report)
    log.info("JTT error set: %d of %d train samples (precision %.3f, recall %s against Medium+Hard)",
             report["size"], report["num_samples"], report["precision"] or 0.0, report["recall"])  # fmt: skip

    L.seed_everything(int(cfg.seed), workers=True)  # stage 2 starts from stage 1's initial weights
    epochs = int(cfg.trainer.max_epochs)
    module = make_module(job, cfg.method.module, epochs, method=str(cfg.method.name),
                         stage1_checkpoint=str(stage1), error_set=report)  # fmt: skip
    outcome = fit(job, module, job.out, job.loggers, None, cfg.ckpt_path, main_callbacks(job))
    results = {
        "epochs": outcome.epochs,
        "global_step": outcome.global_step,
        **evaluate(job, outcome),
    }
    results["checkpoints"] = checkpoint_paths(best=outcome.best, last=outcome.last, stage1=stage1)
    results["stage1"] = stage1_record
    results["error_set"] = {**report, "file": str(job.out / "error_set.csv")}
    return results


# Data-module keys that change how data is served, not what the samples are: left out of the
# embedding cache's data key, so a sweep over them reuses the embeddings.
# (`sampling` is replaced by whether the train split is cut to the Easy groups: sampling=easy
# serves other train samples, balanced only draws the same ones differently.)
_SERVING_KEYS = ("batch_size", "eval_batch_size", "num_workers", "sampling", "augment", "seed",
                 "pin_memory", "persistent_workers")  # fmt: skip
_RUNTIME_KEYS = ("shard", "num_shards", "workers", "progress")


# --------------------------------------------------------------------------- DFR
def data_key(cfg: DictConfig) -> str:
    """Names the data a split's embeddings come from: the data config without serving keys."""
    node = OmegaConf.to_container(cfg.data, resolve=True)
    easy_only = node.get("sampling") == "easy"
    for key in _SERVING_KEYS:
        node.pop(key, None)
    if easy_only:
        node["train_easy_only"] = True
    for sub in ("generate", "source"):
        if isinstance(node.get(sub), dict):
            for key in _RUNTIME_KEYS:
                node[sub].pop(key, None)
            if isinstance(node[sub].get("source"), dict):
                for key in _RUNTIME_KEYS:
                    node[sub]["source"].pop(key, None)
    digest = hashlib.sha256(json.dumps(node, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    name = (node.get("generate") or {}).get("dataset", {}).get("name") or "source"
    return f"{name}-{digest}"


def run_dfr(job: Job) -> dict[str, Any]:
    """DFR: the last layer of the frozen stage-1 model refit on the val embeddings."""
    from hsi.methods.dfr import (
        VARIANTS,
        DFRModule,
        EmbeddingCache,
        embedding_loader,
        extract_embeddings,
    )

    cfg, dm = job.cfg, job.datamodule
    variant = str(cfg.method.variant)
    if variant not in VARIANTS:
        raise ValueError(f"method.variant={variant!r}: must be one of {VARIANTS}")
    stage1, stage1_record = erm_stage1(job)
    cache, key = EmbeddingCache(cfg.method.cache_dir), data_key(cfg)
    loaders = {
        "train": dm.train_eval_dataloader,
        "val": dm.val_dataloader,
        "test": dm.test_dataloader,
    }
    splits = ["val", "test"]
    if variant == "official" and cfg.method.official.scaler_on == "train":
        splits.append("train")
    network: list[torch.nn.Module] = []  # built on the first cache miss only

    def compute(split: str):
        if not network:
            network.append(stage1_network(job, stage1))
        log.info("DFR: extracting %s embeddings of %s", split, stage1)
        return extract_embeddings(network[0], loaders[split](), eval_device(cfg))

    embeddings, cache_files = {}, {}
    for split in splits:
        path = cache.path(stage1, split, key)
        hit = path.is_file()
        embeddings[split] = cache.get_or_compute(stage1, split, key, lambda s=split: compute(s))
        cache_files[split] = {"path": str(path), "hit": hit}
        log.info(
            "DFR: %s embeddings %s %s", split, "read from the cache" if hit else "cached at", path
        )

    X, y, g = embeddings["val"]
    if variant == "paper":
        options = {k: cfg.method.paper[k] for k in ("epochs", "lr", "l2")}
    else:
        options = {
            "n_subsets": int(cfg.method.official.n_subsets),
            "c_grid": list(cfg.method.official.c_grid),
        }
        if "train" in embeddings:
            options["scaler_X"] = embeddings["train"][0]
    module = DFRModule.fit(variant, X, y, g, num_classes=job.num_classes, groups=job.groups,
                           seed=int(cfg.seed), checkpoint=str(stage1), **options)  # fmt: skip
    trainer, _ = make_trainer(job, job.out, job.loggers, checkpointing=False)
    trainer.validate(module, dataloaders=embedding_loader(*embeddings["val"]), verbose=False)
    trainer.test(module, dataloaders=embedding_loader(*embeddings["test"]), verbose=False)
    head = job.out / CHECKPOINT_DIR / "dfr.ckpt"
    trainer.save_checkpoint(head)
    return {
        "epochs": None,  # no network is trained here (stage 1's epochs are under stage1)
        "global_step": None,
        "val": dict(module.last_metrics["val"]),  # on the val samples the layer was fit on
        "test": dict(module.last_metrics["test"]),
        "checkpoints": checkpoint_paths(dfr=head, stage1=stage1),
        "stage1": stage1_record,
        "dfr": {
            "variant": variant,
            "chosen_C": module.hparams.get("chosen_C"),
            "data_key": key,
            "embeddings": cache_files,
            **{k: v for k, v in options.items() if k != "scaler_X"},
        },  # fmt: skip
    }


FLOWS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "erm": run_erm,
    "jtt": run_jtt,
    "dfr": run_dfr,
    "evaluate": run_evaluate,
}
