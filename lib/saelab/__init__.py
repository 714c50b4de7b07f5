"""saelab: sparse dictionary learning on a frozen language model, Jupyter first.

import saelab as sl
lm = sl.load_model("storyworld")
data = sl.token_dataset("storyworld", lm.tokenizer, n_ctx=128)
"""

from saelab.data import TokenDataset, token_dataset
from saelab.models import Site, load_model, model_info, parse_site, valid_sites

__all__ = [
    "Site",
    "TokenDataset",
    "load_model",
    "model_info",
    "parse_site",
    "token_dataset",
    "valid_sites",
]
__version__ = "0.1.0"
