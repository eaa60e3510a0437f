"""Group-robustness methods of paper 000, §5.2–5.3: ERM (ERM_easy / ERM_all by sampling), JTT and DFR.

Each method is a :class:`~hsi.methods.base.Method` chosen by ``method._target_`` that runs its
algorithm on a training job, with a LightningModule that logs the group metrics of
:mod:`hsi.metrics` for val and test (:class:`~hsi.methods.base.GroupEvalModule`).
"""

from hsi.methods.base import GroupEvalModule, Method, evaluating, split_batch
from hsi.methods.dfr import (
    DFR,
    DFRModule,
    HeadTask,
    OfficialRecipe,
    PaperRecipe,
    balanced_subset,
    fit_dfr_official,
    fit_dfr_paper,
    official_splits,
    predict_linear,
)
from hsi.methods.erm import ERM, ERMModule, Pretrained
from hsi.methods.jtt import (
    JTT,
    JTTModule,
    compute_error_set,
    error_set_report,
    upsample_repeats,
    write_error_set,
)

__all__ = [
    "DFR",
    "DFRModule",
    "ERM",
    "ERMModule",
    "GroupEvalModule",
    "JTT",
    "JTTModule",
    "Method",
    "HeadTask",
    "OfficialRecipe",
    "PaperRecipe",
    "Pretrained",
    "balanced_subset",
    "compute_error_set",
    "error_set_report",
    "evaluating",
    "fit_dfr_official",
    "fit_dfr_paper",
    "official_splits",
    "predict_linear",
    "split_batch",
    "upsample_repeats",
    "write_error_set",
]
