"""Offline, deterministic data for the mini track.

The corpus is generated from a fixed seed, so every machine builds the same bytes without any
download. Each document is a little "world" with structure that only attention can exploit:

* facts:   ``zorbin lives in kelta and keeps a lamp .``  (random per document)
* queries: ``q : where does zorbin live ? a : kelta .``    (answer only recoverable by looking back)
* copies:  ``list : tep ru ... . again : tep ru ... .``    (an induction / copy task)
* filler:  sentences from a small grammar (local structure an MLP/bigram model can learn)

Facts are stated early and queried late, often further back than the short attention window, so
the long layers matter. A byte-level BPE is trained on a fixed tokenizer corpus and wrapped in a
`tiktoken.Encoding` built locally (no download). Everything here depends only on the corpus
constants and the requested sizes, never on the training seed (as upstream: the seed controls
initialisation and training randomness, not the data).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import tiktoken
import torch

CORPUS_SEED = 20260412  # fixed: the data never depends on --seed
TOKENIZER_DOCS = 400  # documents the BPE is trained on (independent of corpus size)
BPE_MERGES = 256  # vocab = 256 bytes + merges + 1 special token
EOT = "<|endoftext|>"
# One pre-tokenisation rule: an optional leading space and a run of letters, a digit, or punctuation.
PAT_STR = r" ?[a-z]+| ?[0-9]| ?[^\sa-z0-9]+|\s+(?!\S)|\s+"

_SYL_ON = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "th", "kr", "pl"]
_SYL_NU = ["a", "e", "i", "o", "u", "ai", "ou"]
_SYL_CO = ["", "", "n", "r", "l", "s", "k"]

_ADJ = ["red", "old", "quiet", "small", "brave", "green", "tall", "lazy", "bright", "cold", "wise", "quick"]
_ANIMALS = ["fox", "owl", "cat", "dog", "crow", "hare", "wolf", "bear"]
_FOODS = ["bread", "apples", "fish", "seeds", "honey", "soup", "rice", "cheese"]
_TOOLS = ["lamp", "rope", "kettle", "drum", "map", "key", "bell", "spoon", "coin", "box", "flute", "book"]
_ANIMAL_VERBS = ["eats", "finds", "hides", "carries", "smells", "wants"]
_PLACE_VERBS = ["walks to", "sleeps in", "sings in", "waits in", "runs to"]
_COPY_WORDS = ["tep", "ru", "mak", "ol", "vin", "sa", "dor", "ki", "lem", "ba", "zu", "nox", "pe", "gil", "ya", "wen"]


class _Rng:
    """Only `random.Random.random()` is guaranteed stable across Python versions, so build on it."""

    def __init__(self, seed: int):
        self._r = random.Random(seed)

    def int(self, n: int) -> int:
        return min(int(self._r.random() * n), n - 1)

    def choice(self, seq: list[str]) -> str:
        return seq[self.int(len(seq))]

    def sample(self, seq: list[str], k: int) -> list[str]:
        pool = list(seq)
        out = []
        for _ in range(k):
            out.append(pool.pop(self.int(len(pool))))
        return out


def _word(rng: _Rng, n_syl: int) -> str:
    return "".join(rng.choice(_SYL_ON) + rng.choice(_SYL_NU) + rng.choice(_SYL_CO) for _ in range(n_syl))


@functools.lru_cache(maxsize=1)
def _lexicon() -> tuple[list[str], list[str]]:
    """Invented names (people) and places, fixed by CORPUS_SEED."""
    rng = _Rng(CORPUS_SEED - 1)
    names: list[str] = []
    while len(names) < 160:
        w = _word(rng, 2 + rng.int(2))
        if w not in names:
            names.append(w)
    places: list[str] = []
    while len(places) < 40:
        w = _word(rng, 2)
        if w not in places and w not in names:
            places.append(w)
    return names, places


def _filler(rng: _Rng, who: list[str], places: list[str]) -> str:
    kind = rng.int(3)
    if kind == 0:
        return f"the {rng.choice(_ADJ)} {rng.choice(_ANIMALS)} {rng.choice(_ANIMAL_VERBS)} the {rng.choice(_FOODS)} ."
    if kind == 1:
        return f"{rng.choice(who)} {rng.choice(_PLACE_VERBS)} {rng.choice(places)} ."
    return f"the {rng.choice(_ADJ)} {rng.choice(_TOOLS)} is in {rng.choice(places)} ."


def make_document(rng: _Rng) -> str:
    """One document: facts about a few people, filler, then queries and a copy task."""
    names, places = _lexicon()
    people = rng.sample(names, 2 + rng.int(3))
    home = {p: rng.choice(places) for p in people}
    item = {p: rng.choice(_TOOLS) for p in people}
    lines = [f"{p} lives in {home[p]} and keeps a {item[p]} ." for p in people]
    body: list[str] = []
    for _ in range(3 + rng.int(5)):
        body.append(_filler(rng, people, places))
        if rng.int(2) == 0:  # queries are interleaved with filler, at varying distances from the facts
            p = rng.choice(people)
            if rng.int(2):
                body.append(f"q : where does {p} live ? a : {home[p]} .")
            else:
                body.append(f"q : what does {p} keep ? a : {item[p]} .")
    seq = [rng.choice(_COPY_WORDS) for _ in range(3 + rng.int(5))]
    body.append(f"list : {' '.join(seq)} .")
    body.extend(_filler(rng, people, places) for _ in range(rng.int(2)))
    body.append(f"again : {' '.join(seq)} .")
    p = rng.choice(people)
    body.append(f"q : where does {p} live ? a : {home[p]} .")
    return " ".join(lines + body)


def generate_documents(n_docs: int, stream: int) -> list[str]:
    """`stream` separates the tokenizer (0), train (1) and val (2) documents."""
    rng = _Rng(CORPUS_SEED * 10 + stream)
    return [make_document(rng) for _ in range(n_docs)]


# ----------------------------------------------------------------------------- tokenizer


def _train_bpe(texts: list[str], n_merges: int) -> dict[bytes, int]:
    """Plain byte-level BPE on pre-tokenised word counts; ties broken by the smallest pair.

    Pair counts are updated incrementally (only words containing the merged pair are touched),
    which keeps tokenizer training well under a second.
    """
    pat = re.compile(PAT_STR)
    counts = Counter(piece for t in texts for piece in pat.findall(t))
    words = [[bytes([b]) for b in w.encode()] for w in counts]
    freqs = list(counts.values())
    pairs: Counter[tuple[bytes, bytes]] = Counter()
    where: dict[tuple[bytes, bytes], set[int]] = {}
    for i, (w, f) in enumerate(zip(words, freqs)):
        for p in zip(w, w[1:]):
            pairs[p] += f
            where.setdefault(p, set()).add(i)
    ranks = {bytes([i]): i for i in range(256)}
    for _ in range(n_merges):
        pairs += Counter()  # drop pairs whose count fell to zero
        if not pairs:
            break
        best_count = max(pairs.values())
        a, b = min(p for p, c in pairs.items() if c == best_count)
        merged = a + b
        if merged not in ranks:
            ranks[merged] = len(ranks)
        for i in sorted(where.pop((a, b), ())):
            w, f = words[i], freqs[i]
            for p in zip(w, w[1:]):
                pairs[p] -= f
            j = 0
            while j < len(w) - 1:
                if w[j] == a and w[j + 1] == b:
                    w[j : j + 2] = [merged]
                j += 1
            for p in zip(w, w[1:]):
                pairs[p] += f
                where.setdefault(p, set()).add(i)
    return ranks


@functools.lru_cache(maxsize=1)
def get_encoding() -> tiktoken.Encoding:
    """The mini track's tokenizer: a small BPE trained here, wrapped in a local tiktoken Encoding."""
    ranks = _train_bpe(generate_documents(TOKENIZER_DOCS, stream=0), BPE_MERGES)
    return tiktoken.Encoding(name="slowrun-mini", pat_str=PAT_STR, mergeable_ranks=ranks,
                             special_tokens={EOT: len(ranks)})


def token_bytes(enc: tiktoken.Encoding) -> torch.Tensor:
    """Bytes per token id (0 for the special token), for bits-per-byte as upstream computes it."""
    sizes = [len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)]
    sizes[enc.eot_token] = 0
    return torch.tensor(sizes, dtype=torch.int64)


# ----------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class MiniData:
    train: torch.Tensor  # int64 token ids, documents joined by EOT
    val: torch.Tensor
    vocab_size: int
    token_bytes: torch.Tensor  # [vocab_size] bytes per token
    sha256: str  # hash of the exact token content (train then val)


def _encode_docs(enc: tiktoken.Encoding, docs: list[str]) -> np.ndarray:
    ids: list[int] = []
    for d in docs:
        ids.append(enc.eot_token)  # every document starts with EOT, like nanochat's BOS
        ids.extend(enc.encode_ordinary(d))
    return np.asarray(ids, dtype=np.int32)


@functools.lru_cache(maxsize=4)
def build_data(n_train_docs: int, n_val_docs: int) -> MiniData:
    """Build (or reuse in-process) the corpus. Pure function of the two sizes."""
    enc = get_encoding()
    train = _encode_docs(enc, generate_documents(n_train_docs, stream=1))
    val = _encode_docs(enc, generate_documents(n_val_docs, stream=2))
    h = hashlib.sha256()
    h.update(train.astype("<i4").tobytes())
    h.update(val.astype("<i4").tobytes())
    return MiniData(train=torch.from_numpy(train.astype(np.int64)), val=torch.from_numpy(val.astype(np.int64)),
                    vocab_size=enc.n_vocab, token_bytes=token_bytes(enc), sha256=h.hexdigest())


def to_sequences(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut a token stream into non-overlapping [N, seq_len + 1] rows (inputs and shifted targets)."""
    n = (len(tokens) - 1) // seq_len
    idx = torch.arange(n)[:, None] * seq_len + torch.arange(seq_len + 1)[None, :]
    return tokens[idx]


class TrainLoader:
    """Yields (x, y, epoch) forever, like upstream's DataLoader.

    Batch order is a fixed permutation in epoch 1 and is reshuffled with a generator seeded by the
    epoch number (upstream's `g.manual_seed(self.epoch)`), so it never depends on the training seed.
    `Starting epoch k` is printed when the loader wraps, i.e. while prefetching, as upstream does.
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, device: str, log=print):
        seqs = to_sequences(tokens, seq_len)
        g = torch.Generator().manual_seed(CORPUS_SEED)
        seqs = seqs[torch.randperm(len(seqs), generator=g)]
        self.num_steps = len(seqs) // batch_size
        if self.num_steps < 1:
            raise ValueError(f"the training set has {len(seqs)} sequences, fewer than one batch of {batch_size}")
        self.batches = seqs[: self.num_steps * batch_size].view(self.num_steps, batch_size, seq_len + 1)
        self.tokens_per_epoch = self.num_steps * batch_size * seq_len
        self.device, self.log = device, log
        self.pos, self.epoch = 0, 1

    def __iter__(self) -> "TrainLoader":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.pos >= self.num_steps:
            self.pos = 0
            self.epoch += 1
            self.log(f"Starting epoch {self.epoch}")
            g = torch.Generator().manual_seed(self.epoch)
            self.batches = self.batches[torch.randperm(self.num_steps, generator=g)]
        batch = self.batches[self.pos].to(self.device)
        self.pos += 1
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous(), self.epoch


def val_batches(tokens: torch.Tensor, batch_size: int, seq_len: int, device: str):
    """All val sequences in a fixed order (the last partial batch included)."""
    seqs = to_sequences(tokens, seq_len)
    for i in range(0, len(seqs), batch_size):
        b = seqs[i : i + batch_size].to(device)
        yield b[:, :-1].contiguous(), b[:, 1:].contiguous()
