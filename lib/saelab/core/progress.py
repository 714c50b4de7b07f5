"""Progress bars that papermill runs can silence from the environment."""

import os

from tqdm.auto import tqdm


def progress_bar(enabled: bool = True, **kwargs) -> tqdm:
    """A `tqdm.auto` bar (`kwargs` as tqdm's: total, initial, desc, unit...), hidden when not
    `enabled` or when `TQDM_DISABLE` is set. `saelab.runs` sets it for the kernels it starts, so
    no widget bar is saved frozen at 0% in an executed notebook; the check is ours because
    `tqdm.notebook` replaces a missing `disable` with False before tqdm reads the environment."""
    hidden = not enabled or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    return tqdm(disable=hidden, **kwargs)
