"""ERM (and ERM_easy / ERM_all, which differ only in the data module's sampling): paper 000, §5.2–5.3.

Fine-tune a classifier with cross-entropy. The optimizer and the learning-rate schedule are
``_partial_`` config nodes (``method.optimizer``, ``method.lr_scheduler``); the paper's recipe is
SGD, momentum 0.9, weight decay 1e-3, constant learning rate 1e-3, a fixed 20 epochs.
Validation and test log the group metrics of :class:`hsi.methods.base.GroupEvalModule`.

The network is held as ``self.model``, so a checkpoint's state dict reads ``model.<timm key>``:
:func:`hsi.models.create_model` (``checkpoint=``) loads exactly that prefix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from hsi.groups import Group
from hsi.methods.base import (
    GroupEvalModule,
    Method,
    as_groups,
    group_sizes,
    split_batch,
)

# The paper's fine-tuning recipe (paper 000, §5.2–5.3): what a module built without a config uses.
PAPER_OPTIMIZER = {
    "_target_": "torch.optim.SGD",
    "_partial_": True,
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 1e-3,
}
# Weight sources are not needed to rebuild a network whose weights come from a checkpoint.
_WEIGHT_KEYS = ("pretrained", "weights", "checkpoint", "num_classes")


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def describe_model(
    model_factory: Callable[..., nn.Module] | None, model: nn.Module
) -> tuple[str, dict[str, Any]]:
    """(name, keyword arguments) that rebuild the architecture through hsi.models.create_model.

    A Hydra ``_partial_`` node of create_model gives its ``name`` and timm keywords (the weight
    sources are dropped: a checkpoint brings its own weights); otherwise the timm architecture
    or, failing that, the class name is recorded for the record only.
    """
    if isinstance(model_factory, functools.partial) and "name" in model_factory.keywords:
        keywords = {k: _plain(v) for k, v in model_factory.keywords.items()}
        name = str(keywords.pop("name"))
        return name, {k: v for k, v in keywords.items() if k not in _WEIGHT_KEYS}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__), {}


class ERMModule(GroupEvalModule):
    """Empirical risk minimisation with a configured optimizer (paper 000, §5.2–5.3).

    Give either ``model_factory`` (e.g. ``hydra.utils.instantiate(cfg.model)``, called as
    ``model_factory(num_classes=...)``) with ``num_classes``, or a built ``model``. ``groups``:
    the 12 HSI groups (or their three sizes); None for plain classification (one group).
    ``optimizer``: a ``_partial_`` node of a torch optimizer (default: the paper's SGD);
    ``lr_scheduler``: a ``_partial_`` node of a torch scheduler stepped once per epoch, or None
    (constant). Both are kept as plain dicts in the hyper-parameters. ``model_name`` /
    ``model_kwargs`` are filled in from the factory and let ``load_from_checkpoint`` rebuild the
    network without one. ``method``: the method's name (``method.name``).
    """

    def __init__(
        self,
        model_factory: Callable[..., nn.Module] | None = None,
        num_classes: int | None = None,
        groups: Sequence[Group] | Sequence[int] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        lr_scheduler: Mapping[str, Any] | None = None,
        model: nn.Module | None = None,
        model_name: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        method: str = "erm",
    ) -> None:
        super().__init__()
        optimizer = _node(optimizer, "optimizer") or dict(PAPER_OPTIMIZER)
        lr_scheduler = _node(lr_scheduler, "lr_scheduler")
        # Collects the init arguments of this class and of subclasses (JTT's lambda_up ...).
        self.save_hyperparameters(ignore=["model", "model_factory", "groups"])
        self.model = self._build(model_factory, model, num_classes, model_name, model_kwargs)
        groups = as_groups(groups)
        name, kwargs = (
            (model_name, model_kwargs or {})
            if model_name
            else describe_model(model_factory, self.model)
        )
        # What rebuilds the module from a checkpoint and reads well in hparams.yaml: sizes
        # instead of Group objects, the architecture instead of the factory, plain dicts
        # instead of config objects (a checkpoint then loads with torch.load(weights_only=True)).
        self.save_hyperparameters(
            {
                **self.hparams,
                "num_classes": int(getattr(self.model, "num_classes", num_classes)),
                "groups": group_sizes(groups),
                "model_name": name,
                "model_kwargs": kwargs,
                "optimizer": optimizer,
                "lr_scheduler": lr_scheduler,
                "method": str(method),
            }
        )
        self.init_group_metrics(groups)

    @staticmethod
    def _build(
        model_factory: Callable[..., nn.Module] | None,
        model: nn.Module | None,
        num_classes: int | None,
        model_name: str | None,
        model_kwargs: dict[str, Any] | None,
    ) -> nn.Module:
        if model is not None:
            if model_factory is not None:
                raise ValueError("give model_factory or model, not both")
            if (
                num_classes is not None
                and getattr(model, "num_classes", num_classes) != num_classes
            ):
                raise ValueError(
                    f"num_classes={num_classes} but the model has {model.num_classes} outputs"
                )
            return model
        if num_classes is None:
            raise ValueError(
                "num_classes is required to build the model (the data module's num_classes)"
            )
        if model_factory is not None:
            return model_factory(num_classes=int(num_classes))
        if model_name is not None:
            from hsi.models import create_model

            return create_model(model_name, int(num_classes), **(model_kwargs or {}))
        raise ValueError("give model_factory (the model config) or a model")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = split_batch(batch)
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        # sync_dist: under DDP the epoch values are the mean over the processes' shards
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(y),
            sync_dist=True,
        )
        self.log("train/acc", acc, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
        return loss

    def configure_optimizers(self) -> Any:
        """The optimizer node over the network's parameters, and its schedule (per epoch)."""
        hp = self.hparams
        optimizer = instantiate(hp.optimizer)(self.model.parameters())
        if not hp.lr_scheduler:
            return optimizer
        scheduler = instantiate(hp.lr_scheduler)(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


def _node(value: Any, key: str) -> dict[str, Any] | None:
    """A ``_partial_`` config node as a plain dict (None stays None)."""
    if value is None:
        return None
    value = _plain(value)
    if not isinstance(value, Mapping) or "_target_" not in value:
        raise ValueError(
            f"{key} must be a config node with a _target_ (e.g. {{_target_: torch.optim.SGD, "
            f"_partial_: true, lr: 0.001}}); got {value!r}"
        )
    return {**value, "_partial_": True}


# --------------------------------------------------------------------------- the method
class ERM(Method):
    """ERM, ERM_easy, ERM_all (``method=erm|erm_easy|erm_all``): one fit of ``method.epochs``.

    Keys: ``name``, ``epochs``, ``module`` (the LightningModule, a ``_partial_`` node),
    ``optimizer``, ``lr_scheduler``.
    """

    def check(self, cfg: DictConfig) -> None:
        check_epochs(self.cfg.epochs, f"{self.key}.epochs")

    def build_module(self, job: Any, **kwargs: Any) -> ERMModule:
        """The training module of ``module`` with this method's optimizer and name."""
        return job.make_module(
            self.cfg.module,
            optimizer=self.cfg.optimizer,
            lr_scheduler=self.cfg.get("lr_scheduler"),
            method=self.name,
            **kwargs,
        )

    def run(self, job: Any) -> dict[str, Any]:
        module = self.build_module(job)
        outcome = job.fit(
            module, job.out, job.loggers, None, job.cfg.ckpt_path, job.main_callbacks()
        )
        results = {
            "epochs": outcome.epochs,
            "global_step": outcome.global_step,
            **job.evaluate(outcome),
        }
        results["checkpoints"] = job.checkpoint_paths(best=outcome.best, last=outcome.last)
        return results


def check_epochs(value: Any, key: str) -> int:
    """A number of training epochs as an int >= 1, or ValueError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{key}={value}: a training method needs at least one epoch; set {key} to an "
            f"integer >= 1 (method=pretrained evaluates a model without training)"
        )
    return int(value)


class Pretrained(Method):
    """A model as it is (no training): val and test group accuracy (Table 3's "Pretrained" row).

    The model comes from ``model.checkpoint`` (e.g. a source-pretraining run), ``model.weights``
    or ``model.pretrained``; its head must already fit the data's classes.
    """

    def check(self, cfg: DictConfig) -> None:
        model_cfg = cfg.model
        if not (
            model_cfg.get("checkpoint") or model_cfg.get("weights") or model_cfg.get("pretrained")
        ):
            raise ValueError(
                "method=pretrained evaluates a trained model: set model.checkpoint=<run folder or "
                ".ckpt>, model.weights=<file> or model.pretrained=true"
            )

    def run(self, job: Any) -> dict[str, Any]:
        self.check(job.cfg)
        network = job.model_factory()(num_classes=job.num_classes, require_head=True)
        module = ERMModule(
            model=network, num_classes=job.num_classes, groups=job.groups, method=self.name
        )
        trainer = job.make_trainer(job.out, job.loggers, max_epochs=0, checkpointing=False)
        trainer.validate(module, datamodule=job.datamodule, verbose=False)
        trainer.test(module, datamodule=job.datamodule, verbose=False)
        return {
            "epochs": 0,
            "global_step": 0,
            **{s: dict(module.last_metrics[s]) for s in ("val", "test")},
        }
