"""Serve a local web page that shows a model sampling, token by token, and where it attends.

  stagegpt play --ckpt runs/ladder/stage5        # one model
  stagegpt play --ladder runs/ladder             # every stage of a ladder, side by side
  stagegpt play --ckpt runs/stage5 --port 8001

Open the printed URL (http://127.0.0.1:8000/ by default). Type a prompt, set the sampling
(temperature, top-k, top-p, new tokens, seed) and generate: each token appears as it is
sampled; click one to see its probability and the five likeliest tokens at that step.
Below, pick a layer and head to see each token's attention over the earlier tokens, from
the model's own forward pass. With --ladder every stage samples the same prompt and seed
side by side, with its val loss from the ladder's table.

The server listens on 127.0.0.1 only and works offline (the page's script and style come
with the package). It loads only the dirs given here, never a path from a request. Ctrl-C
or SIGTERM stops it. The model runs on one thread; up to --queue requests take turns on
it, and more get HTTP 503.
"""

from __future__ import annotations

import argparse

HELP = "serve a local web playground: watch a model sample token by token and attend"
DEFAULT_PORT = 8000
FLAGS = {"capacity": "--queue"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", metavar="DIR",
                        help="checkpoint dir, or a run dir (its newest checkpoint)")
    source.add_argument("--ladder", metavar="DIR",
                        help="a `stagegpt ladder` output dir: serve every stage in it")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="N",
                        help=f"port on 127.0.0.1 (default: {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--queue", type=int, default=32, metavar="N",
                        help="requests the model worker takes at once; more get HTTP 503 "
                             "(default: 32)")


def run(args: argparse.Namespace) -> int:
    from stagegpt.play.catalog import check_streams_fit, load_served
    from stagegpt.play.server import HOST, bind, check_port, serve
    from stagegpt.play.worker import check_capacity

    check_port(args.port)  # before the models load
    check_capacity(args.queue)
    served = load_served(args.ckpt, args.ladder)
    check_streams_fit(served, args.queue)
    sock = bind(args.port)
    port = sock.getsockname()[1]
    stages = ", ".join(str(s) for s in served)
    what = f"stage {stages}" if len(served) == 1 else f"stages {stages}"
    print(f"stagegpt play: serving {what} at http://{HOST}:{port}/ (Ctrl-C stops it)",
          flush=True)
    serve(served, sock, args.queue)
    print("stagegpt play: stopped", flush=True)
    return 0
