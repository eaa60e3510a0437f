"""Group-robustness methods (SPEC §6): ERM (ERM_easy / ERM_all by sampling), JTT and DFR.

Each method is a LightningModule that logs the SPEC §8 group metrics for val and test; the
JTT and DFR helpers (error set, upsampling, embeddings and their cache, last-layer fits) are
plain functions the training app composes.
"""

from hsi.methods.dfr import (
    DFRModule,
    EmbeddingCache,
    balanced_subset,
    embedding_loader,
    extract_embeddings,
    fit_dfr_official,
    fit_dfr_paper,
    official_splits,
    predict_linear,
)
from hsi.methods.erm import ERMModule, GroupEvalModule, evaluating, split_batch
from hsi.methods.jtt import (
    JTTModule,
    compute_error_set,
    error_set_report,
    upsample_indices,
    upsample_repeats,
    upsampled_dataset,
    write_error_set,
)

__all__ = [
    "DFRModule",
    "ERMModule",
    "EmbeddingCache",
    "GroupEvalModule",
    "JTTModule",
    "balanced_subset",
    "compute_error_set",
    "embedding_loader",
    "error_set_report",
    "evaluating",
    "extract_embeddings",
    "fit_dfr_official",
    "fit_dfr_paper",
    "official_splits",
    "predict_linear",
    "split_batch",
    "upsample_indices",
    "upsample_repeats",
    "upsampled_dataset",
    "write_error_set",
]
