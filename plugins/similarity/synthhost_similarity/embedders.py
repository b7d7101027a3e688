"""Embedders: text → L2-normalised float32 vectors.

An embedder is anything with ``name``, ``dim`` and ``embed(texts)`` (plus ``aembed`` for
the call path). The name is stored with every vector: vectors of different embedders are
never compared, so changing the algorithm means a new name (``hashed-ngram-v2``).

The default, :class:`HashedNgramEmbedder`, is offline and deterministic: character 3-5
grams and word 1-2 grams, each hashed (a fixed 64-bit polynomial hash + splitmix64
finaliser, never Python's salted ``hash()``) to a bucket and a sign, summed per feature
group, each group L2-normalised and weighted, then the whole vector normalised. Signed
hashing makes collisions cancel out on average, so unrelated texts score near the
overlap of their common n-grams rather than near the bucket load. It is good at near
duplicates (reworded, re-cased, re-punctuated, lightly edited prompts), not at
paraphrases with different words: use an embedding model for those.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]

# Embedding cost is linear in length; near-duplicate detection needs the head and tail of
# a long prompt, not every character of a pasted document.
MAX_EMBED_CHARS = 20_000


@runtime_checkable
class Embedder(Protocol):
    """What the plugin needs from an embedder. ``embed`` may block (it runs off the event
    loop, or is CPU-cheap); ``aembed`` is used on the call path."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> Vector:
        """A ``(len(texts), dim)`` float32 matrix of L2-normalised rows (a zero row for a
        text with no features)."""
        ...

    async def aembed(self, texts: Sequence[str]) -> Vector: ...


EmbedderFactory = Callable[[Mapping[str, str]], Embedder]
_REGISTRY: dict[str, EmbedderFactory] = {}


def register_embedder(kind: str, factory: EmbedderFactory) -> None:
    """Make ``SYNTHHOST_SIMILARITY_EMBEDDER=<kind>`` build ``factory(env)``."""
    _REGISTRY[kind] = factory


def embedder_kinds() -> list[str]:
    return sorted(_REGISTRY)


def make_embedder(env: Mapping[str, str]) -> Embedder:
    """The embedder the environment selects (``hashed`` when unset)."""
    from synthhost.errors import UsageError

    kind = (env.get("SYNTHHOST_SIMILARITY_EMBEDDER") or "hashed").strip().lower()
    factory = _REGISTRY.get(kind)
    if factory is None:
        raise UsageError(
            f"SYNTHHOST_SIMILARITY_EMBEDDER={kind!r}: unknown embedder (known: {', '.join(embedder_kinds())})"
        )
    return factory(env)


def normalize_rows(matrix: npt.NDArray[np.floating]) -> Vector:
    out = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


# -- the built-in hashed n-gram embedder ------------------------------------------------

_M64 = 0xFFFFFFFFFFFFFFFF
_PRIME = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime: odd, spreads low bits upward
_SEED = np.uint64(0x9E3779B97F4A7C15)
_SALTS = [np.uint64((0x5851F42D4C957F2D * (i + 1)) & _M64) for i in range(5)]
# Bits 56-58 of a mixed hash are replaced by the feature group (buckets use the low bits,
# the sign bit 63), so one ``unique`` dedupes every group at once.
_GROUP_CLEAR = np.uint64(_M64 ^ (7 << 56))
_GROUP_BITS = [np.uint64(g << 56) for g in range(5)]
_SEED_PRIME2 = np.uint64((0x9E3779B97F4A7C15 * 0x100000001B3**2) & _M64)  # seed * prime**2
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_U30, _U27, _U31 = np.uint64(30), np.uint64(27), np.uint64(31)
_PUNCT = re.compile(r"[^\w\s]+")
_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFKC, lower case, punctuation to spaces, whitespace collapsed: what the n-grams
    are taken from (punctuation and spacing edits do not make a prompt new)."""
    text = _PUNCT.sub(" ", unicodedata.normalize("NFKC", text).lower())
    return _WS.sub(" ", text).strip()


def _cap(text: str) -> str:
    if len(text) <= MAX_EMBED_CHARS:
        return text
    half = MAX_EMBED_CHARS // 2
    return text[:half] + " " + text[-half:]


def _mix_into(h: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64 finaliser, in place (array ops wrap modulo 2**64 without warnings)."""
    tmp = h >> _U30
    h ^= tmp
    h *= _MIX1
    np.right_shift(h, _U27, out=tmp)
    h ^= tmp
    h *= _MIX2
    np.right_shift(h, _U31, out=tmp)
    h ^= tmp
    return h


class HashedNgramEmbedder:
    """Built-in embedder ``hashed-ngram-v1``.

    Feature groups and weights: character 3, 4 and 5-grams of the normalised text with its
    spaces removed, padded with one space each side (weights 1.0, 1.0, 1.0), word unigrams
    (0.5) and word bigrams (0.3). Repeated
    features count once (presence, not frequency), so a long repeated boilerplate does
    not drown the rest. Changing any of this requires a new ``name``.
    """

    name = "hashed-ngram-v1"
    # Groups: char 3-grams, 4-grams, 5-grams, word unigrams, word bigrams.
    min_n, max_n = 3, 5
    weights: tuple[float, ...] = (1.0, 1.0, 1.0, 0.5, 0.3)

    def __init__(self, dim: int = 512) -> None:
        if dim < 16 or dim & (dim - 1):
            raise ValueError("hashed-ngram dim must be a power of two >= 16")
        self.dim = dim
        self._mask = np.uint64(dim - 1)
        # (hash >> 56 & 7) * dim as one shift and one mask
        self._group_shift = np.uint64(56 - (dim.bit_length() - 1))
        self._group_mask = np.uint64(7 * dim)

    def embed_one(self, text: str) -> Vector:
        """The vector of one text (all groups hashed together into one buffer: one sort,
        one ``bincount``, about 40 numpy calls, so a short prompt costs tens of
        microseconds). Every step up to ``bincount`` is integer arithmetic, and the
        per-group sums are integers, so any reordering there is exact; the float steps
        after it are kept as they were, so vectors stay bit-identical."""
        norm = normalize_text(_cap(text))
        if not norm:
            return np.zeros(self.dim, dtype=np.float32)
        # Char n-grams ignore spaces ("hash map"/"hashmap", "e-mail"/"email" stay close);
        # the word features keep the word boundaries.
        padded = f" {norm.replace(' ', '')} "
        codes = np.frombuffer(padded.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
        # UTF-8 never puts a 0x20 byte inside a character: splitting the encoded text is
        # splitting the text, and each word's CRC is the same.
        words = norm.encode("utf-8", "surrogatepass").split(b" ")
        size, nwords = codes.size, len(words)
        # ``buf`` holds char 3-, 4-, 5-grams, word unigrams, word bigrams, in that order.
        counts = [max(0, size - n + 1) for n in range(self.min_n, self.max_n + 1)]
        ends = list(itertools.accumulate([*counts, nwords, nwords - 1]))
        bounds = list(itertools.pairwise([0, *ends]))
        buf = np.empty(ends[-1], dtype=np.uint64)
        # h[i] becomes the polynomial hash of codes[i : i + n] (the seed, then per code
        # h * prime + code); the first two steps fold into one constant.
        h = codes[1:] + (codes[:-1] * _PRIME + _SEED_PRIME2)
        for n, (lo, hi) in enumerate(bounds[:3], start=self.min_n):
            if hi == lo:
                break
            h = np.multiply(h[: hi - lo], _PRIME, out=buf[lo:hi])
            h += codes[n - 1 : n - 1 + hi - lo]
        for group, (lo, hi) in enumerate(bounds[:3]):
            buf[lo:hi] ^= _SALTS[group]  # after the loop: each level grows from the last
        uni = buf[ends[2] : ends[3]]
        uni[:] = np.fromiter(map(zlib.crc32, words), np.uint64, nwords)
        if nwords > 1:
            bigrams = buf[ends[3] :]
            np.bitwise_xor(uni[:-1], _SALTS[4], out=bigrams)
            _mix_into(bigrams)
            bigrams *= _PRIME
            bigrams += uni[1:]
        uni ^= _SALTS[3]
        hashes = _mix_into(buf)
        hashes &= _GROUP_CLEAR
        for group, (lo, hi) in enumerate(bounds):
            hashes[lo:hi] |= _GROUP_BITS[group]
        hashes.sort()  # presence, not frequency: drop repeats
        keep = np.empty(hashes.size, dtype=bool)
        keep[0] = True
        np.not_equal(hashes[1:], hashes[:-1], out=keep[1:])
        hashes = hashes[keep]
        groups = len(self.weights)
        # bucket + group * dim, as one mask and one shift (dim is a power of two)
        slots = (hashes & self._mask) | ((hashes >> self._group_shift) & self._group_mask)
        signs = np.where(hashes >> np.uint64(63), -1.0, 1.0)
        per_group = np.bincount(slots.astype(np.intp), weights=signs, minlength=groups * self.dim)
        per_group = per_group.reshape(groups, self.dim)
        # Sums of squared integers: exact in any order, so equal to ``np.linalg.norm``.
        norms = np.sqrt(np.einsum("ij,ij->i", per_group, per_group))
        scale = np.divide(self.weights, norms, out=np.zeros(groups), where=norms > 0)
        out = (scale @ per_group).astype(np.float32)
        total = float(np.dot(out, out))
        if total > 0:
            out /= np.float32(np.sqrt(total))
        return out

    def embed(self, texts: Sequence[str]) -> Vector:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.embed_one(t) for t in texts])

    async def aembed(self, texts: Sequence[str]) -> Vector:
        # Sub-millisecond for ordinary prompts: cheaper inline than a thread hop.
        return self.embed(texts)


def _hashed_factory(env: Mapping[str, str]) -> Embedder:
    dim = int(env.get("SYNTHHOST_SIMILARITY_DIM") or 512)
    return HashedNgramEmbedder(dim)


def _openai_factory(env: Mapping[str, str]) -> Embedder:
    from synthhost_similarity.openai_embedder import OpenAIEmbedder

    return OpenAIEmbedder.from_env(env)


register_embedder("hashed", _hashed_factory)
register_embedder("openai", _openai_factory)
