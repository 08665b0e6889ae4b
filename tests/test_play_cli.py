"""`stagegpt play` as a command (its flags, its start and its stop) and the Python API
around the server, on the tiny trained ladder of the API tests."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import closing, contextmanager

import pytest
from play_support import tiny_ladder

from stagegpt.cli import main
from stagegpt.play.catalog import load_served
from stagegpt.play.worker import ModelWorker


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    return tiny_ladder(tmp_path_factory)


@pytest.mark.parametrize("flags, message", [
    (["--port", "70000"], "--port must be between 0 and 65535, got 70000"),
    (["--queue", "0"], "--queue must be an integer >= 1, got 0"),
])
def test_play_cli_checks_its_flags(ladder, capsys, flags, message):
    assert main(["play", "--ckpt", str(ladder / "stage5"), *flags]) == 2
    assert capsys.readouterr().err.strip() == f"stagegpt play: error: {message}"


def test_a_queue_whose_kv_caches_cannot_fit_is_refused_before_serving(ladder, capsys,
                                                                      monkeypatch):
    """Each stream may hold a KV cache over the whole context: 32 of a large model's can
    need tens of GB. Refused before the port is bound, naming the flag."""
    from stagegpt import limits
    from stagegpt.interop import load_checkpoint
    from stagegpt.tools.inspection import kv_cache_bytes_per_token

    model = load_checkpoint(ladder / "stage5").model
    per_stream = kv_cache_bytes_per_token(model) * model.config.block_size
    monkeypatch.setattr(limits, "available_bytes", lambda: 10 * per_stream)

    def bind(port):
        raise AssertionError("the port was bound before the memory check")

    monkeypatch.setattr("stagegpt.play.server.bind", bind)
    assert main(["play", "--ckpt", str(ladder / "stage5"), "--queue", "11"]) == 2
    err = capsys.readouterr().err
    assert "serving 11 generations at once" in err and "serve fewer at once (--queue)" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("table, message", [
    (None, "--ladder dir {dir} does not exist"),
    ("", "--ladder dir {dir} has no ladder.csv; pass the --out dir of `stagegpt ladder` once "
         "it has finished a stage, or serve one checkpoint with --ckpt"),
    ("stage,val_loss\n", "ladder table {dir}/ladder.csv lists no stage"),
    ("stage,val_loss\n5,nan\n", "ladder table {dir}/ladder.csv has a damaged row"),
    ("stage,val_loss\n12,1.5\n", "ladder table {dir}/ladder.csv has a damaged row"),
])
def test_play_cli_refuses_a_missing_or_damaged_ladder(tmp_path, capsys, table, message):
    ladder = tmp_path / "ladder"
    if table is not None:
        ladder.mkdir()
    if table:
        (ladder / "ladder.csv").write_text(table)
    assert main(["play", "--ladder", str(ladder)]) == 2
    assert f"stagegpt play: error: {message.format(dir=ladder)}" in capsys.readouterr().err


@contextmanager
def play_command(ladder):
    """`stagegpt play --ladder LADDER` in a process: (the process, its URL)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "stagegpt", "play", "--ladder", str(ladder),
               "--port", "0", "--threads", "1"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as server:
        try:
            line = server.stdout.readline()
            assert line.startswith("stagegpt play: serving stages 3, 5 at http://127.0.0.1:")
            yield server, line.split(" at ")[1].split()[0]
        finally:
            server.kill()


def assert_stopped_cleanly(server):
    out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert out.strip() == "stagegpt play: stopped"
    assert "Traceback" not in err and "error" not in err.lower(), err


def test_play_cli_serves_and_stops_cleanly_on_sigterm(ladder):
    """SIGTERM in the middle of a stream: the stream ends with an event saying so (or has
    just finished), the server exits 0 and prints no traceback."""
    with play_command(ladder) as (server, url):
        with closing(urllib.request.urlopen(url + "api/models", timeout=30)) as response:
            assert len(json.load(response)["models"]) == 2
        body = json.dumps({"max_new_tokens": 1024}).encode()
        request = urllib.request.Request(url + "api/generate", body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with closing(urllib.request.urlopen(request, timeout=30)) as stream:
            assert stream.readline() == b"event: prompt\n"
            server.send_signal(signal.SIGTERM)
            rest = stream.read().decode()
        assert_stopped_cleanly(server)
    assert rest.endswith('event: done\ndata: {"stage": 3}\n\n') or rest.endswith(
        'event: error\ndata: {"message": "the server stopped"}\n\n'), rest[-200:]


def test_stopping_while_a_body_is_still_arriving_answers_503_without_a_traceback(ladder):
    """A client that has sent half its body when the server stops gets 503 at once; the
    server neither waits for the rest nor cancels the request with a traceback."""
    with play_command(ladder) as (server, url):
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: application/json\r\nContent-Length: 100\r\n"
                           b'\r\n{"prompt": "To')
            time.sleep(0.5)  # the server is waiting for the rest of the body
            server.send_signal(signal.SIGTERM)
            answer = client.makefile("rb").read().decode()
        assert_stopped_cleanly(server)
    assert answer.startswith("HTTP/1.1 503 ")
    assert answer.endswith('{"error":"the server is stopping"}')


def test_a_client_that_leaves_mid_body_is_a_stagegpt_error_not_a_traceback():
    """uvicorn reports a client gone mid-upload as a disconnect message: read_body turns
    it into the one-line error path instead of an exception in the ASGI app."""
    import asyncio

    from starlette.requests import Request

    from stagegpt.errors import StagegptError
    from stagegpt.play.server import read_body

    messages = iter([{"type": "http.request", "body": b'{"pro', "more_body": True},
                     {"type": "http.disconnect"}])

    async def receive():
        return next(messages)

    scope = {"type": "http", "method": "POST", "path": "/api/generate", "query_string": b"",
             "headers": [(b"content-type", b"application/json")]}
    with pytest.raises(StagegptError, match="the client left before sending the whole body"):
        asyncio.run(read_body(Request(scope, receive)))


def test_a_port_in_use_is_named_as_python_and_as_a_flag():
    from stagegpt.errors import StagegptError
    from stagegpt.play.server import bind

    with closing(bind(0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(StagegptError) as refused:
            bind(port)
    assert str(refused.value).startswith(f"port {port} on 127.0.0.1 cannot be used")
    assert str(refused.value).endswith("pass another `port`")
    assert refused.value.for_flags() == str(refused.value).replace(
        "port", "--port", 1).replace("`port`", "--port")


@pytest.mark.parametrize("call, param", [
    (lambda: load_served(ckpt=5), "ckpt"),
    (lambda: load_served(ladder=""), "ladder"),
    (lambda: ModelWorker(capacity="3"), "capacity"),
    (lambda: ModelWorker(capacity=2.5), "capacity"),
])
def test_the_python_api_names_a_bad_argument(call, param):
    from stagegpt.errors import StagegptError

    with pytest.raises(StagegptError) as refused:
        call()
    assert refused.value.param == param and str(refused.value).startswith(param)


def test_bind_names_a_bad_port():
    from stagegpt.errors import StagegptError
    from stagegpt.play.server import bind

    for port in (-1, 70000, "80", None):
        with pytest.raises(StagegptError, match=r"^port must be between 0 and 65535, got "):
            bind(port)
