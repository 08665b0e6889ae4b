"""A synthetic order-K Markov source whose entropy is known exactly.

Real text has no known optimum; this source does. `stagegpt prepare markov` samples a
token stream from it and writes, beside the bins, the source's entropy rate (the lowest
cross-entropy any model can reach), its bigram floor H(X_t | X_{t-1}) (the best a model
seeing only the last token can do: stages 1-2) and its unigram entropy. With order >= 2
the bigram floor sits well above the entropy rate, so the stages that attend to the past
should drop below it and the ones that cannot should stall on it.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from stagegpt.errors import StagegptError

MAX_MARKOV_TABLE = 1 << 22  # vocab ** (order + 1) transition probabilities at most
FLOOR = 0.03  # share of the uniform distribution mixed into every next-token distribution


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along `axis` (0 log 0 = 0)."""
    safe = np.where(p > 0, p, 1.0)
    return -(p * np.log(safe)).sum(axis=axis)


@dataclass
class MarkovSource:
    """X_t depends on the previous `order` tokens through `probs[context]`.

    A context (x_{t-K}, ..., x_{t-1}) is the base-`vocab` number with x_{t-1} as its last
    digit, so `probs` has shape (vocab**order, vocab).
    """

    order: int
    vocab: int
    probs: np.ndarray

    @classmethod
    def random(cls, order: int, vocab: int, seed: int, concentration: float = 0.1,
               floor: float = FLOOR) -> MarkovSource:
        """Each context's next-token distribution is Dirichlet(concentration) mixed with
        `floor` of the uniform distribution.

        A small concentration makes each distribution peaked (a few likely next tokens), so
        the entropy rate sits well below ln(vocab); because every context gets its own
        peaks, knowing only the last token leaves much more uncertainty (the bigram floor
        is well above the entropy rate when order >= 2). The floor keeps every transition
        possible, so the chain is irreducible, its stationary distribution unique, and it
        mixes fast enough that a sample's statistics settle near the exact values.
        """
        if order < 1 or vocab < 2:
            raise StagegptError(f"need `order` >= 1 and `vocab` >= 2, got {order} and {vocab}",
                                mentions=("order", "vocab"))
        if order >= 64 or vocab ** (order + 1) > MAX_MARKOV_TABLE:  # 2**65 > the max already
            raise StagegptError(f"{vocab}**{order + 1} transition probabilities (`vocab` to "
                                f"the power `order` + 1) are too many (max "
                                f"{MAX_MARKOV_TABLE:,}); lower `vocab` or `order`",
                                mentions=("vocab", "order"))
        if not (0 < concentration < math.inf and 0 <= floor < 1):
            raise StagegptError(f"concentration must be a finite number > 0, got "
                                f"{concentration}; and the floor in [0, 1), got {floor}",
                                "concentration")
        rng = np.random.default_rng(seed)
        peaked = rng.dirichlet(np.full(vocab, concentration), size=vocab**order)
        return cls(order, vocab, (1.0 - floor) * peaked + floor / vocab)

    @property
    def n_contexts(self) -> int:
        return self.vocab**self.order

    def _next_context(self) -> np.ndarray:
        """(n_contexts, vocab): the context after `context` emits token x."""
        keep = self.vocab ** (self.order - 1)
        return (np.arange(self.n_contexts)[:, None] % keep) * self.vocab + np.arange(self.vocab)

    def stationary(self, tol: float = 1e-14, max_iter: int = 200_000) -> np.ndarray:
        """The stationary distribution over contexts, by power iteration on the lazy chain
        (P + I) / 2, which has the same fixed point and cannot oscillate."""
        nxt = self._next_context().ravel()
        pi = np.full(self.n_contexts, 1.0 / self.n_contexts)
        for _ in range(max_iter):
            flow = np.bincount(nxt, weights=(pi[:, None] * self.probs).ravel(),
                               minlength=self.n_contexts)
            new = 0.5 * (pi + flow)
            new /= new.sum()
            if np.abs(new - pi).sum() < tol:
                return new
            pi = new
        raise StagegptError("the Markov chain's stationary distribution did not converge; "
                            "try a larger --concentration")

    def entropy_rate(self, pi: np.ndarray | None = None) -> float:
        """H(X_t | previous `order` tokens) under stationarity, nats/token: the best
        achievable cross-entropy of any model on this source."""
        pi = self.stationary() if pi is None else pi
        return float(pi @ _entropy(self.probs))

    def bigram_joint(self, pi: np.ndarray | None = None) -> np.ndarray:
        """(vocab, vocab) stationary joint distribution of (X_{t-1}, X_t)."""
        pi = self.stationary() if pi is None else pi
        flow = pi[:, None] * self.probs                     # (contexts, V): P(context, next)
        return flow.reshape(-1, self.vocab, self.vocab).sum(axis=0)  # sum out older tokens

    def bigram_entropy(self, pi: np.ndarray | None = None) -> float:
        """H(X_t | X_{t-1}), nats/token: the floor for models that see only the last token."""
        joint = self.bigram_joint(pi)
        return float(_entropy(joint.ravel()) - _entropy(joint.sum(axis=1)))

    def unigram_entropy(self, pi: np.ndarray | None = None) -> float:
        """H(X_t), nats/token: the floor for a model that sees no context at all."""
        return float(_entropy(self.bigram_joint(pi).sum(axis=0)))

    def sample(self, n_tokens: int, seed: int, pi: np.ndarray | None = None) -> np.ndarray:
        """`n_tokens` ids from the stationary process (the first context drawn from pi)."""
        if n_tokens < self.order + 1:
            raise StagegptError(f"tokens must be more than the order ({self.order})", "tokens")
        pi = self.stationary() if pi is None else pi
        rng = np.random.default_rng([seed, 1])  # a stream apart from the one for `probs`
        context = int(rng.choice(self.n_contexts, p=pi))
        out = np.empty(n_tokens, dtype=np.int64)
        for i in range(self.order):  # the first context's digits, oldest first
            out[i] = context // self.vocab ** (self.order - 1 - i) % self.vocab
        cdf = np.cumsum(self.probs, axis=1)
        cdf[:, -1] = 1.0
        rows = cdf.tolist()
        uniforms = rng.random(n_tokens).tolist()
        keep, vocab = self.vocab ** (self.order - 1), self.vocab
        for t in range(self.order, n_tokens):
            x = bisect_right(rows[context], uniforms[t])
            out[t] = x
            context = (context % keep) * vocab + x
        return out


def markov_alphabet(vocab: int) -> str:
    """Printable stand-ins for Markov token ids, so samples can be read: a-z A-Z 0-9, then
    CJK ideographs."""
    base = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    extra = max(0, vocab - len(base))
    return (base + "".join(chr(0x4E00 + i) for i in range(extra)))[:vocab]
