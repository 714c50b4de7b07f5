"""SAE architectures, one file each; importing a module registers it (`saelab.core.sae`).

ARCHITECTURE.md §3 has the math of each; adding one is a new file with a config subclass and an
`SAE` subclass decorated with `@register` (with its SAELens mapping), one import line below,
and one test file (§7).
"""

# ruff: noqa: F401, I001  (imported to register, in this order: sl.architectures() lists it)
from saelab.core.architectures import relu
from saelab.core.architectures import topk
from saelab.core.architectures import gtopk
from saelab.core.architectures import batchtopk
from saelab.core.architectures import jumprelu
from saelab.core.architectures import matryoshka
from saelab.core.architectures import transcoder
