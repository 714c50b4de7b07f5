"""Publishing SAEs on the Hugging Face Hub, and loading them back (`push_to_hub`, `hf://`).

A pushed repository is laid out as SAELens lays out its own (`upload_saes_to_huggingface`): one
folder per SAE, named by its site, holding the SAELens export (`cfg.json`,
`sae_weights.safetensors`; `saelab.core.saelens.export_saelens`), so
`sae_lens.SAE.from_pretrained("org/repo", "resid_pre.3")` loads it, and `sl.load_sae(
"hf://org/repo/resid_pre.3")` too. A model card (`README.md`) says what each SAE is: model,
site, architecture, objective, training tokens, the run's final metrics, and how to load it.

Everything goes up in one commit (`HfApi.upload_folder`), so a repository never shows half a
push. SAELens' own uploader makes one commit per SAE plus one for its README and needs sae_lens
installed; the layout is what saelab takes from it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from saelab.core.sae import SAE, load_sae
from saelab.core.saelens import export_saelens

HF_PREFIX = "hf://"
# the final metrics a card shows, in this order, where the run has them
CARD_METRICS = ("ce_increase", "kl", "l0", "explained_var", "mse", "alive", "dead_frac",
                "ce_loss_score", "l2_ratio")  # fmt: skip
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def push_to_hub(sae_or_run, repo_id: str, path_in_repo: str | None = None,
                revision: str | None = None, private: bool | None = None,
                token: str | None = None, commit_message: str | None = None,
                allow_gtopk: bool = False, folder: str | os.PathLike | None = None):  # fmt: skip
    """Upload `sae_or_run` to the Hub repository `repo_id` (created if missing) in one commit.

    `sae_or_run`: an `SAE`, a `Run` (each of its sites' SAEs), or the path of a saelab SAE folder
    or run folder (`out_dir`, whose `metrics.jsonl` gives the card its final metrics). Each SAE
    goes to `<path_in_repo>/<site>/` as a SAELens export; `README.md` at the top is the model
    card. `folder`: where to lay the repository out (kept: inspect what went up); default a
    temporary folder. Returns `huggingface_hub`'s `CommitInfo`.
    """
    from huggingface_hub import HfApi

    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise ValueError(f"repo_id={repo_id!r} is not a Hub repository id; give 'org/name' "
                         "(letters, digits, '-', '_', '.')")  # fmt: skip
    saes, metrics = _collect(sae_or_run)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(folder) if folder is not None else Path(tmp) / "repo"
        lay_out(saes, metrics, root, repo_id, path_in_repo, allow_gtopk)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision not in (None, "main"):  # a branch must exist before a commit to it
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        message = commit_message or f"saelab: SAEs at {', '.join(saes)}"
        return api.upload_folder(repo_id=repo_id, folder_path=root, revision=revision,
                                 repo_type="model", commit_message=message)  # fmt: skip


def lay_out(saes: dict[str, SAE], metrics: dict[str, dict], root: Path, repo_id: str,
            path_in_repo: str | None = None, allow_gtopk: bool = False) -> Path:  # fmt: skip
    """Write the repository `push_to_hub` uploads into the new or empty folder `root`:
    `<path_in_repo>/<site>/` SAELens exports and the model card `README.md`."""
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; lay a repository out in a new folder")
    prefix = Path(path_in_repo.strip("/")) if path_in_repo else Path()
    if ".." in prefix.parts:
        raise ValueError(f"path_in_repo={path_in_repo!r} leaves the repository")
    for site, sae in saes.items():
        export_saelens(sae, root / prefix / site, allow_gtopk=allow_gtopk)
    (root / "README.md").write_text(model_card(saes, metrics, repo_id, prefix.as_posix()))
    return root


def _collect(sae_or_run) -> tuple[dict[str, SAE], dict[str, dict]]:
    """({site: SAE}, {site: final eval record}) of an SAE, a Run, or a saelab folder."""
    if isinstance(sae_or_run, SAE):
        return {sae_or_run.cfg.site or "sae": sae_or_run}, {}
    if hasattr(sae_or_run, "saes"):  # a Run
        final = _final_eval(sae_or_run.log)
        return dict(sae_or_run.saes), {s: final for s in sae_or_run.saes}
    path = Path(sae_or_run)
    if (path / "saes").is_dir():  # a run folder
        saes = {p.name: load_sae(p) for p in sorted((path / "saes").iterdir()) if p.is_dir()}
        log = path / "metrics.jsonl"
        recs = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        final = _final_eval(recs)
        return saes, {s: final for s in saes}
    if path.is_dir():
        sae = load_sae(path)
        return {sae.cfg.site or path.name: sae}, {}
    raise FileNotFoundError(f"{path} is neither a saelab SAE folder nor a run folder "
                            "(with saes/); give an SAE, a Run or one of those folders")  # fmt: skip


def _final_eval(log: list[dict]) -> dict:
    evals = [r for r in log if r.get("kind") == "eval"]
    return evals[-1] if evals else {}


def model_card(saes: dict[str, SAE], metrics: dict[str, dict], repo_id: str,
               prefix: str = "") -> str:  # fmt: skip
    """The repository's README.md: Hub metadata, then one section per SAE."""
    first = next(iter(saes.values()))
    model = first.cfg.model_name or "unknown"
    tags = ["saelab", "saelens", "sparse-autoencoder", "interpretability"]
    lines = ["---", "library_name: saelens", "tags:", *[f"- {t}" for t in tags]]
    if "/" in model:  # a Hub model: the card links to it
        lines.append(f"base_model: {model}")
    lines += ["---", "", f"# Sparse autoencoders on {model}", "",
              "Trained with saelab; stored as SAELens exports, one folder per SAE.",
              ""]  # fmt: skip
    for site, sae in saes.items():
        sae_id = f"{prefix}/{site}" if prefix and prefix != "." else site
        lines += _sae_section(sae, site, sae_id, metrics.get(site, {}), repo_id, len(saes))
    return "\n".join(lines) + "\n"


def _sae_section(sae: SAE, site: str, sae_id: str, final: dict, repo_id: str,
                 n_saes: int = 1) -> list[str]:  # fmt: skip
    cfg, extra = sae.cfg, getattr(sae, "extra", None) or {}
    train = extra.get("train_config") or {}
    loss = train.get("loss") or {}
    loss = {"name": loss} if isinstance(loss, str) else loss  # configs before the nested form
    objective = loss.get("name", "unknown")
    coeffs = ", ".join(f"{k} {v}" for k, v in loss.items() if k != "name")
    ft = train.get("finetune")
    if ft:  # the last part of the run trained with another objective (`TrainConfig.finetune`)
        objective += (
            f", then {ft['loss']['name']} over the last {ft['fraction']:.0%} of the "
            f"steps" + (" (KL balanced to the MSE)" if ft.get("balance") else "")
        )
    rows = [("model", cfg.model_name or "unknown"), ("site", f"`{site}` (hook `{cfg.hook_name}`)"),
            ("architecture", cfg.architecture + (f", k {cfg.k}" if getattr(cfg, "k", None)
                                                 else "")),
            ("objective", objective + (f" ({coeffs})" if coeffs else "")),
            *([("sparsity coefficient", f"{cfg.sparsity:g}")]
              if getattr(cfg, "sparsity", None) is not None else []),
            ("d_in x d_sae", f"{cfg.d_in} x {cfg.d_sae}"),
            ("training tokens", f"{train['n_tokens']:,}" if "n_tokens" in train else "unknown"),
            ("data", (extra.get("data") or {}).get("source", "unknown"))]  # fmt: skip
    if final:
        # a multi-site run records each SAE's own metrics as "<site>/<key>"; the CE metrics
        # without a site are of every SAE of the run spliced in together
        own = {k: final[f"{site}/{k}"] for k in CARD_METRICS if f"{site}/{k}" in final}
        joint = {k: final[k] for k in CARD_METRICS if k in final and k not in own}
        if own:
            joint = {f"{k} (all {n_saes} SAEs spliced)": v for k, v in joint.items()}
        shown = [f"{k} {v:.4g}" for k, v in (own | joint).items()
                 if isinstance(v, int | float)]  # fmt: skip
        n = final.get("n_tokens")
        rows.append(("final metrics" + (f" ({n:,} held-out tokens)" if n else ""),
                     ", ".join(shown)))  # fmt: skip
    else:
        rows.append(("final metrics", "not given (pushed without its run)"))
    out = [f"## `{sae_id}`", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    out += ["```python", "from sae_lens import SAE",
            f'sae = SAE.from_pretrained("{repo_id}", "{sae_id}")', "",
            "import saelab as sl", f'sae = sl.load_sae("{HF_PREFIX}{repo_id}/{sae_id}")',
            "```", ""]  # fmt: skip
    return out


def parse_hf(uri: str) -> tuple[str, str | None, str]:
    """`hf://org/repo[@revision]/path/in/repo` -> (repo_id, revision or None, path)."""
    rest = uri[len(HF_PREFIX) :]
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"{uri!r} is not an hf:// SAE address; give hf://org/repo/<the SAE's "
                         "folder>, e.g. hf://org/repo/resid_pre.3")  # fmt: skip
    name, _, revision = parts[1].partition("@")
    return f"{parts[0]}/{name}", revision or None, "/".join(parts[2:])


def download(uri: str) -> Path:
    """The local folder of the SAE at `hf://org/repo[@rev]/path`: the Hub client's snapshot of
    that folder (its cache, `HF_HUB_CACHE`; offline with `HF_HUB_OFFLINE=1`)."""
    from huggingface_hub import snapshot_download

    repo_id, revision, path = parse_hf(uri)
    root = snapshot_download(repo_id, revision=revision, allow_patterns=[f"{path}/*"])
    folder = Path(root) / path
    if not folder.is_dir():
        raise FileNotFoundError(f"{uri}: the repository {repo_id} has no folder {path!r}")
    return folder
