"""The embedded world: storyworld's corpus, its word lists and its base model.

- `corpus`: the seeded story generator with 40 per-token ground-truth labels;
- `words`: the vocabulary the generator draws from;
- `basemodel`: training and evaluation of the small GPT-2 shipped in `model/`.

The core library (`saelab.core`) never imports this package, except where the source names
"storyworld" are resolved (`core.models.load_model`, `core.data.token_dataset`); see
ARCHITECTURE.md.
"""

from pathlib import Path

MODEL_DIR = Path(__file__).parent / "model"  # the shipped base model, Hugging Face format
