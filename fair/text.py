"""Class descriptions (CuPL JSON) and templates -> text embeddings, computed once and cached.

The cache key holds every input that changes the embeddings: model name, weights identity and a hash
of all the texts in order. The text tower is used only here; callers drop it afterwards.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fair.errors import FairError
from fair.io import atomic_torch_save, sha256_bytes, sha256_json

log = logging.getLogger(__name__)
CACHE_VERSION = 1


@dataclass
class Descriptions:
    """Per-class description sentences, in class order, and what fell back to templates."""
    per_class: list[list[str]]
    sha256: str | None
    fallback_classes: list[str] = field(default_factory=list)


def load_descriptions(path: str | Path | None, classnames: list[str], fallback: bool) -> Descriptions:
    """Read a CuPL JSON `{class: [sentences]}` for `classnames`.

    A class with no sentences is an error naming it, unless `fallback` — then its list is empty (the
    anchors use its templates) and it is recorded in `fallback_classes`. With no file at all and
    `fallback`, every class falls back.
    """
    if path is None:
        if not fallback:
            raise FairError("no descriptions file for this dataset; pass data.descriptions=PATH (CuPL JSON) "
                            "or set data.description_fallback=true to use templates only")
        return Descriptions([[] for _ in classnames], None, list(classnames))
    p = Path(path).expanduser()
    if not p.is_file():
        raise FairError(f"descriptions file {str(p)!r} not found; fix data.descriptions")
    raw = p.read_bytes()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FairError(f"descriptions file {str(p)!r} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}); "
                        f"it must be a CuPL object {{\"class\": [\"sentence\", ...]}}") from None
    if not isinstance(data, dict) or not data:
        raise FairError(f"descriptions file {str(p)!r} is empty or not an object; it must map each class "
                        f"name to a list of sentences (CuPL format)")
    # Class names are matched exactly first, then case/underscore-insensitively (CuPL files vary).
    norm = {_norm(k): v for k, v in data.items()}
    per_class, missing = [], []
    for c in classnames:
        sents = data.get(c, norm.get(_norm(c)))
        if isinstance(sents, str):
            sents = [sents]
        if not isinstance(sents, list) or not all(isinstance(s, str) for s in sents):
            if sents is not None:
                raise FairError(f"descriptions for class {c!r} in {str(p)!r} must be a list of strings")
            sents = []
        sents = [s.strip() for s in sents if s.strip()]
        if not sents:
            missing.append(c)
        per_class.append(sents)
    if missing and not fallback:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FairError(f"classes without descriptions in {str(p)!r}: {shown}; add them or set "
                        f"data.description_fallback=true")
    if missing:
        log.warning("%d classes have no description and fall back to templates: %s", len(missing), missing[:5])
    return Descriptions(per_class, sha256_bytes(raw), missing)


def _norm(name: str) -> str:
    return name.lower().replace("_", " ").strip()


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings [N, D], in batches, fp32."""
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[i:i + batch_size]).to(device)
        out.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0)


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
