"""Class descriptions for a dataset: import a CuPL file, generate one with an LLM, lint one.

A descriptions file is CuPL JSON `{class name: [sentence, ...]}` keyed by the catalog's class names. It
goes to `<dataset folder>/descriptions.json` by default, where `fair.data.prepare_data` finds it when
`data.descriptions` is unset; a sidecar `descriptions.meta.json` says where it came from (source or
model, questions, date) and holds its sha256, the same hash a run records as `descriptions_sha256`.

One module per job: `cupl` (the file format, parsed once for every reader, and its sidecar),
`classnames` (a dataset's class names and how a run matches keys to them), `importer` (`import`:
re-keying a CuPL file), `prompts` and `llm` and `generate` (`generate`: the questions, an
OpenAI-compatible chat client, the cached loop over classes), `lint` (`show`), `urls`.
The names below are what `fair descriptions` (fair/commands.py) uses.
"""
from fair.descriptions.classnames import dataset_classnames, default_descriptions_path, match_classes, read_classnames
from fair.descriptions.cupl import CuplFile, parse_cupl, read_descriptions_file, sidecar_path, write_descriptions
from fair.descriptions.generate import cache_path_for, generate_descriptions
from fair.descriptions.importer import MatchReport, format_report, import_descriptions, rekey
from fair.descriptions.lint import format_lint, lint_descriptions
from fair.descriptions.llm import DEFAULT_BASE_URL, ChatClient, GenerateSettings, check_endpoint
from fair.descriptions.prompts import QUESTIONS, parse_sentences, questions_for

__all__ = ["CuplFile", "parse_cupl", "read_descriptions_file", "sidecar_path", "write_descriptions",
           "dataset_classnames", "default_descriptions_path", "match_classes", "read_classnames",
           "cache_path_for", "generate_descriptions", "MatchReport", "format_report", "import_descriptions",
           "rekey", "format_lint", "lint_descriptions", "DEFAULT_BASE_URL", "ChatClient", "GenerateSettings",
           "check_endpoint", "QUESTIONS", "parse_sentences", "questions_for"]
