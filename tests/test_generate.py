import math

import pytest
import torch
from helpers import peaky_model

import stagegpt
from stagegpt import ModelConfig, StagegptError, build_model
from stagegpt.generation.decoding import generate, stream
from stagegpt.generation.sampling import _nucleus, draw, sample_next, top_p_keep

STAGES = list(range(1, 10))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models decode one small product at a time: a second thread only adds
    synchronization, which on a busy machine costs more than the products themselves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def prompts(config, B=2, T=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (B, T), generator=g)


def textbook_greedy(model, idx, n):
    """The plainest loop there is: full forward on the cropped window, argmax the last."""
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(idx[:, -model.config.block_size:])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def counter_model(vocab_size=10):
    """Stage 1 with hand-set weights: always predicts (token + 1) % vocab_size."""
    config = ModelConfig(vocab_size=vocab_size, block_size=8, n_embd=vocab_size, n_layer=1,
                         n_head=1)
    model = build_model(1, config)
    with torch.no_grad():
        model.wte.weight.copy_(10 * torch.eye(vocab_size))
        model.lm_head.weight.copy_(torch.eye(vocab_size).roll(1, dims=0))
        model.lm_head.bias.zero_()
    return model.eval()


# --- the KV cache and the rolling window ------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("T, n", [(1, 10), (5, 30), (16, 8), (23, 12), (2, 40)],
                         ids=["short", "past-block", "full-prompt", "long-prompt",
                              "transposed-head"])
def test_greedy_with_cache_equals_without_cache(stage, T, n, tiny_config):
    """Token for token, including generation that rolls the window past block_size (16),
    at every stage's full depth.

    By default stages 7-9 slide a full cache along instead of running the window again,
    which keeps the deeper layers' keys and values of tokens that saw the dropped one:
    that equals the window's run only with one layer (tests/test_modern_stages). With
    `slide=False` they run the window again, like stages 1-6, exactly.
    """
    model = peaky_model(stage, tiny_config)
    idx = prompts(tiny_config, T=T)
    cached = generate(model, idx, n, temperature=0, slide=False)
    uncached = generate(model, idx, n, temperature=0, use_cache=False)
    assert cached.shape == (2, T + n)
    assert torch.equal(cached[:, :T], idx)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, textbook_greedy(model, idx, n))


def test_context_overflow_rebuilds_the_cache(tiny_config):
    """Regression: past block_size, positions restart at 0 for the rolled window. Varied
    output proves the comparison above is not between two constant sequences."""
    model = peaky_model(5, tiny_config)
    out = generate(model, prompts(tiny_config, B=1, T=3), 40, temperature=0)
    assert out[0, 3 + tiny_config.block_size:].unique().numel() > 3
    assert torch.equal(out, generate(model, out[:, :3], 40, temperature=0, use_cache=False))


@pytest.mark.parametrize("stage", [3, 5])
def test_sampled_with_cache_equals_without_cache(stage, tiny_config):
    model = peaky_model(stage, tiny_config)
    idx = prompts(tiny_config)
    a = generate(model, idx, 24, temperature=0.9, top_k=20, seed=3)
    b = generate(model, idx, 24, temperature=0.9, top_k=20, seed=3, use_cache=False)
    assert torch.equal(a, b)


# --- sampling -----------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [1, 5])
def test_same_seed_same_sample(stage, tiny_config):
    model = peaky_model(stage, tiny_config)
    idx = prompts(tiny_config)
    a = generate(model, idx, 20, temperature=1.2, seed=7)
    b = generate(model, idx, 20, temperature=1.2, seed=7)
    c = generate(model, idx, 20, temperature=1.2, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_seed_does_not_touch_the_global_rng(tiny_config):
    model = peaky_model(5, tiny_config)
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    generate(model, prompts(tiny_config), 5, seed=1)
    assert torch.equal(torch.rand(3), before)


@pytest.mark.parametrize("stage", STAGES)
def test_top_k_1_equals_greedy(stage, tiny_config):
    model = peaky_model(stage, tiny_config)
    idx = prompts(tiny_config)
    greedy = generate(model, idx, 20, temperature=0)
    assert torch.equal(generate(model, idx, 20, temperature=1.5, top_k=1, seed=0), greedy)
    assert torch.equal(generate(model, idx, 20, top_k=1, top_p=0.5), greedy)


def test_top_k_keeps_exactly_k_tokens_when_logits_tie():
    logits = torch.zeros(1, 50)  # every token ties
    logits[0, 7] = 1.0
    g = torch.Generator().manual_seed(0)
    seen = {sample_next(logits, 1.0, top_k=4, generator=g).item() for _ in range(400)}
    assert len(seen) == 4 and 7 in seen


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.0625]])  # sorted, exact in binary
    expected = {0.3: 1, 0.5: 1, 0.6: 2, 0.75: 2, 0.76: 3, 0.875: 3, 0.9: 4, 1.0: 5}
    for p, size in expected.items():
        keep = top_p_keep(probs, p)
        assert keep[0].tolist() == [True] * size + [False] * (5 - size), p
        assert probs[0, :size].sum() >= p and probs[0, :size - 1].sum() < p


def test_top_p_samples_only_from_the_nucleus():
    probs = torch.tensor([0.1, 0.45, 0.05, 0.3, 0.1])  # unsorted: nucleus for 0.7 is {1, 3}
    logits = probs.log().repeat(2, 1)  # a batch of two identical rows
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_next(logits, 1.0, top_p=0.7, generator=g) for _ in range(600)])
    counts = torch.bincount(draws.flatten(), minlength=5)
    assert set(counts.nonzero().flatten().tolist()) == {1, 3}
    assert abs(counts[1] / counts.sum() - 0.45 / 0.75) < 0.05  # renormalized within the set


@pytest.mark.parametrize("sharpness", [0.1, 1.0, 3.0, 8.0])
def test_nucleus_search_matches_a_full_sort(sharpness):
    """_nucleus tries 64, 512 candidates before sorting all V; the set must not change."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5000, generator=g) * sharpness
    for p in (0.1, 0.5, 0.9, 0.99):
        probs, ids = _nucleus(logits, p)
        kept = [set(ids[b][probs[b] > 0].tolist()) for b in range(3)]
        full, order = torch.sort(torch.softmax(logits, -1), descending=True)
        keep = top_p_keep(full, p)
        assert kept == [set(order[b][keep[b]].tolist()) for b in range(3)]


def test_draw_follows_the_weights_and_skips_zeros():
    weights = torch.tensor([[0.0, 0.1, 0.0, 0.4, 0.5, 0.0], [2.0, 0.0, 0.0, 0.0, 0.0, 6.0]])
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([draw(weights, g) for _ in range(4000)], dim=1)  # (2, 4000)
    freq0 = torch.bincount(draws[0], minlength=6) / 4000
    freq1 = torch.bincount(draws[1], minlength=6) / 4000
    assert torch.allclose(freq0, torch.tensor([0, 0.1, 0, 0.4, 0.5, 0]), atol=0.03)
    assert torch.allclose(freq1, torch.tensor([0.25, 0, 0, 0, 0, 0.75]), atol=0.03)
    assert (freq0[[0, 2, 5]] == 0).all() and (freq1[1:5] == 0).all()


def test_top_k_then_top_p_compose():
    logits = torch.tensor([[3.0, 2.9, 2.8, 0.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, 1.0, top_k=4, top_p=0.99, generator=g).item()
             for _ in range(300)}
    assert draws <= {0, 1, 2, 3} and {0, 1, 2} <= draws


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    cold = (sample_next(logits, 0.2, generator=g) == 0).float().mean()
    hot = (sample_next(logits, 5.0, generator=g) == 0).float().mean()
    assert cold > 0.95 and hot < 0.5


# --- batches, stop ids, streaming -----------------------------------------------------------


def test_stop_ids_pad_finished_rows_and_end_when_all_are_done():
    model = counter_model()
    idx = torch.tensor([[1], [5]])
    out = generate(model, idx, 20, temperature=0, stop_ids=[8])
    # row 0 counts 2..8 (7 steps), row 1 reaches 8 after 3 and repeats it; then all are done
    assert out.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8], [5, 6, 7, 8, 8, 8, 8, 8]]
    out = generate(model, idx, 20, temperature=0, stop_ids=(8, 7))
    assert out.tolist() == [[1, 2, 3, 4, 5, 6, 7], [5, 6, 7, 7, 7, 7, 7]]
    assert generate(model, idx, 4, temperature=0, stop_ids=[9]).shape == (2, 5)


def test_stop_id_in_the_prompt_does_not_stop():
    out = generate(counter_model(), torch.tensor([[8]]), 3, temperature=0, stop_ids=[8])
    assert out.tolist() == [[8, 9, 0, 1]]


def test_batch_rows_match_single_prompts(tiny_config):
    model = peaky_model(5, tiny_config)
    idx = prompts(tiny_config, B=3)
    batch = generate(model, idx, 12, temperature=0)
    for b in range(3):
        assert torch.equal(batch[b:b + 1], generate(model, idx[b:b + 1], 12, temperature=0))


def test_stream_and_on_token_yield_each_column(tiny_config):
    model = peaky_model(4, tiny_config)
    idx = prompts(tiny_config)
    columns = []
    out = generate(model, idx, 9, temperature=0.8, seed=1,
                   on_token=lambda col: columns.append(col.clone()))
    assert [c.shape for c in columns] == [(2, 1)] * 9
    assert torch.equal(torch.cat([idx, *columns], dim=1), out)
    streamed = [c.clone() for c in stream(model, idx, 9, temperature=0.8, seed=1)]
    assert torch.equal(torch.cat([idx, *streamed], dim=1), out)


def test_zero_new_tokens_returns_the_prompt(tiny_config):
    idx = prompts(tiny_config)
    assert torch.equal(generate(peaky_model(5, tiny_config), idx, 0), idx)


def test_restores_training_flag_and_returns_plain_tensor(tiny_config):
    model = build_model(5, ModelConfig(**{**tiny_config.to_dict(), "dropout": 0.5})).train()
    out = generate(model, prompts(tiny_config), 6, temperature=0)
    assert model.training and all(m.training for m in model.modules())
    assert not out.is_inference() and not out.requires_grad
    model.eval()
    assert torch.equal(out, generate(model, prompts(tiny_config), 6, temperature=0))
    steps = stream(model.train(), prompts(tiny_config), 6)
    next(steps)
    steps.close()  # an abandoned stream restores the flag too
    assert model.training


def test_method_and_package_export(tiny_config):
    model = peaky_model(5, tiny_config)
    idx = prompts(tiny_config)
    assert stagegpt.generate is generate
    expected = generate(model, idx, 5, temperature=0)
    assert torch.equal(model.generate(idx, 5, temperature=0), expected)


# --- bad arguments -----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, flag", [
    (dict(temperature=-0.1), "^temperature "),
    (dict(temperature=math.nan), "^temperature "),
    (dict(temperature=math.inf), "^temperature "),
    (dict(top_k=0), "^top_k "),
    (dict(top_k=2.5), "^top_k "),
    (dict(top_p=0.0), "^top_p "),
    (dict(top_p=1.01), "^top_p "),
    (dict(top_p=math.nan), "^top_p "),
    (dict(max_new_tokens=-1), "^max_new_tokens "),
    (dict(max_new_tokens=1 << 40), "^max_new_tokens "),
    (dict(seed=-1), "^seed "),
    (dict(seed=2**64), "^seed "),
    (dict(seed="7"), "^seed "),
    (dict(stop_ids=["a"]), "^stop_ids "),
    (dict(stop_ids=5), "^stop_ids "),
    (dict(stop_ids=[2**70]), "^stop_ids "),
    (dict(stop_ids=[True]), "^stop_ids "),
    (dict(max_new_tokens=1 << 24, idx=torch.zeros(1, 1, dtype=torch.long).expand(1 << 20, 1)),
     "^idx: 1,048,576 rows of 16,777,217 ids needs"),
])
def test_bad_arguments_raise_one_line_errors_naming_the_parameter(kwargs, flag, tiny_config):
    model = peaky_model(5, tiny_config)
    args = {"max_new_tokens": 3, "idx": prompts(tiny_config), **kwargs}
    for fn in (generate, stream):  # stream checks eagerly, before the first next()
        with pytest.raises(StagegptError, match=flag) as err:
            fn(model, **args)
        assert "\n" not in str(err.value)
        assert err.value.param == flag[1:].split()[0].rstrip(":")


@pytest.mark.parametrize("idx", [
    torch.zeros(2, 0, dtype=torch.long),
    torch.zeros(3, dtype=torch.long),
    torch.tensor([[0, 97]]),
    torch.tensor([[-1, 2]]),
    torch.zeros(1, 3),
    torch.zeros(1, 3, dtype=torch.bool),
], ids=["empty", "1-d", "too-big-id", "negative-id", "float", "bool"])
def test_bad_prompts_raise(idx, tiny_config):
    with pytest.raises(StagegptError, match="^idx "):
        generate(peaky_model(5, tiny_config), idx, 3)


def test_a_tiny_temperature_samples_the_argmax_instead_of_overflowing(tiny_config):
    """logits / 1e-30 overflows to inf; the sampler must still pick the best token."""
    model = peaky_model(5, tiny_config)
    idx = prompts(tiny_config)
    greedy = generate(model, idx, 12, temperature=0)
    assert torch.equal(generate(model, idx, 12, temperature=1e-30, seed=3), greedy)


# --- the `stagegpt sample` command ------------------------------------------------------

CORPUS = "hello world\nthe quick brown fox jumps over the lazy dog\nça coûte 5€\n"


@pytest.fixture
def char_ckpt(tmp_path):
    """A stage 5 checkpoint with a char tokenizer, context 16."""
    from stagegpt.data.tokenizers import get_tokenizer
    from stagegpt.train.checkpoints import save_checkpoint

    tokenizer = get_tokenizer("char", CORPUS)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_embd=32, n_layer=2,
                         n_head=2)
    model = peaky_model(5, config)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    return tmp_path / "ckpt", model, tokenizer


def cli(*argv):
    """Run `stagegpt` in process; the exit code, whether returned or raised by argparse."""
    from stagegpt.cli import main

    try:
        return main([str(a) for a in argv])
    except SystemExit as exit:
        return exit.code


def sample_cli(ckpt, *args):
    return cli("sample", "--ckpt", ckpt, *args)


@pytest.mark.parametrize("cache", [[], ["--no-cache"]], ids=["cache", "no-cache"])
@pytest.mark.parametrize("prompt", ["the ", "the quick brown fox jumps"], ids=["short", "long"])
def test_sample_prints_prompt_and_greedy_text(prompt, cache, char_ckpt, capsys):
    """The long prompt (25 chars) is cropped to the last 16; 30 new tokens roll the window."""
    path, model, tokenizer = char_ckpt
    assert sample_cli(path, "--prompt", prompt, "--max-new-tokens", "30", "--temperature", "0",
                      *cache) == 0
    out, err = capsys.readouterr()
    expected = generate(model, torch.tensor([tokenizer.encode(prompt)]), 30, temperature=0)
    assert out == prompt + tokenizer.decode(expected[0, -30:].tolist()) + "\n"
    assert ("cropped" in err) == (len(prompt) > 16)


def test_sample_streams_each_token_as_it_is_made(char_ckpt, monkeypatch):
    path, _, _ = char_ckpt
    events = []

    class Recorder:
        def write(self, text):
            events.append(("write", text))

        def flush(self):
            events.append(("flush", None))

    monkeypatch.setattr("sys.stdout", Recorder())
    assert sample_cli(path, "--prompt", "he", "--max-new-tokens", "12", "--seed", "1") == 0
    writes = [text for kind, text in events if kind == "write"]
    assert writes[0] == "he" and len(writes) >= 12  # the prompt, one write per token, "\n"
    assert all(events[i + 1][0] == "flush" for i, (kind, _) in enumerate(events)
               if kind == "write")


def test_sample_seed_repeats_and_num_samples_differ(char_ckpt, capsys):
    path, _, _ = char_ckpt
    args = ["--prompt", "he", "--max-new-tokens", "15", "--seed", "3", "--num-samples", "2",
            "--top-p", "0.9", "--top-k", "20"]
    assert sample_cli(path, *args) == 0
    first = capsys.readouterr().out
    assert sample_cli(path, *args) == 0
    assert capsys.readouterr().out == first
    one, two = first.split("\n---\n")
    assert one.startswith("he") and two.startswith("he") and one != two.rstrip("\n")


def test_sample_empty_prompt_starts_from_the_start_id(char_ckpt, capsys):
    path, model, tokenizer = char_ckpt
    assert tokenizer.decode([tokenizer.start_id]) == "\n"
    assert sample_cli(path, "--max-new-tokens", "10", "--temperature", "0") == 0
    expected = generate(model, torch.tensor([[tokenizer.start_id]]), 10, temperature=0)
    assert capsys.readouterr().out == tokenizer.decode(expected[0, 1:].tolist()) + "\n"


def test_sample_stops_at_end_of_text_and_hides_it(tmp_path, capsys):
    from stagegpt.data.tokenizers import get_tokenizer
    from stagegpt.train.checkpoints import save_checkpoint

    tokenizer = get_tokenizer("bpe:300", CORPUS * 4)
    model = counter_model(tokenizer.vocab_size)  # predicts token + 1 ...
    with torch.no_grad():
        model.lm_head.bias[tokenizer.eot_id] = 100.0  # ... unless end-of-text wins outright
    save_checkpoint(tmp_path / "bpe", model, tokenizer)
    assert sample_cli(tmp_path / "bpe", "--prompt", "hello", "--max-new-tokens", "50") == 0
    assert capsys.readouterr().out == "hello\n"


def test_stream_decoder_never_breaks_a_character():
    from stagegpt.data.tokenizers import Tokenizer

    class Bytes(Tokenizer):  # a byte-level tokenizer: "€" is three tokens, "é" two
        table = [b"a", b"\xe2", b"\x82", b"\xac", b"\xc3", b"\xa9", b"\xff"]

        def decode_bytes(self, ids):
            return b"".join(self.table[i] for i in ids)

    text = Bytes().stream_decoder()
    pieces = [text.push([token]) for token in [0, 1, 2, 3, 4, 5, 0, 6, 0, 1]]
    assert pieces == ["a", "", "", "€", "", "é", "a", "\ufffd", "a", ""]  # \xff: never valid
    assert text.flush() == "\ufffd"  # an unfinished character shows at the end


@pytest.mark.parametrize("args, flag", [
    (["--temperature", "-1"], "--temperature "),
    (["--temperature", "nan"], "--temperature "),
    (["--top-k", "0"], "--top-k "),
    (["--top-p", "0"], "--top-p "),
    (["--top-p", "1.5"], "--top-p "),
    (["--max-new-tokens", "-5"], "--max-new-tokens "),
    (["--max-new-tokens", str(1 << 40)], "--max-new-tokens "),
    (["--seed", "-1"], "--seed "),
    (["--seed", str(2**64)], "--seed "),
    (["--num-samples", "0"], "--num-samples"),
    (["--top-k", "two"], "--top-k"),
    (["--prompt", "hi", "--prompt-file", "x.txt"], "--prompt"),
    (["--prompt", "hello WORLD"], "'W'"),
    (["--prompt-file", "/nonexistent/prompt.txt"], "prompt file"),
    (["--prompt-file", "/dev/zero"], "prompt file /dev/zero is over 16,777,216 bytes"),
    (["--num-samples", str(10**20)], "--num-samples must be from 1 to 10,000"),
    (["--chat", "--no-cache", "--dtype", "bfloat16"], "--dtype, --no-cache apply to plain"),
])
def test_sample_bad_values_give_one_line_and_exit_2(args, flag, char_ckpt, capsys):
    path, _, _ = char_ckpt
    assert sample_cli(path, *args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and flag in err, err


def test_sample_missing_checkpoint_dir(tmp_path, capsys):
    assert sample_cli(tmp_path / "nope", "--prompt", "x") == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "nope" in err
