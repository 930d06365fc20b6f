"""`fair descriptions`: import/re-key a CuPL file, generate with a fake OpenAI-compatible server, show.

Everything runs on loopback: a small http.server in a thread plays the chat-completions endpoint (and
serves CuPL files for the URL import). Nothing reaches the internet.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from fair.cli import main
from fair.descriptions import QUESTIONS, cache_path_for, parse_sentences, sidecar_path
from fair.io import sha256_bytes

CLASSES = ["red square", "green circle", "blue triangle", "yellow cross"]
ORDER = sorted(CLASSES)  # the reader's class order (sorted folder names)
SECRET = "sk-test-not-a-real-key-1234"


def _folder(root):
    """A tiny imagefolder dataset (<root>/{train,test}/<class>/*.png) without a descriptions file."""
    for part in ("train", "test"):
        for c, name in enumerate(CLASSES):
            d = root / part / name.replace(" ", "_")
            d.mkdir(parents=True)
            Image.fromarray(np.full((8, 8, 3), 40 * c, np.uint8)).save(d / "0.png")
    return root


class FakeLLM:
    """What the fake endpoint does, and what it saw."""

    def __init__(self):
        self.answered = []            # (class, question) of every 200 answer
        self.posts = []               # (time, class, status) of every POST
        self.auth = set()
        self.rate_limit_once = set()  # classes whose first request gets 429 + Retry-After
        self.malformed_once = set()   # classes whose first answer is cut-off JSON
        self.always_bad = set()       # classes that only ever get text that is not sentences
        self.status = None            # e.g. 401 for every request
        self.dead = False             # close connections without answering
        self.files = {}               # GET path -> bytes
        self.lock = threading.Lock()

    def chat(self, body: dict, auth: str | None):
        """(status, headers, payload) for one chat-completions request."""
        question = body["messages"][-1]["content"]
        cls = next(c for c in sorted(CLASSES, key=len, reverse=True) if c in question)
        with self.lock:
            self.auth.add(auth)
            first = not any(c == cls for _, c, _ in self.posts)
            if self.status:
                status = self.status
            elif cls in self.rate_limit_once and first:
                status = 429
            else:
                status = 200
            self.posts.append((time.monotonic(), cls, status))
            if status != 200:
                return status, {"Retry-After": "1"} if status == 429 else {}, {"error": {"message": "no"}}
            k = len(self.answered)
            self.answered.append((cls, question))
        texts = [json.dumps([f"A {cls} seen in answer {k}.{i}, with clear edges."]) for i in range(body["n"])]
        if cls in self.always_bad:
            texts = ["12345"] * body["n"]
        elif cls in self.malformed_once:
            self.malformed_once.discard(cls)
            texts[0] = '["A %s is' % cls
        return 200, {}, {"object": "chat.completion", "model": body["model"],
                         "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                                      "finish_reason": "stop"} for i, t in enumerate(texts)]}


@pytest.fixture
def llm():
    state = FakeLLM()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status, headers, payload):
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            data = state.files.get(self.path)
            self._send(200 if data else 404, {}, data or b"not found")

        def do_POST(self):
            if state.dead:
                self.close_connection = True
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions":
                return self._send(404, {}, {"error": {"message": f"no route {self.path}"}})
            self._send(*state.chat(body, self.headers.get("Authorization")))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def _generate(root, out, url, *extra):
    return main(["descriptions", "generate", "--dataset", "imagefolder", "--root", str(root), "--model", "fake-1",
                 "--base-url", f"{url}/v1", "--n-per-question", "2", "--backoff", "0.01", "--out", str(out),
                 "--quiet", *extra])


def _error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("fair: error:")]
    assert len(err) == 1
    return err[0]


# ------------------------------------------------------------------------------------------ import


def test_import_rekeys_reports_and_becomes_the_default(tmp_path, capsys):
    from fair.config import DataConfig
    from fair.data import prepare_data
    from fair.descriptions.cupl import load_descriptions
    root = _folder(tmp_path / "shapes")
    assert prepare_data(DataConfig(dataset="imagefolder", root=str(root), val_per_class=0)).descriptions_path is None
    src = tmp_path / "descriptors_shapes.json"
    src.write_text(json.dumps({"Red_Square": ["A red square with four equal sides."],
                               "green circle": ["A round green circle on grey."],
                               "blue triangel": ["A blue triangle pointing up."],
                               "purple hexagon": ["A six-sided purple shape."]}))
    assert main(["descriptions", "import", str(src), "--dataset", "imagefolder", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "matched exactly: 1, ignoring case/punctuation: 1, by close match: 1" in out
    assert "'blue triangle' <- 'blue triangel'" in out
    assert "classes with no descriptions (1): 'yellow cross'" in out
    assert "source keys that matched nothing (1): 'purple hexagon'" in out

    written = root / "descriptions.json"
    data = json.loads(written.read_text())
    assert list(data) == ORDER and data["blue triangle"] == ["A blue triangle pointing up."]
    assert data["red square"] == ["A red square with four equal sides."] and data["yellow cross"] == []
    meta = json.loads(sidecar_path(written).read_text())
    assert meta["kind"] == "import" and meta["source"] == str(src.resolve())
    assert meta["source_sha256"] == sha256_bytes(src.read_bytes())
    assert meta["sha256"] == sha256_bytes(written.read_bytes())
    assert meta["matching"]["fuzzy"] == [["blue triangle", "blue triangel", pytest.approx(0.923, abs=0.01)]]

    # a run with data.descriptions unset now uses <base>/descriptions.json, and records its hash
    prepared = prepare_data(DataConfig(dataset="imagefolder", root=str(root), val_per_class=0))
    assert prepared.descriptions_path == written
    desc = load_descriptions(prepared.descriptions_path, prepared.classnames, fallback=True)
    assert desc.sha256 == meta["sha256"] and desc.fallback_classes == ["yellow cross"]

    # the same import again is a no-op; another source does not silently replace the file
    assert main(["descriptions", "import", str(src), "--dataset", "imagefolder", "--root", str(root)]) == 0
    other = tmp_path / "other.json"
    other.write_text(json.dumps({c: [f"Another {c}."] for c in CLASSES}))
    assert main(["descriptions", "import", str(other), "--dataset", "imagefolder", "--root", str(root)]) == 2
    assert "already exists" in _error_line(capsys)
    assert main(["descriptions", "import", str(other), "--dataset", "imagefolder", "--root", str(root),
                 "--force"]) == 0
    assert json.loads(written.read_text())["yellow cross"] == ["Another yellow cross."]


def test_import_from_a_loopback_url_with_a_class_list(llm, tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("# shapes\n" + "\n".join(CLASSES) + "\n")
    llm.files["/cupl/CuPL_prompts_shapes.json"] = json.dumps(
        {"red_square": "A red square.", "GREEN CIRCLE": ["A green circle, round and flat."],
         "blue-triangle": ["A blue triangle."], "yellow  cross!": ["A yellow plus sign."]}).encode()
    out = tmp_path / "d" / "shapes.json"
    url = f"{llm.url}/cupl/CuPL_prompts_shapes.json"
    assert main(["descriptions", "import", url, "--dataset", "imagefolder", "--classes", str(classes),
                 "--out", str(out)]) == 0
    assert "ignoring case/punctuation: 4" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data == {"red square": ["A red square."], "green circle": ["A green circle, round and flat."],
                    "blue triangle": ["A blue triangle."], "yellow cross": ["A yellow plus sign."]}
    assert json.loads(sidecar_path(out).read_text())["source"] == url

    # bad sources: one line each, nothing written
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for src, words in ((f"{llm.url}/cupl/missing.json", "HTTP 404"), (str(bad), "is not valid JSON"),
                       (str(tmp_path / "nope.json"), "cannot read"),
                       (str(classes), "is not valid JSON")):
        assert main(["descriptions", "import", src, "--dataset", "imagefolder", "--classes", str(classes),
                     "--out", str(tmp_path / "x.json")]) == 2
        assert words in _error_line(capsys)
    unrelated = tmp_path / "cars.json"
    unrelated.write_text(json.dumps({"2012 Tesla Model S": ["A sleek sedan."]}))
    assert main(["descriptions", "import", str(unrelated), "--dataset", "imagefolder", "--classes", str(classes),
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "none of the 1 keys" in _error_line(capsys)
    assert not (tmp_path / "x.json").exists()


# ------------------------------------------------------------------------------------------ generate


def test_generate_retries_rate_limits_and_malformed_answers_then_resumes_from_cache(llm, tmp_path, capsys,
                                                                                  monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    root = _folder(tmp_path / "shapes")
    out = tmp_path / "gen" / "descriptions.json"
    llm.rate_limit_once.add("red square")
    llm.malformed_once.add("green circle")
    assert _generate(root, out, llm.url) == 0
    printed = capsys.readouterr()
    q = QUESTIONS["imagefolder"]
    # 4 classes x 5 questions, + the 429 asked again, + the cut-off answer asked again (for 1 sample)
    assert len(llm.posts) == 4 * len(q) + 2 and len(llm.answered) == 4 * len(q) + 1
    t429 = next(t for t, _, s in llm.posts if s == 429)
    assert min(t for t, c, s in llm.posts if t > t429) - t429 >= 0.9  # Retry-After: 1 honoured
    assert llm.auth == {f"Bearer {SECRET}"}
    assert "1 malformed answers asked again, 0 classes failed" in printed.out

    data = json.loads(out.read_text())
    assert list(data) == ORDER and all(len(v) == 2 * len(q) for v in data.values())
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["model"] == "fake-1" and meta["base_url"] == f"{llm.url}/v1" and meta["questions"] == q
    assert meta["n_per_question"] == 2 and meta["temperature"] == 0.99 and meta["date"]
    assert meta["sha256"] == sha256_bytes(out.read_bytes())
    for f in (out, sidecar_path(out), cache_path_for(out)):
        assert SECRET not in f.read_text()
    assert SECRET not in printed.out + printed.err

    # everything is cached: a rerun asks nothing and writes the same file
    n = len(llm.posts)
    assert _generate(root, out, llm.url) == 0
    assert len(llm.posts) == n and json.loads(out.read_text()) == data
    assert "40 answers from the cache" in capsys.readouterr().out


def test_a_class_that_never_gets_sentences_is_reported_and_retried_on_rerun(llm, tmp_path, capsys):
    root = _folder(tmp_path / "shapes")
    out = tmp_path / "descriptions.json"
    llm.always_bad.add("blue triangle")
    assert _generate(root, out, llm.url, "--max-attempts", "2") == 2
    err = _error_line(capsys)
    assert "1 classes got no answer that is a list of sentences after 2 tries: 'blue triangle'" in err
    assert not out.exists()  # an incomplete file is not written ...
    n_q = len(QUESTIONS["imagefolder"])
    assert sum(c == "blue triangle" for _, c, _ in llm.posts) == 2  # first question, asked twice, then given up
    asked_before = list(llm.answered)

    llm.always_bad.clear()  # ... and a rerun asks only what the cache lacks
    assert _generate(root, out, llm.url) == 0
    new = llm.answered[len(asked_before):]
    assert {c for c, _ in new} == {"blue triangle"} and len(new) == n_q
    assert all(len(v) == 2 * n_q for v in json.loads(out.read_text()).values())

    # --allow-partial writes what there is, and the sidecar names the failed class
    llm.always_bad.add("yellow cross")
    out2 = tmp_path / "other" / "descriptions.json"
    assert _generate(root, out2, llm.url, "--max-attempts", "1", "--allow-partial") == 0
    assert json.loads(out2.read_text())["yellow cross"] == []
    assert "yellow cross" in json.loads(sidecar_path(out2).read_text())["failed_classes"]


def test_an_interrupted_generate_resumes_without_asking_again(llm, tmp_path, capsys):
    root = _folder(tmp_path / "shapes")
    out = tmp_path / "descriptions.json"
    n_q = len(QUESTIONS["imagefolder"])
    orig = llm.chat

    def dies_after_seven(body, auth):  # the server goes away after 7 answers
        answer = orig(body, auth)
        llm.dead = len(llm.answered) >= 7
        return answer
    llm.chat = dies_after_seven
    assert _generate(root, out, llm.url) == 2
    err = _error_line(capsys)
    assert "unreachable" in err and "cached" in err and str(cache_path_for(out)) in err
    assert len(llm.answered) == 7 and not out.exists()

    with open(cache_path_for(out), "a") as fh:  # and the run was killed in the middle of a cache line
        fh.write('{"key": "0123')
    llm.chat, llm.dead = orig, False
    assert _generate(root, out, llm.url, "--concurrency", "3") == 0
    assert len(llm.answered) == 4 * n_q and len(set(llm.answered)) == 4 * n_q  # nothing asked twice
    assert list(json.loads(out.read_text())) == ORDER
    lines = cache_path_for(out).read_text().splitlines()
    assert len(lines) == 4 * n_q * 2 + 1 and sum(ln == '{"key": "0123' for ln in lines) == 1


def test_a_refused_key_a_missing_key_and_no_server_are_one_line_errors(llm, tmp_path, capsys, monkeypatch):
    root = _folder(tmp_path / "shapes")
    out = tmp_path / "descriptions.json"
    monkeypatch.setenv("MY_KEY", SECRET)
    llm.status = 401
    assert _generate(root, out, llm.url, "--api-key-env", "MY_KEY") == 2
    cap = capsys.readouterr()
    assert "refused the request (HTTP 401): the API key is wrong" in cap.err and SECRET not in cap.err + cap.out
    assert len(llm.posts) == 1  # a refusal is not retried

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["descriptions", "generate", "--dataset", "imagefolder", "--root", str(root), "--model", "m",
                 "--base-url", "https://api.example.invalid/v1", "--quiet"]) == 2
    assert "no API key: set $OPENAI_API_KEY" in _error_line(capsys)

    llm.status = None
    assert main(["descriptions", "generate", "--dataset", "imagefolder", "--root", str(root), "--model", "m",
                 "--base-url", llm.url, "--out", str(out), "--quiet"]) == 2  # no /v1
    assert "HTTP 404 (does --base-url end in /v1?): no route /chat/completions" in _error_line(capsys)

    from tune.ray_session import free_port
    port = free_port()  # a loopback port with nothing listening
    assert _generate(root, out, f"http://127.0.0.1:{port}", "--backoff", "0.001") == 2
    assert "unreachable" in _error_line(capsys)


def test_parse_sentences():
    assert parse_sentences('["A red square.", "It has four sides"]') == ["A red square.", "It has four sides."]
    assert parse_sentences('```json\n["A red square."]\n```') == ["A red square."]
    assert parse_sentences('{"sentences": ["A red square."]}') == ["A red square."]
    assert parse_sentences("Here are two sentences:\n1. A red square.\n- It is flat\n") == \
        ["A red square.", "It is flat."]
    for bad in ("", "12345", '["A red square is', '{"a": 1, "b": 2}', "[1, 2]", None):
        with pytest.raises(ValueError):
            parse_sentences(bad)


# ------------------------------------------------------------------------------------------ show


def test_show_flags_empty_repeated_shared_and_short(tmp_path, capsys):
    root = _folder(tmp_path / "shapes")
    f = root / "descriptions.json"
    f.write_text(json.dumps({
        "red square": ["A red square with four equal sides.", "a red  square with four equal sides."],
        "green circle": ["A round shape on a plain grey background.", "Green."],
        "blue triangle": ["A round shape on a plain grey background."],
        "yellow cross": [], "purple hexagon": ["A six-sided purple shape."]}))
    assert main(["descriptions", "show", str(f)]) == 0
    out = capsys.readouterr().out
    assert "   0 yellow cross !" in out
    assert "classes with no descriptions (1): 'yellow cross'" in out
    assert "classes with repeated sentences (1): 'red square' x1" in out
    assert "sentences shared by several classes (1)" in out
    assert "very short sentences (< 4 words) (1)" in out and "'Green.'" in out
    assert "keys that match no class" not in out
    # with the dataset: its default file, and keys that are not classes
    assert main(["descriptions", "show", "--dataset", "imagefolder", "--root", str(root)]) == 0
    assert "keys that match no class of the dataset (1): 'purple hexagon'" in capsys.readouterr().out
    assert main(["descriptions", "show", str(tmp_path / "none.json")]) == 2
    assert "not found" in _error_line(capsys)


# ------------------------------------------------------------------------------------------ bad input (issue 16)


def test_a_run_refuses_a_file_that_names_a_class_twice(tmp_path):
    from fair.errors import FairError
    from fair.descriptions.cupl import load_descriptions
    f = tmp_path / "d.json"
    # the same key twice: json.load would keep the second list without a word
    f.write_text('{"red square": ["A red square."], "green circle": ["A green circle."], '
                 '"red square": ["A square, red."]}')
    with pytest.raises(FairError, match=r"names 1 classes more than once \('red square'\).*fair descriptions import"):
        load_descriptions(f, ["red square", "green circle"], fallback=True)
    # two spellings of one class: a run would have taken one of them
    f.write_text(json.dumps({"red square": ["A red square."], "Red_Square": ["A square, red."],
                             "green circle": ["A green circle."]}))
    with pytest.raises(FairError, match="'red square' as 'red square' and 'Red_Square'"):
        load_descriptions(f, ["red square", "green circle"], fallback=True)
    # a repeated key that is no class of the run changes nothing the run reads
    f.write_text('{"red square": ["A red square."], "other": ["x."], "other": ["y."]}')
    assert load_descriptions(f, ["red square"], fallback=False).per_class == [["A red square."]]


def test_import_merges_a_class_named_twice_with_a_warning_and_show_flags_it(tmp_path, capsys, caplog):
    src = tmp_path / "cupl.json"
    src.write_text('{"red square": ["A red square."], "Green_Circle": ["A green circle."], '
                   '"red square": ["A square, red."], "green circle": ["A round green shape."]}')
    out = tmp_path / "descriptions.json"
    assert main(["descriptions", "show", str(src)]) == 0
    assert "classes the file names more than once (1; a run refuses it): 'red square'" in capsys.readouterr().out
    with caplog.at_level("WARNING"):
        assert main(["descriptions", "import", str(src), "--dataset", "imagefolder", "--classes",
                     str(_class_list(tmp_path)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "source keys named more than once, their sentences merged (1): 'red square'" in printed
    assert "classes named by several source keys, their sentences merged (1): 'green circle' <- 'Green_Circle'" \
        in printed
    assert "merged into one list" in caplog.text
    data = json.loads(out.read_text())
    assert data["red square"] == ["A red square.", "A square, red."]
    assert data["green circle"] == ["A round green shape.", "A green circle."]
    matching = json.loads(sidecar_path(out).read_text())["matching"]
    assert matching["repeated_keys"] == ["red square"] and matching["merged"] == [["green circle", "Green_Circle"]]
    # the merged file is one a run reads, and show no longer flags it
    assert main(["descriptions", "show", str(out)]) == 0
    assert "more than once" not in capsys.readouterr().out


def _class_list(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text("\n".join(CLASSES) + "\n")
    return p


def test_sentences_longer_than_the_context_are_reported_before_encoding(tmp_path, caplog):
    import torch

    from fair.config import ModelConfig
    from fair.descriptions.cupl import Descriptions
    from fair.models import load_clip
    from fair.text import build_text_embeddings
    model, tokenizer, _ = load_clip(ModelConfig(name="fair-tiny-vit", pretrained="", device="cpu"),
                                    torch.device("cpu"))
    assert tokenizer.context_length == 32
    long = "A red square " + "with a very thin dark outline " * 6 + "on grey."
    per_class = [["A red square.", long, long + " Again."], ["A green circle."], [long]]
    with caplog.at_level("WARNING", logger="fair.text"):
        te = build_text_embeddings(model, tokenizer, ["red square", "green circle", "blue triangle"],
                                   ["a photo of a {}."], Descriptions(per_class, None), "random", tmp_path,
                                   torch.device("cpu"))
    assert te.desc_emb.shape[:2] == (3, 3)
    msg = [r.getMessage() for r in caplog.records if "context" in r.getMessage()]
    assert len(msg) == 1
    assert msg[0].startswith("3 description sentences of 2 classes are longer than the text encoder's context "
                             "(32 tokens)") and "'red square' (2), 'blue triangle' (1)" in msg[0]
