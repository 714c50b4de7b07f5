"""saelab: sparse dictionary learning on a frozen language model, Jupyter first.

import saelab as sl
lm = sl.load_model("storyworld")
data = sl.token_dataset("storyworld", lm.tokenizer, n_ctx=128)
sae = sl.SAEConfig.create(architecture="topk", k=16)
cfg = sl.TrainConfig(sites=("resid_pre.3",), sae=sae, loss="e2e")
run = sl.train(lm, data, cfg, "outputs/x")
sl.evaluate(lm, run.sae, data)

Three layers (ARCHITECTURE.md): `saelab.core` (model access, data, SAE architectures,
objectives, training, metrics, caches, data-parallel training), `saelab.studies` (features,
browser, geometry, steering, ground truth, plots) and `saelab.storyworld` (the embedded corpus
and model); `saelab.runs` executes the notebooks with papermill. The names below are the API.
"""

from saelab.core.cache import ActivationCache, cache_activations, load_cache
from saelab.core.config import TrainConfig
from saelab.core.convergence import loss_plateau
from saelab.core.data import TokenDataset, token_dataset
from saelab.core.hub import push_to_hub
from saelab.core.metrics import (
    evaluate,
    evaluate_many,
    held_out_tokens,
    selected_latents,
    selection_overlap,
)
from saelab.core.models import Site, load_model, model_info, parse_site, valid_sites
from saelab.core.objectives import OBJECTIVES, Objective, objective
from saelab.core.sae import SAE, SAEConfig, architecture, architectures, load_sae, save_sae
from saelab.core.saelens import export_saelens, to_saebench
from saelab.core.schedule import Finetune
from saelab.core.sparsify_io import export_sparsify
from saelab.core.training import Run, train, train_many

__all__ = [
    "OBJECTIVES",
    "SAE",
    "ActivationCache",
    "Finetune",
    "Objective",
    "Run",
    "SAEConfig",
    "Site",
    "TokenDataset",
    "TrainConfig",
    "architecture",
    "architectures",
    "cache_activations",
    "evaluate",
    "evaluate_many",
    "export_saelens",
    "export_sparsify",
    "held_out_tokens",
    "load_cache",
    "load_model",
    "load_sae",
    "loss_plateau",
    "model_info",
    "objective",
    "parse_site",
    "push_to_hub",
    "save_sae",
    "selected_latents",
    "selection_overlap",
    "to_saebench",
    "token_dataset",
    "train",
    "train_many",
    "valid_sites",
]
__version__ = "0.1.0"
