"""What `fair descriptions generate` asks per class (CuPL-style questions) and how an answer is read."""
from __future__ import annotations

import json
import re


# CuPL-style questions per catalog dataset. `{a}` is the class name with its article ("an abyssinian"),
# `{c}` the bare name. After CuPL (Pratt et al., ICCV 2023): the ImageNet list is the one of its
# generate_image_prompts.py, the others follow the per-dataset lists of its appendix; resisc45 and
# fashion_mnist have no CuPL list and use ours, modelled on the EuroSAT and generic ones.
GENERIC_QUESTIONS = [
    "Describe what {a} looks like",
    "How can you identify {a}?",
    "What does {a} look like?",
    "Describe an image from the internet of {a}",
    "A caption of an image of {a}:",
]
_BIRD_QUESTIONS = [
    "Describe what {a}, a species of bird, looks like",
    "What does {a} look like",
    "Visually describe {a}, a type of bird",
    "A caption of an image of {a}, a type of bird",
    "Describe the appearance of {a}",
    "What are the prominent features to identify {a} bird",
]
_FASHION_QUESTIONS = [
    "Describe what {a}, a type of clothing, looks like",
    "What does {a} look like in a small grayscale photo?",
    "How can you identify {a} in a photo?",
]
QUESTIONS: dict[str, list[str]] = {
    "imagenet": GENERIC_QUESTIONS,
    "imagefolder": GENERIC_QUESTIONS,
    "caltech101": ["Describe what {a} looks like", "What does {a} look like", "Describe a photo of {a}"],
    "dtd": ["What does {a} material look like?", "What does {a} surface look like?",
            "What does {a} texture look like?", "What does {a} object look like?",
            "What does {a} thing look like?", "What does {a} pattern look like?"],
    "eurosat": ["Describe an aerial satellite view of {a}", "How does a satellite photo of {a} look like",
                "Visually describe a centered satellite view of {a}"],
    "flowers102": ["What does {a} flower look like", "Describe the appearance of {a}",
                   "A caption of an image of {a}", "Visually describe {a}, a type of flower"],
    "food101": ["Describe what {a} looks like", "Visually describe {a}",
                "How can you tell that the food in this photo is {a}?"],
    "oxford_pets": ["Describe what {a} pet looks like", "Visually describe {a}, a type of pet"],
    "stanford_cars": ["How can you identify {a}", "Description of {a}, a type of car",
                      "A caption of a photo of {a}:", "What are the primary characteristics of {a}?",
                      "Description of the exterior of {a}",
                      "What are the identifying characteristics of {a}, a type of car?",
                      "Describe an image from the internet of {a}", "What does {a} look like?",
                      "Describe what {a}, a type of car, looks like"],
    "sun397": ["Describe what {a} looks like", "How can you identify {a}?", "Describe a photo of {a}"],
    "ucf101": ["What does a person doing {c} look like", "Describe the process of {c}", "How does a person {c}"],
    "fgvc_aircraft": ["Describe {a} aircraft", "Describe the {c} aircraft"],
    "cub200": _BIRD_QUESTIONS,
    "birdsnap": _BIRD_QUESTIONS,
    "resisc45": ["Describe a satellite photo of {a}", "Describe an aerial photo of {a}",
                 "How can you identify {a} in a satellite image?", "Visually describe {a} as seen from above"],
    "fashion_mnist": _FASHION_QUESTIONS,
    "fashion_mnist_shifted": _FASHION_QUESTIONS,
}
SYSTEM_PROMPT = ("You write short visual descriptions of categories for an image classifier. Answer with "
                 "one or two short, factual sentences about what it looks like, as a JSON list of strings, "
                 "and nothing else.")


def with_article(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def questions_for(dataset: str) -> list[str]:
    """The CuPL-style question templates for a catalog dataset (the generic list for others)."""
    return list(QUESTIONS.get(dataset, GENERIC_QUESTIONS))


def ask(question: str, classname: str) -> str:
    """A question template filled in for one class."""
    return question.format(a=with_article(classname), c=classname)


_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|\(\d+\))\s+")


def _clean_sentence(s: str) -> str:
    s = " ".join(_BULLET.sub("", s).split()).strip().strip('"').strip()
    return s if not s or s[-1] in ".!?" else s + "."


def parse_sentences(text: str | None) -> list[str]:
    """An answer as sentences: a JSON list of strings, or one sentence a line. ValueError if it is neither.

    A JSON object with one list of strings (`{"sentences": [...]}`) counts as that list; Markdown code
    fences, bullets and numbering are stripped; a preamble line ending in ':' is dropped. Text that starts
    like JSON but does not parse (e.g. cut off by max_tokens), or has no words at all, is not an answer.
    """
    t = (text or "").strip()
    fence = re.match(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", t, re.DOTALL)
    if fence:
        t = fence[1].strip()
    if t[:1] in "[{" and t:
        try:
            data = json.loads(t)
        except json.JSONDecodeError:
            raise ValueError("starts like JSON but is not valid JSON (cut off?)") from None
        if isinstance(data, dict) and len(data) == 1:
            data = next(iter(data.values()))
        if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
            raise ValueError("JSON that is not a list of strings")
        sents = [_clean_sentence(s) for s in data]
    else:
        lines = [ln for ln in t.splitlines() if ln.strip() and not ln.strip().endswith(":")]
        sents = [_clean_sentence(ln) for ln in lines]
    sents = [s for s in sents if re.search(r"[A-Za-z]{2,}", s)]
    if not sents:
        raise ValueError("no sentences in the answer")
    return sents
