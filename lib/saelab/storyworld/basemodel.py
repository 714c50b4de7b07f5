"""The storyworld base model: BPE tokenizer, a small GPT-2, its training loop and its report card.

Notebook 00 calls these in order: `train_tokenizer` -> `make_model` -> `train_lm` ->
`evaluate_lm` -> `save_assets`. Everything is plain `transformers` + torch: the base model is the
frozen object that the SAEs later study, so it is built exactly like a hub model would be.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from saelab.core.training import lr_at
from saelab.storyworld import MODEL_DIR as ASSETS
from saelab.storyworld import corpus as sw

QUOTE = '"'
# Subject pronouns whose gender the model must get right: (female, male) token texts.
PRONOUN_PAIRS = ((" she", " he"), (" She", " He"))


def train_tokenizer(texts: list[str], vocab_size: int = 2048):
    """Byte-level BPE over `texts`; quote marks are tokens of their own (` "` opens, `"` closes)."""

    tok = Tokenizer(models.BPE())
    # Isolating quotes first means `."` never merges, so closing a quote is a decision the
    # model makes at its own position (measured by quote_close_acc).
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(' ?"'), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[sw.EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=sw.EOS,
        eos_token=sw.EOS,
        unk_token=sw.EOS,
        pad_token=sw.EOS,
        model_max_length=10**6,
    )


def make_model(tokenizer, n_layer=6, d_model=64, n_head=4, d_mlp=256, n_ctx=128, seed=0):
    """A fresh GPT-2 (`transformers.GPT2LMHeadModel`) sized for storyworld, tied embeddings."""

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_ctx,
        n_embd=d_model,
        n_layer=n_layer,
        n_head=n_head,
        n_inner=d_mlp,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(cfg)


@dataclass
class LMTrainConfig:
    lr: float = 3e-3
    batch_size: int = 64
    warmup: int = 100  # steps
    weight_decay: float = 0.1
    min_lr_frac: float = 0.1
    eval_every: int = 200
    seed: int = 0


@torch.no_grad()
def lm_ce(model, tokens: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats/token) of `model` over `tokens [n, n_ctx]`."""
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(tokens), batch_size):
        b = tokens[i : i + batch_size]
        logits = model(b).logits[:, :-1]
        tot += F.cross_entropy(logits.flatten(0, 1), b[:, 1:].flatten(), reduction="sum").item()
        n += b[:, 1:].numel()
    return tot / n


def train_lm(model, train, val, n_steps: int, cfg: LMTrainConfig | None = None):
    """Train `model` for `n_steps` on `train` (TokenDataset); returns a list of log dicts."""
    cfg = cfg or LMTrainConfig()
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay
    )
    log, step, t0 = [], 0, time.time()
    bar = tqdm(total=n_steps, desc="train")
    epoch = 0
    while step < n_steps:
        for batch in train.batches(cfg.batch_size, shuffle=True, seed=cfg.seed + epoch):
            model.train()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, n_steps, cfg.lr, cfg.warmup, cfg.min_lr_frac)
            loss = model(batch, labels=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step % cfg.eval_every == 0 or step == n_steps:
                rec = dict(step=step, tokens=step * batch.numel(), train_loss=loss.item())
                rec |= dict(val_ce=lm_ce(model, val.tokens), time_s=time.time() - t0)
                log.append(rec)
                bar.write(json.dumps({k: round(v, 4) for k, v in rec.items()}))
            if step >= n_steps:
                break
        epoch += 1
    bar.close()
    model.eval()
    return log


def ngram_baselines(train: torch.Tensor, val: torch.Tensor, vocab: int, alpha: float = 0.1):
    """Unigram and bigram CE (nats/token) fitted on `train`, scored on `val` ([n, n_ctx] ids).

    Add-`alpha` smoothing; targets are scored exactly where the LM is (positions 1..n_ctx-1).
    """
    tr = train.numpy()
    uni = np.bincount(tr.ravel(), minlength=vocab) + alpha
    uni = uni / uni.sum()
    big = np.full((vocab, vocab), alpha)
    np.add.at(big, (tr[:, :-1].ravel(), tr[:, 1:].ravel()), 1)
    big /= big.sum(1, keepdims=True)
    v = val.numpy()
    prev, nxt = v[:, :-1].ravel(), v[:, 1:].ravel()
    return dict(
        unigram_ce=float(-np.log(uni[nxt]).mean()),
        bigram_ce=float(-np.log(big[prev, nxt]).mean()),
    )


def _single_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{text!r} is not a single token ({ids}); retrain the tokenizer")
    return ids[0]


@torch.no_grad()
def story_probes(model, tokenizer, n_stories: int = 500, split: str = "validation") -> dict:
    """Pronoun agreement and quote closing, on whole stories that start at position 0.

    pronoun_agreement: at each position whose next token is he/she/He/She, the fraction where the
    model gives the pronoun of the referent's gender more probability than the other one.
    quote_close_acc: at each position whose next token closes a quote, the fraction where `"` is
    the model's top-1 prediction.
    """
    model.eval()
    n_ctx = model.config.n_positions
    pairs = [(_single_id(tokenizer, f), _single_id(tokenizer, m)) for f, m in PRONOUN_PAIRS]
    quote = _single_id(tokenizer, QUOTE)
    bos = tokenizer.bos_token_id
    agree, n_pron, closed, n_close = 0, 0, 0, 0
    for story in sw.stories(split, n_stories):
        ids = [bos, *tokenizer(story.text, add_special_tokens=False)["input_ids"]][:n_ctx]
        x = torch.tensor([ids])
        logits = model(x).logits[0, :-1]
        tgt = x[0, 1:]
        for f_id, m_id in pairs:
            for pos in torch.nonzero((tgt == f_id) | (tgt == m_id)).flatten().tolist():
                right, wrong = (f_id, m_id) if tgt[pos] == f_id else (m_id, f_id)
                agree += int(logits[pos, right] > logits[pos, wrong])
                n_pron += 1
        pos = torch.nonzero(tgt == quote).flatten()
        closed += int((logits[pos].argmax(-1) == quote).sum())
        n_close += len(pos)
    return dict(
        pronoun_agreement=agree / max(n_pron, 1),
        n_pronoun_positions=n_pron,
        quote_close_acc=closed / max(n_close, 1),
        n_quote_close_positions=n_close,
    )


@torch.no_grad()
def forward_tokens_per_s(model, batch_size: int = 64, n_ctx: int = 128, reps: int = 5) -> float:
    """Forward-pass throughput (tokens/s) on random ids `[batch_size, n_ctx]`, after a warm-up."""
    model.eval()
    x = torch.randint(0, model.config.vocab_size, (batch_size, n_ctx))
    model(x)
    t0 = time.perf_counter()
    for _ in range(reps):
        model(x)
    return reps * x.numel() / (time.perf_counter() - t0)


def save_assets(model, tokenizer, metrics: dict, out: str | Path = ASSETS) -> Path:
    """Write the model in HF format (config.json, model.safetensors, tokenizer) + metrics.json."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # the old assets stay until the new ones are complete
    return out
