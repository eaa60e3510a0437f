"""ERM (and ERM_easy / ERM_all, which differ only in the data module's sampling): SPEC §6.

Fine-tune a classifier with cross-entropy: SGD, momentum 0.9, weight decay 1e-3, constant
learning rate 1e-3 (the paper's recipe; a cosine schedule is an option). Validation and test
accumulate per-group counts in a :class:`hsi.metrics.GroupAccuracy` and log the SPEC §8 names
(``val/acc``, ``val/worst_group_acc``, ``val/group/CeO_56`` ...) once per epoch; checkpoints are
selected on ``val/worst_group_acc``.

The network is held as ``self.model``, so a checkpoint's state dict reads ``model.<timm key>``:
:func:`hsi.models.create_model` (``checkpoint=``) loads exactly that prefix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from hsi.groups import Group, make_groups
from hsi.metrics import GroupAccuracy, prefixed

LR_SCHEDULES = ("constant", "cosine")
SPLITS = ("val", "test")
# Weight sources are not needed to rebuild a network whose weights come from a checkpoint.
_WEIGHT_KEYS = ("pretrained", "weights", "checkpoint", "num_classes")


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(x, y, group_id)``, ``(x, y)`` or ``x`` -> ``(x, y or None, group_id or None)``."""
    if isinstance(batch, torch.Tensor):
        return batch, None, None
    if isinstance(batch, (list, tuple)) and len(batch) in (2, 3):
        x, y, *rest = batch
        return x, y, (rest[0] if rest else None)
    raise ValueError(
        f"expected a batch (x, y, group_id), (x, y) or a tensor x; got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (list, tuple)) else "")
    )


@contextmanager
def evaluating(model: nn.Module, device: str | torch.device = "cpu") -> Iterator[nn.Module]:
    """Put ``model`` in eval mode on ``device`` without gradients; restore mode and device after.

    Dropout off and batch-norm on running statistics: what JTT's error set and DFR's embeddings
    must see. The caller's model comes back exactly as it was handed over.
    """
    was_training = model.training
    param = next(model.parameters(), None)
    old_device = param.device if param is not None else None
    model.to(device).eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
        if old_device is not None:
            model.to(old_device)


def as_groups(groups: Sequence[Group] | Sequence[int] | None) -> list[Group] | None:
    """Groups from a list of :class:`Group` or from the three object sizes (as hparams store them)."""
    if groups is None:
        return None
    groups = list(groups)
    if groups and all(isinstance(g, Group) for g in groups):
        return groups
    if all(isinstance(g, int) for g in groups):
        return make_groups(groups)
    raise TypeError(f"groups must be hsi.groups.Group objects or the three sizes; got {groups!r}")


def group_sizes(groups: Sequence[Group] | None) -> list[int] | None:
    """The three object sizes that :func:`as_groups` turns back into the groups."""
    return sorted({g.size for g in groups}) if groups else None


class GroupEvalModule(L.LightningModule):
    """Validation/test per-group accuracy shared by every method of this package.

    Subclasses call :meth:`init_group_metrics` in ``__init__`` and implement ``forward``.
    After an epoch of validation or test, ``last_metrics[split]`` holds the plain-float metric
    dict (keys without the split prefix) of that epoch, for the caller's ``results.json``.
    """

    def init_group_metrics(self, groups: Sequence[Group] | None) -> None:
        self.groups = groups
        # Separate objects: a test run in the same process must not mix counts with validation.
        self.val_metric = GroupAccuracy(groups)
        self.test_metric = GroupAccuracy(groups)
        self.last_metrics: dict[str, dict[str, float]] = {}

    def _metric(self, split: str) -> GroupAccuracy:
        return self.val_metric if split == "val" else self.test_metric

    def _eval_step(self, batch: Any, split: str) -> None:
        x, y, group_id = split_batch(batch)
        if y is None:
            raise ValueError(f"{split} batches must carry labels: (x, y, group_id)")
        self._metric(split).update(self(x), y, group_id)

    def _epoch_end(self, split: str) -> None:
        metric = self._metric(split)
        values = {key: float(value) for key, value in metric.compute().items()}
        metric.reset()
        self.log_dict(prefixed(values, split))
        sanity = self._trainer is not None and self._trainer.sanity_checking
        if not sanity:  # the sanity check's two batches are not a result
            self.last_metrics[split] = values

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Logits [N, num_classes]."""
        return self(split_batch(batch)[0])


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
    """Empirical risk minimisation with the paper's fine-tuning recipe (SPEC §6).

    Give either ``model_factory`` (e.g. ``hydra.utils.instantiate(cfg.model)``, called as
    ``model_factory(num_classes=...)``) with ``num_classes``, or a built ``model``. ``groups``:
    the 12 HSI groups (or their three sizes); None for plain classification (one group).
    ``lr_schedule``: ``constant`` (paper) or ``cosine`` over ``max_epochs`` (default: the
    trainer's). ``model_name``/``model_kwargs`` are filled in from the factory and let
    ``load_from_checkpoint`` rebuild the network without one.
    """

    METHOD = "erm"

    def __init__(
        self,
        model_factory: Callable[..., nn.Module] | None = None,
        num_classes: int | None = None,
        groups: Sequence[Group] | Sequence[int] | None = None,
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 1e-3,
        lr_schedule: str = "constant",
        max_epochs: int | None = None,
        model: nn.Module | None = None,
        model_name: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        method: str | None = None,
    ) -> None:
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
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
        # instead of Group objects, the architecture instead of the factory, the method's name.
        self.save_hyperparameters({
            **self.hparams,
            "num_classes": int(getattr(self.model, "num_classes", num_classes)),
            "groups": group_sizes(groups),
            "model_name": name,
            "model_kwargs": kwargs,
            "method": method or self.METHOD,
        })  # fmt: skip
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
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("train/acc", acc, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.SGD(
            self.model.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
        )
        if hp.lr_schedule == "constant":
            return optimizer
        epochs = hp.max_epochs or (self.trainer.max_epochs if self._trainer is not None else None)
        if not epochs or epochs < 1:
            raise ValueError(
                "lr_schedule=cosine needs a number of epochs: set max_epochs (or trainer.max_epochs)"
            )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(epochs))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
