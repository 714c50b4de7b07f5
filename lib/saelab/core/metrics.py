"""Evaluation of SAEs spliced into the frozen model, with the definitions of ARCHITECTURE.md §5.

Per site: `l0` (mean nonzero latents per token), `alive` / `dead_frac` (latents that fired at least
once in the alive window: the first `alive_window_tokens` SAE positions of the data, >= 500k where
the data holds them, as e2e_sae's `act_frequency_n_tokens`), `mse`, `explained_var` (1 - SSE /
total sum of squares about the mean activation), `l2_ratio` (mean ||x_hat|| / ||x||). Global,
with every SAE spliced in at once: `ce_clean`, `ce_sae`, `ce_increase`, `kl` (KL(P_clean ||
P_sae) per token), `ce_zero_abl` (sites zeroed) and `ce_loss_score = (ce_zero_abl - ce_sae) /
(ce_zero_abl - ce_clean)`; downstream, for every later layer L: `ds_mse/resid_post.L` and
`ds_ev/resid_post.L` between spliced and clean residuals. With several sites, per-site keys are
prefixed `<site>/`.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict

import torch

from saelab.core.cache import ActivationCache
from saelab.core.models import check_rows_fit, model_info, parse_site
from saelab.core.passes import (
    as_sites,
    batch_positions,
    clean_pass,
    input_sites,
    kl,
    later_sites,
    next_token_ce,
    read_sites,
    sae_positions,
    select,
    special_ids,
    spliced_pass,
)
from saelab.core.progress import Heartbeat
from saelab.core.sae import eval_mode, is_int

# e2e_sae counts a latent alive if it fired once in 500k tokens (`act_frequency_n_tokens` of its
# GPT-2 and TinyStories configs); a few 10k held-out tokens call rare latents dead
ALIVE_TOKENS = 500_000


def held_out_tokens(n_ctx: int, eval_tokens: int, alive_tokens: int | None = ALIVE_TOKENS) -> int:
    """Held-out tokens to load (`token_dataset(..., n_tokens=...)`) for
    `evaluate(n_tokens=eval_tokens, alive_tokens=alive_tokens)` to get its whole alive window:
    each row of `n_ctx` tokens gives `n_ctx - 1` SAE positions (its BOS is left out), and one
    more row covers the rounding. None: the eval tokens alone."""
    if alive_tokens is None:
        return eval_tokens
    return max(eval_tokens, alive_tokens + alive_tokens // (n_ctx - 1) + n_ctx)


def alive_rows(alive_tokens: int | None, per_row: int, n_rows_data: int, n_rows_eval: int) -> int:
    """Rows of the alive window: enough for `alive_tokens` SAE positions (`per_row` a row),
    capped at the `n_rows_data` rows there are (with a warning naming both numbers); None: the
    `n_rows_eval` rows the other metrics use."""
    if alive_tokens is None:
        return n_rows_eval
    if not is_int(alive_tokens) or alive_tokens < 1:
        raise ValueError(f"alive_tokens={alive_tokens!r} must be None or an int >= 1")
    want = math.ceil(alive_tokens / per_row)
    if want > n_rows_data:
        warnings.warn(
            f"alive_tokens={alive_tokens:,} but the data holds only {n_rows_data * per_row:,} "
            f"SAE positions; alive/dead_frac count over those {n_rows_data * per_row:,}",
            stacklevel=3,
        )
        return n_rows_data
    return want


class StreamingEV:
    """Streaming explained variance: accumulates SSE, sum and sum of squares per feature."""

    def __init__(self):
        self.sse = 0.0
        self.n = 0
        self.s1 = None
        self.s2 = 0.0

    def add(self, x_hat: torch.Tensor, x: torch.Tensor) -> None:
        x, x_hat = x.flatten(0, -2).double(), x_hat.flatten(0, -2).double()
        self.sse += float(((x - x_hat) ** 2).sum())
        self.s1 = x.sum(0) if self.s1 is None else self.s1 + x.sum(0)
        self.s2 += float((x**2).sum())
        self.n += x.shape[0]

    def mse(self) -> float:
        return self.sse / (self.n * self.s1.numel())

    def ev(self) -> float:
        total = self.s2 - float((self.s1**2).sum()) / self.n  # sum (x - mean x)^2
        return 1.0 - self.sse / total


class SiteStats:
    """One SAE's metrics at one site, accumulated batch by batch (ARCHITECTURE.md §5): L0, L2
    ratio, MSE and explained variance over the eval positions, and which latents fired over the
    alive window. The model path and the cache path of `evaluate` both report through it."""

    def __init__(self, d_sae: int, device=None):
        self.d_sae = d_sae
        self.ev = StreamingEV()
        self.l0 = self.l2 = 0.0
        self.n = 0
        self.fired = torch.zeros(d_sae, dtype=torch.bool, device=device)

    def add(self, c: torch.Tensor, x_hat: torch.Tensor, x: torch.Tensor, window: int) -> None:
        """One eval batch: latents `c [B, T', d_sae]` (or `[N, d_sae]`) and reconstruction
        `x_hat` of `x` (raw units); its first `window` entries along dim 0 are in the alive
        window (`_leading`)."""
        active = c != 0
        self.ev.add(x_hat, x)
        self.l0 += float(active.sum())
        self.l2 += float((x_hat.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-8)).sum())
        self.n += x[..., 0].numel()
        self.fire(active[: max(0, window)].flatten(0, -2).any(0))

    def fire(self, fired: torch.Tensor) -> None:
        """OR in the latents `[d_sae]` that fired on rows past the eval rows."""
        self.fired |= fired.to(self.fired.device)

    def report(self, prefix: str = "") -> dict:
        alive = int(self.fired.sum())
        return {
            f"{prefix}l0": self.l0 / self.n,
            f"{prefix}alive": alive,
            f"{prefix}dead_frac": 1 - alive / self.d_sae,
            f"{prefix}mse": self.ev.mse(),
            f"{prefix}explained_var": self.ev.ev(),
            f"{prefix}l2_ratio": self.l2 / self.n,
        }


def _leading(keep: torch.Tensor | None, rows: int) -> int:
    """How many entries along dim 0 of `select(t, keep)` belong to `t`'s first `rows` rows:
    `rows` for positions (rows stay rows), the kept count of those rows for a bool mask (its
    `[N, ...]` is row by row)."""
    rows = max(0, rows)
    if keep is not None and keep.dtype == torch.bool:
        return int(keep[:rows].sum())
    return rows


@torch.no_grad()
def _sum_kl(logits_clean, logits_sae) -> float:
    """Summed per-token KL of `[B, T, V]` logits, materialised or streamed (`passes.kl`)."""
    return float(kl(logits_clean, logits_sae)) * math.prod(logits_clean.shape[:-1])


def evaluate(
    lm,
    saes,
    data=None,
    n_tokens: int = 65_536,
    batch_size: int = 32,
    exclude_positions=None,
    alive_tokens: int | None = ALIVE_TOKENS,
    exclude_tokens=None,
) -> dict:
    """Metrics of `saes` ({site: SAE} or one SAE) on the first ~`n_tokens` of `data` (in order).

    `lm` is the frozen model, or an `ActivationCache` (then `data` is None and the rows are the
    cache's): without the model only the per-site SAE metrics exist (l0, alive, dead_frac, mse,
    explained_var, l2_ratio), computed by the same `SiteStats` as with it.

    Uses `data`'s rows in their stored order, so the same data gives the same numbers. SAEs
    are evaluated in eval mode (BatchTopK: its global threshold), then left as they were.
    `exclude_positions` (None: the BOS position when `data` prepends one) are left clean and out
    of the SAE metrics (l0, alive, mse, explained_var, l2_ratio); CE and KL are over every
    position with the SAEs spliced in at the others. `n_tokens` in the report counts the
    positions the SAE metrics saw.

    `alive` / `dead_frac` count the latents that fired at least once over the first
    `alive_tokens` SAE positions of `data` (default 500k, e2e_sae's window), reported as
    `alive_window_tokens`: the eval rows, then further rows through the SAEs only (no logits, no
    CE). Capped at the rows `data` holds, with a warning naming both numbers; `alive_tokens=None`
    counts over the eval rows only (saelab's meaning until 2026-12-01).
    """
    return evaluate_many(lm, [saes], data, n_tokens, batch_size, exclude_positions,
                         alive_tokens, exclude_tokens)[0]  # fmt: skip


def evaluate_many(
    lm,
    sets: list,
    data=None,
    n_tokens: int = 65_536,
    batch_size: int = 32,
    exclude_positions=None,
    alive_tokens: int | None = ALIVE_TOKENS,
    exclude_tokens=None,
) -> list[dict]:
    """`evaluate` of several SAE sets (each {site: SAE} or one SAE, all at the same sites) on the
    same rows: one report per set, each equal to `evaluate(lm, set, ...)` alone
    (tests/test_metrics.py).

    Each batch's clean pass (logits, later residuals, dL/dx where any SAE needs it) and its zero
    ablation run once for all sets; only the spliced pass is per set. Over the alive window's
    rows past the eval rows, single-site sets need no pass of their own at all. A sweep's final
    evaluation (`train_many`) thus costs about one spliced pass per SAE instead of a full
    evaluation each: with 18 g-SAEs, whose alive window needs dL/dx over 500k tokens, that was
    more than the training (LOG.md 2026-12-02, "The g-SAE study with beta up to 1024").
    """
    sets = [as_sites(s) for s in sets]
    if not sets:
        return []
    sites = list(sets[0])
    for other in sets[1:]:
        if sorted(map(str, other)) != sorted(map(str, sites)):
            raise ValueError(
                f"evaluate_many needs SAE sets at the same sites; got {[str(s) for s in sites]} "
                f"and {[str(s) for s in other]} (evaluate each set on its own)"
            )
    cached = isinstance(lm, ActivationCache)
    for saes in sets:
        for s, inp in input_sites(saes).items():  # a transcoder reads another site than it writes
            if inp != s and (cached or inp in saes):
                raise ValueError(f"the SAE at {s} reads {inp}: " + (
                    "an activation cache holds one site; evaluate it on the model" if cached
                    else "another SAE of this set replaces it; evaluate them apart"))  # fmt: skip
    if cached and data is not None:
        raise ValueError("evaluate on an ActivationCache reads the cache's own rows: pass "
                         "data=None (or evaluate the model on `data`)")  # fmt: skip
    if not cached and data is None:
        raise ValueError("evaluate needs `data` (a TokenDataset) to run the model on")
    if not cached:
        check_rows_fit(data.n_ctx, model_info(lm)["n_ctx"])
    data = lm if cached else data
    keep = sae_positions(data, exclude_positions, None if cached else lm.device)
    if exclude_tokens is None:  # the tokenizer's special tokens (or those a cache recorded)
        exclude_tokens = (data.manifest.get("special_ids") or () if cached
                          else special_ids(lm.tokenizer))  # fmt: skip
    special = torch.tensor(list(exclude_tokens), dtype=torch.long) if exclude_tokens else None

    def seen(tokens: torch.Tensor) -> torch.Tensor:
        """The positions the SAEs see of these rows (`passes.batch_positions`)."""
        return batch_positions(tokens, keep, special)

    per_row = len(keep)
    n_rows = max(1, min(len(data), n_tokens // data.n_ctx))
    n_alive = alive_rows(alive_tokens, per_row, len(data), n_rows)
    with eval_mode([sae for saes in sets for sae in saes.values()]):
        if cached:
            reps = [_evaluate_cache(saes, data, n_rows, batch_size, seen, n_alive) for saes in sets]
        else:
            reps = _evaluate(lm, sets, data, n_rows, batch_size, seen, n_alive)
    rows = (data.token_dataset() if cached else data).tokens[:n_alive]
    window = _seen_count(rows, seen)  # the positions the SAEs saw: special tokens left out
    for rep in reps:
        rep["alive_window_tokens"] = window
    return reps


def _seen_count(tokens: torch.Tensor, seen) -> int:
    """How many positions of `tokens [rows, T]` the SAEs see (`seen`: `batch_positions` of a
    batch, with `evaluate`'s positions and special tokens)."""
    keep = seen(tokens)
    if keep is None:
        return tokens.numel()
    return int(keep.sum()) if keep.dtype == torch.bool else len(keep) * tokens.shape[0]


def _fired_after(lm, sets: list[dict], data, start: int, stop: int, batch_size: int, seen,
                 stats: list[dict]) -> None:  # fmt: skip
    """Fire into `stats[j]` the latents of `sets[j]` that fire on rows `[start, stop)`, as the
    eval sees them (several sites: each SAE reads the residual with the earlier SAEs spliced
    in)."""
    sites = list(sets[0])
    needs_grad = any(sae.needs_grad for saes in sets for sae in saes.values())
    beat = Heartbeat("alive window", stop, "rows", data.n_ctx, start)
    for i in range(start, stop, batch_size):
        beat.tick(i)
        tokens = data.tokens[i : min(i + batch_size, stop)].to(lm.device)
        clean = clean_pass(lm, tokens, read_sites(sets), grads=needs_grad)  # stops after them
        keep = seen(tokens)
        for saes, stats_j in zip(sets, stats, strict=True):
            with torch.no_grad():
                if len(sites) == 1:
                    (s,) = sites
                    sae = saes[s]
                    inp = sae.cfg.input_site(s)  # a transcoder reads another site
                    grad = (None if clean.grads is None or not sae.needs_grad
                            else select(clean.grads[inp], keep, sae.dtype))  # fmt: skip
                    outs = {s: sae(select(clean.acts[inp], keep, sae.dtype), grad=grad)}
                else:
                    outs = spliced_pass(lm, tokens, saes, clean, logits=False, keep=keep).outs
            for s in sites:
                stats_j[s].fire(outs[s].stats()[0])


def _evaluate(lm, sets: list[dict], data, n_rows: int, batch_size: int, seen,
              n_alive: int) -> list[dict]:  # fmt: skip
    sites = list(sets[0])
    d_model = model_info(lm)["d_model"]
    for saes in sets:
        for s, sae in saes.items():  # else a bare matmul shape error from inside the trace
            if sae.cfg.d_in != d_model:
                raise ValueError(
                    f"the SAE for {s} has d_in={sae.cfg.d_in}, but {s} of this model has width "
                    f"{d_model}; was it trained on another model ({sae.cfg.model_name!r})?"
                )
    later = later_sites(lm, sites)
    needs_grad = any(sae.needs_grad for saes in sets for sae in saes.values())
    tokens_all = data.tokens[:n_rows]
    tag = (lambda s: "") if len(sites) == 1 else (lambda s: f"{s}/")
    shared = defaultdict(float)  # the clean and zero-ablated CE: the same for every set
    sums = [defaultdict(float) for _ in sets]
    stats = [{s: SiteStats(saes[s].cfg.d_sae, saes[s].device) for s in sites} for saes in sets]
    ds = [{s: StreamingEV() for s in later} for _ in sets]
    beat = Heartbeat(f"evaluate {len(sets)} SAE set(s)", n_rows, "rows", data.n_ctx)
    for i in range(0, n_rows, batch_size):
        beat.tick(i)
        tokens = tokens_all[i : i + batch_size].to(lm.device)  # the CE targets, on the GPU too
        clean = clean_pass(lm, tokens, read_sites(sets), later, logits=True, grads=needs_grad)
        keep = seen(tokens)
        with torch.no_grad():
            zero = spliced_pass(lm, tokens, None, clean, zero_sites=sites, keep=keep)
        shared["ce_clean"] += float(next_token_ce(clean.logits, tokens, "sum"))
        shared["ce_zero_abl"] += float(next_token_ce(zero.logits, tokens, "sum"))
        shared["n_pred"] += tokens[:, 1:].numel()
        for j, saes in enumerate(sets):
            with torch.no_grad():
                sp = spliced_pass(lm, tokens, saes, clean, later, keep=keep)
            sums[j]["ce_sae"] += float(next_token_ce(sp.logits, tokens, "sum"))
            sums[j]["kl"] += _sum_kl(clean.logits[:, :-1], sp.logits[:, :-1])
            for s in sites:
                out, x = sp.outs[s], select(clean.acts[s], keep, saes[s].dtype)
                stats[j][s].add(out.c, out.x_hat, x, window=_leading(keep, n_alive - i))
            for s, a, b in zip(later, sp.later, clean.later, strict=True):
                ds[j][s].add(a, b)
    _fired_after(lm, sets, data, n_rows, n_alive, batch_size, seen, stats)
    reps = []
    for j in range(len(sets)):
        tot = shared | sums[j]
        rep = {k: tot[k] / tot["n_pred"] for k in ("ce_clean", "ce_sae", "ce_zero_abl", "kl")}
        rep["ce_increase"] = rep["ce_sae"] - rep["ce_clean"]
        denom = rep["ce_zero_abl"] - rep["ce_clean"]
        rep["ce_loss_score"] = ((rep["ce_zero_abl"] - rep["ce_sae"]) / denom if denom
                                else float("nan"))  # fmt: skip
        for s in sites:
            rep |= stats[j][s].report(tag(s))
        for s in later:
            rep[f"ds_mse/{s}"] = ds[j][s].mse()
            rep[f"ds_ev/{s}"] = ds[j][s].ev()
        rep["n_tokens"] = stats[j][sites[0]].n  # the SAE positions the metrics saw
        reps.append(rep)
    return reps


@torch.no_grad()
def _evaluate_cache(saes: dict, cache, n_rows: int, batch_size: int, seen, n_alive: int) -> dict:
    """`evaluate` on cached activations `[B, n_ctx, d_in]`: the per-site metrics of one SAE,
    without the model (no CE, KL or downstream)."""
    sites = [str(s) for s in saes]
    if sites != [str(parse_site(cache.site))]:
        raise ValueError(f"the cache holds the site {cache.site}; got SAEs for {sites}")
    (sae,) = saes.values()
    if sae.cfg.d_in != cache.d_in:
        raise ValueError(f"the SAE has d_in={sae.cfg.d_in}, the cached activations {cache.d_in}")
    stats = SiteStats(sae.cfg.d_sae, sae.device)
    tokens = cache.token_dataset().tokens
    end = max(n_rows, n_alive)
    for i in range(0, end, batch_size):
        rows = torch.arange(i, min(i + batch_size, end))
        keep = seen(tokens[rows])
        x = select(cache.rows(rows), keep)
        x = x.to(sae.device, sae.dtype)
        out = sae(x)
        n_ev, n_win = _leading(keep, n_rows - i), _leading(keep, n_alive - i)
        if i < n_rows:  # eval rows (and the alive window's first rows)
            ev = slice(0, n_ev)
            stats.add(out.c[ev], out.x_hat[ev], x[ev], window=n_win)
            if n_alive > n_rows:  # window rows of this batch past the eval rows
                stats.fire((out.c[n_ev:n_win] != 0).flatten(0, -2).any(0))
        else:  # past the eval rows: only the alive window
            stats.fire((out.c[:n_win] != 0).flatten(0, -2).any(0))
    return stats.report() | {"n_tokens": stats.n}


# --- selection overlap (g-SAE study) --------------------------------------------------------------


def _per_token_k(sae, what: str) -> int:
    """`sae.per_token_k` of an SAE that selects k latents per token (topk, gtopk); else a clear
    error."""
    k = sae.per_token_k
    if k is None:
        raise ValueError(
            f"{what} is a {sae.cfg.architecture!r} SAE, which selects no fixed set of k latents "
            "per token; selected_latents and selection_overlap need a per-token TopK selection "
            "(topk, gtopk)"
        )
    return k


@torch.no_grad()
def selected_latents(sae, x: torch.Tensor, grad: torch.Tensor | None = None) -> torch.Tensor:
    """The k latents `sae` selects for each token of `x [..., d_in]`: indices `[N, k]`, N tokens.

    The selection ranks `sae.scores(z, grad)` (gtopk: `s = z + beta z |g_hat D^T|`, `grad [...,
    d_in]` = dL/dx required) or the pre-activations `z = sae.pre_acts(x)` (topk). It is the set of
    the k top-ranked latents, including any whose ReLU value is 0 (`encode`'s nonzeros are a
    subset of it).
    """
    _per_token_k(sae, "the SAE")
    sae.check_grad(x, grad)
    pre = sae.pre_acts(x).reshape(-1, sae.cfg.d_sae)  # [N, d_sae]
    if sae.needs_grad:
        pre = sae.scores(pre, grad.reshape(-1, grad.shape[-1]).to(pre.dtype))
    return pre.topk(sae.cfg.k, dim=-1, sorted=False).indices


@torch.no_grad()
def selection_overlap(sae_a, b, x: torch.Tensor, grad: torch.Tensor | None = None) -> float:
    """Mean over tokens of `|S_a ∩ S_b| / k`, with `S` the set of latents selected per token.

    `sae_a` selects k latents per token (topk or gtopk; `selected_latents`). `b` is either
    - `"topk"`: TopK(z) of `sae_a`'s own pre-activations `z = sae_a.pre_acts(x)`, i.e. what plain
      TopK would select with this SAE's encoder: for a g-SAE, how much the gradient term changed
      the selection (1.0 at beta = 0, up to ties);
    - another SAE with the same `d_sae` and `k`: its own selection, matched by latent index.
      Latent i of one SAE and latent i of another are the same feature only when both started
      from the same init (the same seed and shape) and stayed close; otherwise the number is
      near the chance level `k / d_sae`, whatever the SAEs learned.
    `x [..., d_in]` raw activations at the site; `grad [..., d_in]` dL/dx there, required when
    either selection is gradient-informed. All of `x` is scored in one pass (as one batch: a
    `grad_norm="rms"` g-SAE normalises over it). Returns a float in [0, 1].
    """
    k = _per_token_k(sae_a, "sae_a")
    if isinstance(b, str):
        if b != "topk":
            raise ValueError(f"selection_overlap: b={b!r} is unknown; valid: 'topk' or an SAE")
    else:
        k_b = _per_token_k(b, "b")
        if b.cfg.d_sae != sae_a.cfg.d_sae or k_b != k:
            raise ValueError(
                f"selection_overlap: sae_a has d_sae={sae_a.cfg.d_sae}, k={k} but b has "
                f"d_sae={b.cfg.d_sae}, k={k_b}; overlap by latent index needs both equal"
            )
    if grad is not None and grad.shape != x.shape:
        raise ValueError(f"grad has shape {tuple(grad.shape)}, x has {tuple(x.shape)}")
    if x[..., 0].numel() == 0:
        raise ValueError("selection_overlap: x holds no tokens")
    # one pass over all of x, as the SAE would see it: grad_norm="rms" normalises over the batch
    s_a = selected_latents(sae_a, x, grad)  # [N, k]
    if isinstance(b, str):
        s_b = sae_a.pre_acts(x).reshape(-1, sae_a.cfg.d_sae).topk(k, dim=-1, sorted=False).indices
    else:
        s_b = selected_latents(b, x.to(b.dtype), None if grad is None else grad.to(b.dtype))
    mask = torch.zeros(s_a.shape[0], sae_a.cfg.d_sae, dtype=torch.bool, device=s_a.device)
    mask.scatter_(1, s_a, True)
    shared = mask.gather(1, s_b.to(s_a.device)).sum()  # sum over tokens of |S_a ∩ S_b|
    return float(shared) / (s_a.shape[0] * k)
