"""saelab: sparse dictionary learning on a frozen language model, Jupyter first.

import saelab as sl
lm = sl.load_model("storyworld")
data = sl.token_dataset("storyworld", lm.tokenizer, n_ctx=128)
run = sl.train(lm, data, sl.TrainConfig(sites=("resid_pre.3",), loss="e2e"), "outputs/x")
sl.evaluate(lm, run.sae, data)
"""

from saelab.cache import ActivationCache, cache_activations, load_cache
from saelab.data import TokenDataset, token_dataset
from saelab.metrics import evaluate
from saelab.models import Site, load_model, model_info, parse_site, valid_sites
from saelab.sae import SAE, SAEConfig, load_sae, save_sae
from saelab.training import Run, TrainConfig, train

__all__ = [
    "SAE",
    "ActivationCache",
    "Run",
    "SAEConfig",
    "Site",
    "TokenDataset",
    "TrainConfig",
    "cache_activations",
    "evaluate",
    "load_cache",
    "load_model",
    "load_sae",
    "model_info",
    "parse_site",
    "save_sae",
    "token_dataset",
    "train",
    "valid_sites",
]
__version__ = "0.1.0"
