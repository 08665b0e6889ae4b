"""Draw heatmaps of a checkpoint's causal attention weights over a text.

  stagegpt attention --ckpt runs/stage5 --text "To be, or not to be" --out attn.png
  stagegpt attention --ckpt runs/stage5 --text "..." --out l0.png --layer 0 --head 2

The text is encoded with the checkpoint's own tokenizer and run through the model once.
Each heatmap shows one head: row i is how query token i spreads its attention over
tokens 0..i (each row sums to 1; above the diagonal is masked out), with the token
strings on both axes (␣ is a space, ↵ a newline). By default the PNG holds a grid of
every layer (rows) and head (columns); --layer and --head (counted from 0) pick one row,
one column, or a single map. Needs a checkpoint of stage 3 to 9 (1 and 2 have no
attention). The text must fit in the model's context (block_size tokens).
"""

from __future__ import annotations

import argparse

HELP = "plot a checkpoint's attention weights over a text as heatmaps (PNG)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", metavar="DIR", required=True,
                        help="checkpoint or run dir of a stage 3-9 model")
    parser.add_argument("--text", required=True, help="the text whose attention to draw")
    parser.add_argument("--out", metavar="FILE.png", required=True, help="PNG file to write")
    parser.add_argument("--layer", type=int, help="only this layer (0-based; default: all)")
    parser.add_argument("--head", type=int, help="only this head (0-based; default: all)")


def run(args: argparse.Namespace) -> int:
    from stagegpt.interop import load_checkpoint
    from stagegpt.tools.attention_maps import plot_attention

    ckpt = load_checkpoint(args.ckpt)
    maps = plot_attention(ckpt.model, ckpt.tokenizer, args.text, args.out,
                          layer=args.layer, head=args.head)
    layers = sorted({li for li, _ in maps.panels})
    heads = sorted({hi for _, hi in maps.panels})
    print(f"wrote {maps.path}: {len(maps.panels)} heatmap(s) ({len(layers)} layer(s) x "
          f"{len(heads)} head(s)) over {len(maps.tokens)} tokens")
    return 0
