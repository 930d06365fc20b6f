"""Class descriptions (CuPL JSON) and templates -> text embeddings, computed once and cached.

The cache key holds every input that changes the embeddings: model name, weights identity and a hash
of all the texts in order. The text tower is used only here; callers drop it afterwards.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fair.descriptions.cupl import Descriptions
from fair.errors import FairError
from fair.io import atomic_torch_save, sha256_json

log = logging.getLogger(__name__)
CACHE_VERSION = 1


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings [N, D], in batches, fp32."""
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[i:i + batch_size]).to(device)
        out.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0)


def overlong(tokenizer, texts: list[str]) -> list[bool]:
    """Which texts the tokenizer cuts to fit the text encoder's context (its `context_length` tokens).

    Asks the tokenizer itself for one token more than the context: a text is cut when that last position
    is not padding, so CLIP's BPE and Hugging Face tokenizers are judged by their own rules.
    """
    ctx = getattr(tokenizer, "context_length", None)
    if not ctx or not texts:
        return [False] * len(texts)
    pad = getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None) or 0
    longer = tokenizer(texts, context_length=ctx + 1)
    return (longer[:, ctx] != pad).tolist()


def warn_overlong(tokenizer, classnames: list[str], per_class: list[list[str]]) -> dict[str, int]:
    """Warn, before encoding cuts them, about sentences longer than the text encoder's context; {class: how many}."""
    cut = overlong(tokenizer, [t for texts in per_class for t in texts])
    counts, i = {}, 0
    for c, texts in zip(classnames, per_class):
        if sum(cut[i:i + len(texts)]):
            counts[c] = sum(cut[i:i + len(texts)])
        i += len(texts)
    if counts:
        shown = ", ".join(f"{c!r} ({n})" for c, n in list(counts.items())[:10]) + \
            (f" and {len(counts) - 10} more classes" if len(counts) > 10 else "")
        log.warning("%d description sentences of %d classes are longer than the text encoder's context (%d tokens) "
                    "and are cut to fit: %s; shorten them to keep their ends", sum(counts.values()), len(counts),
                    tokenizer.context_length, shown)
    return counts


@dataclass
class TextEmbeddings:
    """Everything the heads need from the text tower.

    class_emb:  [C, D]   t_c = normalize(mean_k g(template_k(c)))   (zero-shot head)
    desc_emb:   [C, M, D] t_cj, zero-padded; desc_mask [C, M] marks real descriptions
    A class that fell back to templates uses its template embeddings as its "descriptions".
    """
    class_emb: torch.Tensor
    desc_emb: torch.Tensor
    desc_mask: torch.Tensor


def build_text_embeddings(model, tokenizer, classnames: list[str], templates: list[str],
                          descriptions: Descriptions, weights_id: str, cache_root: str | Path,
                          device: torch.device) -> TextEmbeddings:
    """Compute (or load from the cache) the class-name and description embeddings."""
    if not templates:
        raise FairError("no prompt templates; set data.templates to a list like ['a photo of a {}.']")
    template_texts = [[t.format(c) for t in templates] for c in classnames]
    desc_texts = [d if d else tt for d, tt in zip(descriptions.per_class, template_texts)]
    key = sha256_json({"v": CACHE_VERSION, "weights": weights_id, "templates": template_texts, "desc": desc_texts})
    path = Path(cache_root).expanduser() / "text" / f"{key[:32]}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            log.info("text embeddings from cache %s", path)
            return TextEmbeddings(blob["class_emb"], blob["desc_emb"], blob["desc_mask"])
        except Exception:  # noqa: BLE001 - a broken cache entry is recomputed, never fatal
            log.warning("text cache entry %s is unreadable; recomputing", path)
    warn_overlong(tokenizer, classnames, desc_texts)
    flat = [t for tt in template_texts for t in tt] + [t for dd in desc_texts for t in dd]
    log.info("encoding %d texts (%d classes)", len(flat), len(classnames))
    emb = encode_texts(model, tokenizer, flat, device)
    n_t = len(templates)
    C = len(classnames)
    class_emb = F.normalize(emb[: C * n_t].view(C, n_t, -1).mean(1), dim=-1)
    M = max(len(d) for d in desc_texts)
    desc_emb = torch.zeros(C, M, emb.shape[1])
    desc_mask = torch.zeros(C, M, dtype=torch.bool)
    i = C * n_t
    for c, dd in enumerate(desc_texts):
        desc_emb[c, : len(dd)] = emb[i: i + len(dd)]
        desc_mask[c, : len(dd)] = True
        i += len(dd)
    te = TextEmbeddings(class_emb, desc_emb, desc_mask)
    atomic_torch_save({"class_emb": class_emb, "desc_emb": desc_emb, "desc_mask": desc_mask}, path)
    return te
