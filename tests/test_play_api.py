"""The playground's API through Starlette's test client, on a tiny trained ladder."""

import csv
import itertools
import json
import queue
import threading
import time

import pytest
import torch
from play_support import tiny_ladder
from starlette.testclient import TestClient

from stagegpt.cli import main
from stagegpt.generation import generate, sample_next, sampling_probs
from stagegpt.model.layers import reference_attention
from stagegpt.play.catalog import load_served
from stagegpt.play.server import create_app
from stagegpt.play.worker import Busy, ModelWorker

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    return tiny_ladder(tmp_path_factory)


@pytest.fixture(scope="module")
def served(ladder):
    return load_served(ladder=ladder)


@pytest.fixture(scope="module")
def client(served):
    worker = ModelWorker(capacity=4)
    with TestClient(create_app(served, worker), base_url=BASE) as test_client:
        yield test_client
    worker.stop()


def read_events(response) -> list[tuple[str, dict]]:
    """(name, data) of each server-sent event in a streamed response."""
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: "):])))
    return events


def stream_events(client, body: dict) -> list[tuple[str, dict]]:
    with client.stream("POST", "/api/generate", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return read_events(response)


@pytest.mark.parametrize("stage, settings", [
    (5, {"temperature": 1.0, "seed": 3}),
    (5, {"temperature": 0.8, "top_k": 3, "top_p": 0.9, "seed": 7}),
    (3, {"temperature": 0, "seed": 1}),
])
def test_streamed_tokens_equal_generate_with_the_same_seed(client, served, stage, settings):
    prompt, n = "To be", 20
    events = stream_events(client, {"stage": stage, "prompt": prompt, "max_new_tokens": n,
                                    **settings})
    names = [name for name, _ in events]
    assert names == ["prompt"] + ["token"] * n + ["done"]
    model, tokenizer = served[stage].model, served[stage].tokenizer
    ids = tokenizer.encode(prompt)
    assert [t["id"] for t in events[0][1]["tokens"]] == ids
    expected = generate(model, torch.tensor([ids]), n, settings["temperature"],
                        settings.get("top_k"), settings.get("top_p"), settings["seed"])
    tokens = [data for name, data in events if name == "token"]
    assert [t["id"] for t in tokens] == expected[0, len(ids):].tolist()
    for token in tokens:
        assert token["text"] == tokenizer.decode([token["id"]])
        top = token["top"]
        assert len(top) == 5 and [a["prob"] for a in top] == sorted(
            (a["prob"] for a in top), reverse=True)
        assert token["prob"] > 0 and token["prob"] <= top[0]["prob"]
        assert token["id"] in [a["id"] for a in top if a["prob"] == token["prob"]] or (
            token["prob"] < top[-1]["prob"])
        if settings.get("top_k") == 3:  # the distribution sampled from holds 3 tokens at most
            assert top[3]["prob"] == top[4]["prob"] == 0
        if settings["temperature"] == 0:
            assert token["prob"] == 1 and token["id"] == top[0]["id"]


def test_sampling_probs_is_the_distribution_sample_next_draws_from():
    torch.manual_seed(0)
    logits = torch.randn(1, 12) * 2
    n = 40_000
    generator = torch.Generator().manual_seed(0)
    for settings in ({}, {"temperature": 0.7, "top_k": 5}, {"top_p": 0.8},
                     {"temperature": 1.5, "top_k": 8, "top_p": 0.9}):
        probs = sampling_probs(logits, **settings)[0]  # (V,)
        torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
        drawn = sample_next(logits.expand(n, -1), generator=generator, **settings)[:, 0]
        counts = torch.bincount(drawn, minlength=12).float() / n
        assert torch.all((probs == 0) == (counts == 0)), settings  # the same support
        torch.testing.assert_close(counts, probs, atol=0.01, rtol=0), settings
    greedy = sampling_probs(logits, temperature=0)[0]
    assert greedy[logits.argmax()] == 1 and greedy.sum() == 1


def test_attention_weights_equal_the_models_reference_attention(client, served):
    model, tokenizer = served[5].model, served[5].tokenizer
    ids = tokenizer.encode("To be, or not to be")
    with torch.no_grad():  # the reference: each block's attention written out by hand
        x = model.embed(torch.tensor([ids]))  # (1, T, C)
        reference = []
        for block in model.h:
            B, T, C = x.shape
            q, k, v = block.attn.c_attn(block.ln_1(x)).split(C, dim=2)
            heads = [t.view(B, T, block.attn.n_head, -1).transpose(1, 2) for t in (q, k, v)]
            reference.append(reference_attention(*heads)[1][0])  # (nh, T, T)
            x = block(x)
    for layer in range(len(model.h)):
        for head in range(model.h[0].attn.n_head):
            response = client.post("/api/attention", json={"stage": 5, "ids": ids,
                                                           "layer": layer, "head": head})
            assert response.status_code == 200
            result = response.json()
            assert [t["id"] for t in result["tokens"]] == ids
            torch.testing.assert_close(torch.tensor(result["weights"]),
                                       reference[layer][head], atol=1e-6, rtol=0)
    assert all(not b.attn.explicit and not b.attn.softmax._forward_hooks for b in model.h)


TOO_BIG = b'{"prompt": "' + b"a" * 70_000 + b'"}'


@pytest.mark.parametrize("path, body, message", [
    ("generate", {"max_new_tokens": -1}, "max_new_tokens must be an integer from 0 to"),
    ("generate", {"max_new_tokens": 5000}, "max_new_tokens must be at most 1,024"),
    ("generate", {"stage": 4}, "stage must be one of the stages served here (3, 5), got 4"),
    ("generate", {"stage": "5"}, "stage must be one of the stages served here"),
    ("generate", {"prompt": "to be " * 10}, "prompt is 60 tokens but stage 5's context is 32"),
    ("generate", {"prompt": "café"}, "character 'é' (U+00E9) is not in this char tokenizer"),
    ("generate", b'{"prompt": "\xff\xfe"}', "request body is not UTF-8 text"),
    ("generate", b'{"prompt": "\\ud800"}', "prompt is not valid UTF-8 text"),
    ("generate", b'{"prompt": ', "request body is not valid JSON"),
    ("generate", b"[1, 2]", "request body must be a JSON object"),
    ("generate", TOO_BIG, "request body is over 65,536 bytes"),
    ("generate", {"prompt": 5}, "prompt must be a string, got int"),
    ("generate", {"temperature": "hot"}, "temperature must be a finite number >= 0"),
    ("generate", {"top_k": 2.5}, "top_k must be an integer >= 1, got 2.5"),
    ("generate", {"top_p": 0}, "top_p must be in (0, 1], got 0"),
    ("generate", {"seed": True}, "seed must be an integer in [0, 2**64), got True"),
    ("generate", {"path": "/etc/passwd"}, "unknown field 'path'; the fields are stage, prompt"),
    ("attention", {"ids": []}, "ids must be a non-empty list of token ids"),
    ("attention", {"ids": [1, "2"]}, "ids must be a non-empty list of token ids"),
    ("attention", {"ids": [1] * 33}, "ids holds 33 tokens but stage 5's context is 32"),
    ("attention", {"ids": [1, 10_000]}, "ids must be token ids in [0, "),
    ("attention", {"ids": [1, 2], "layer": 2}, "layer must be between 0 and 1 for stage 5"),
    ("attention", {"ids": [1, 2], "stage": 3, "head": 1}, "head must be between 0 and 0"),
    ("generate", b'{"seed": 1' + b"0" * 5000 + b"}", "an integer with more than 4,300 digits"),
    ("attention", b'{"ids": [1' + b"0" * 5000 + b"]}", "an integer with more than 4,300 digits"),
    ("generate", b'{"temperature": 1' + b"0" * 400 + b"}", "temperature must be a finite"),
    ("generate", b'{"top_p": 1' + b"0" * 400 + b"}", "top_p must be in (0, 1]"),
])
def test_bad_requests_get_400_with_a_one_line_message(client, path, body, message):
    content = body if isinstance(body, bytes) else json.dumps({"stage": 5, **body}).encode()
    response = client.post(f"/api/{path}", content=content,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error and "\n" not in error


@pytest.mark.parametrize("headers, status, message", [
    ({}, 415, "Content-Type: application/json"),
    ({"Content-Type": "text/plain"}, 415, "Content-Type: application/json"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "Content-Type"),
    ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, 415, "uncompressed"),
    ({"Content-Type": "application/json", "Origin": "http://evil.example"}, 403,
     "requests from 'http://evil.example' are refused"),
    ({"Content-Type": "application/json", "Origin": "null"}, 403, "are refused"),
])
@pytest.mark.parametrize("path", ["generate", "attention"])
def test_only_json_from_this_page_is_answered(client, path, headers, status, message):
    """What a page on another site can send without asking first (a "simple" POST: text,
    form data) is refused, and so is anything whose Origin is another site."""
    body = json.dumps({"ids": [1, 2]} if path == "attention" else {"max_new_tokens": 1}).encode()
    response = client.post(f"/api/{path}", content=body, headers=headers)
    assert response.status_code == status
    assert message in response.json()["error"]
    own_page = {"Content-Type": "application/json; charset=utf-8",
                "Origin": "http://127.0.0.1:8000"}
    assert client.post(f"/api/{path}", content=body, headers=own_page).status_code == 200


def test_a_body_that_starts_with_a_byte_order_mark_is_read(client):
    """JSON parsers may skip a UTF-8 BOM (RFC 8259); Python's said "decode using utf-8-sig",
    advice for the server, not the client."""
    body = b'\xef\xbb\xbf{"stage": 3, "ids": [1, 2]}'
    response = client.post("/api/attention", content=body,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 200 and response.json()["stage"] == 3


def test_a_temperature_below_fp32s_range_is_greedy_not_nan(served):
    model = served[5].model
    prompt = torch.tensor([served[5].tokenizer.encode("The")])
    greedy = generate(model, prompt, 6, temperature=0)
    for tiny in (1e-46, 5e-324):
        assert torch.equal(generate(model, prompt, 6, temperature=tiny, seed=0), greedy)
    probs = sampling_probs(model(prompt)[0][:, -1], temperature=1e-46)
    assert torch.isfinite(probs).all()


def test_the_message_is_the_one_the_cli_prints(client, ladder, capsys):
    api = client.post("/api/generate", json={"max_new_tokens": -1}).json()["error"]
    assert main(["sample", "--ckpt", str(ladder / "stage5"), "--max-new-tokens", "-1"]) == 2
    cli = capsys.readouterr().err.strip()
    assert cli == "stagegpt sample: error: --max-new-tokens" + api[len("max_new_tokens"):]


def test_concurrent_streams_take_turns_and_never_mix(client, served):
    prompt, n = "The", 24
    ids = served[5].tokenizer.encode(prompt)
    bodies = [{"stage": 5, "prompt": prompt, "max_new_tokens": n, "seed": s} for s in (1, 2)]
    with client.stream("POST", "/api/generate", json=bodies[0]) as first, \
            client.stream("POST", "/api/generate", json=bodies[1]) as second:
        events = [read_events(first), read_events(second)]
    for body, got in zip(bodies, events, strict=True):
        expected = generate(served[5].model, torch.tensor([ids]), n, seed=body["seed"])
        assert [d["id"] for name, d in got if name == "token"] == expected[0, len(ids):].tolist()


def test_a_full_worker_answers_503_and_recovers(served):
    def endless():
        while True:
            time.sleep(0.001)
            yield {"event": "token"}

    worker = ModelWorker(capacity=1)
    with TestClient(create_app(served, worker), base_url=BASE) as client:
        hog = worker.submit(endless(), lambda event: None)  # the worker is full
        body = {"stage": 5, "max_new_tokens": 8, "seed": 0}
        refused = client.post("/api/generate", json=body)
        assert refused.status_code == 503 and "busy" in refused.json()["error"]
        assert refused.headers["retry-after"] == "1"
        assert client.post("/api/attention", json={"stage": 5, "ids": [1]}).status_code == 503
        hog.cancelled.set()  # what a client that leaves its stream does; the job ends
        for _ in range(1000):
            response = client.post("/api/attention", json={"stage": 5, "ids": [1, 2]})
            if response.status_code != 503:
                break
        assert response.status_code == 200
        assert [name for name, _ in stream_events(client, body)][-1] == "done"
    worker.stop()


def test_stopping_the_worker_ends_open_jobs_and_refuses_new_ones():
    worker = ModelWorker(capacity=2)
    received: queue.Queue = queue.Queue()
    worker.submit(itertools.repeat({"event": "token"}), received.put)  # endless
    assert received.get(timeout=60) == {"event": "token"}
    worker.stop()
    events = list(iter(received.get_nowait, None))
    assert events[-1] == {"event": "error", "message": "the server stopped"}
    assert set(map(json.dumps, events[:-1])) <= {'{"event": "token"}'}
    with pytest.raises(Busy, match="the server is stopping"):
        worker.submit(iter(()), received.put)


def test_an_attention_request_the_stop_cuts_short_gets_503(served):
    """Admitted, then the server stops before its turn: 503 saying so, not a 500."""
    gate = threading.Event()

    def blocking():  # holds the worker thread until the gate opens
        gate.wait(60)
        yield {"event": "token"}

    worker = ModelWorker(capacity=2)
    answer = {}
    with TestClient(create_app(served, worker), base_url=BASE) as client:
        worker.submit(blocking(), lambda event: None)
        asking = threading.Thread(target=lambda: answer.update(response=client.post(
            "/api/attention", json={"stage": 5, "ids": [1, 2]})))
        asking.start()
        for _ in range(6000):  # until the request is admitted behind the blocked job
            if worker._admitted == 2:
                break
            time.sleep(0.01)
        worker.stop(timeout=None)
        gate.set()
        asking.join(60)
    assert answer["response"].status_code == 503
    assert answer["response"].json() == {"error": "the server stopped"}


def test_models_page_and_static_files(client, ladder):
    with open(ladder / "ladder.csv") as f:
        table = {int(r["stage"]): float(r["val_loss"]) for r in csv.DictReader(f)}
    models = client.get("/api/models").json()["models"]
    assert {m["stage"]: m["val_loss"] for m in models} == table
    assert [(m["attention_layers"], m["attention_heads"]) for m in models] == [(1, 1), (2, 2)]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for name in ("app.js", "style.css"):
        text = client.get(f"/static/{name}").text
        assert "://" not in text  # everything comes from this server: no CDN
    assert "://" not in page.text
    assert client.get("/static/../catalog.py").status_code == 404


@pytest.mark.parametrize("method, path, status, message", [
    ("GET", "/api/generate", 405, "GET '/api/generate' is not allowed; use POST"),
    ("DELETE", "/api/models", 405, "DELETE '/api/models' is not allowed; use "),
    ("GET", "/api/nothing", 404, "GET '/api/nothing' is not here; the playground serves GET /"),
    ("GET", "/static/missing.js", 404, "is not here"),
])
def test_a_path_or_method_not_served_gets_json_saying_what_is(client, method, path, status,
                                                               message):
    response = client.request(method, path)
    assert response.status_code == status
    assert message in response.json()["error"]
    if status == 405:
        assert response.headers["allow"]


def test_other_host_names_are_refused(served):
    worker = ModelWorker(capacity=1)
    with TestClient(create_app(served, worker), base_url="http://attacker.example") as client:
        assert client.get("/api/models").status_code == 400
    worker.stop()
