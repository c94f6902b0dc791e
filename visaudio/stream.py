"""Streaming training data: one loader for the feature store and the per-clip manifest dataset.

Why the order is a pure function of (seed, epoch, position): the data position in a checkpoint
is then one integer, the global sample index ``g`` of the next example (``epoch * N + pos``),
and resuming rebuilds the stream from there, exactly, with any number of loader workers. It also
keeps the old trainer's promise that DDP with the same global batch sees the same examples as one
process: sample ``g`` belongs to step ``g // B`` and to rank ``g % world``, so the ranks of an
epoch read disjoint samples and together read each sample once.

The order of an epoch: the shards in a seeded permutation, their samples in stored order, then a
seeded shuffle inside consecutive blocks of ``block`` samples (the "shuffle buffer": the RAM it
needs is one block of training windows per worker, whatever the dataset size). A source whose
shards hold one clip each (the per-clip manifest dataset) is already fully permuted and gets no
block shuffle, so its order is the earlier trainer's.

DataLoader workers each produce whole blocks (worker w takes blocks w, w + W, ...); the loader
returns them round-robin, i.e. in block order, and ``BatchStream`` cuts them into per-rank
batches.
"""

from __future__ import annotations

import bisect
import json
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visaudio.config import Config
from visaudio.data import DataError, make_item


class StoreDataset(torch.utils.data.Dataset):
    """One split of a feature store with the interface of ``ManifestDataset`` (``item``,
    ``media``, ``clip_ids``) plus the shard view the streaming loader uses."""

    def __init__(self, store: str | Path, split: str, config: Config, augment: bool = False):
        from visaudio.store import StoreReader, find_store

        self.cfg = config
        self.split = split
        self.augment = augment
        self.key_dir = find_store(store, config)
        self.reader = StoreReader(self.key_dir, split)
        self.n_missing = len(self.reader.failed)
        # time rates of the frozen parts' feature keys, so a training window crops them too
        self.rates = json.loads((self.key_dir / "store.json").read_text()).get("rates", {})
        self._starts = np.cumsum([0] + self.reader.shard_sizes).tolist()

    @property
    def shard_sizes(self) -> list[int]:
        return self.reader.shard_sizes

    def __len__(self) -> int:
        return len(self.reader)

    def locate(self, idx: int) -> tuple[int, int]:
        if not 0 <= idx < len(self):
            raise IndexError(idx)
        k = bisect.bisect_right(self._starts, idx) - 1
        return k, idx - self._starts[k]

    @property
    def clip_ids(self) -> list[str]:
        return self.reader.clip_ids

    def media(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.reader.sample(*self.locate(idx))
        return s["audio"], s["frames"]

    def audio_at(self, shard: int, offset: int) -> np.ndarray:
        return self.reader.audio(shard, offset)

    def item_at(self, shard: int, offset: int, rng: np.random.Generator | None) -> dict[str, Any]:
        s = self.reader.sample(shard, offset)
        return make_item(self.cfg, s["audio"], s["frames"], s["meta"], self._starts[shard] + offset, rng, self.augment,
                         s["features"], self.rates)

    def item(self, idx: int, rng: np.random.Generator | None) -> dict[str, Any]:
        return self.item_at(*self.locate(idx), rng)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.item(idx, None)

    def stats_cache(self, codec_key: str) -> Path:
        return self.key_dir / self.split / f"latent_stats-{codec_key}.pt"


class EpochOrder:
    """The (shard, offset) of every position of an epoch (see the module docstring)."""

    def __init__(self, shard_sizes: list[int], seed: int, block: int, shuffle: bool = True):
        self.sizes = list(shard_sizes)
        self.n = sum(self.sizes)
        self.seed, self.block, self.shuffle = seed, max(1, int(block)), shuffle
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1], self._cache[2]
        ns = len(self.sizes)
        perm = np.random.default_rng([self.seed, epoch]).permutation(ns) if self.shuffle else np.arange(ns)
        shard = np.concatenate([np.full(self.sizes[k], k, np.int64) for k in perm]) if ns else np.zeros(0, np.int64)
        off = np.concatenate([np.arange(self.sizes[k], dtype=np.int64) for k in perm]) if ns else np.zeros(0, np.int64)
        if self.shuffle and max(self.sizes, default=1) > 1:
            for j in range(0, self.n, self.block):
                p = np.random.default_rng([self.seed, epoch, j, 1]).permutation(min(self.block, self.n - j)) + j
                shard[j:j + len(p)], off[j:j + len(p)] = shard[p], off[p]
        self._cache = (epoch, shard, off)
        return shard, off

    def at(self, g: int) -> tuple[int, int, int, int]:
        """(epoch, pos, shard, offset) of global sample index g."""
        e, p = divmod(int(g), self.n)
        shard, off = self.order(e)
        return e, p, int(shard[p]), int(off[p])


class StreamingDataset(torch.utils.data.IterableDataset):
    """Endless per-rank stream of training examples starting at global sample index ``start``;
    yields lists (one block's examples for this rank, each with its index ``g``)."""

    def __init__(self, source, seed: int, rank: int = 0, world: int = 1, start: int = 0, block: int = 256,
                 shuffle: bool = True):
        self.source = source
        self.seed, self.rank, self.world, self.start = seed, rank, world, int(start)
        self.order = EpochOrder(source.shard_sizes, seed, block, shuffle)
        self.block = self.order.block

    def blocks(self) -> Iterator[tuple[int, int, int]]:
        """(epoch, lo, hi) position ranges of the stream's blocks from ``start`` on."""
        n, b = self.order.n, self.block
        e, p = divmod(self.start, n)
        lo = p
        while True:
            hi = min(n, (lo // b + 1) * b)
            yield e, lo, hi
            lo = hi
            if lo >= n:
                e, lo = e + 1, 0

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        wi = torch.utils.data.get_worker_info()
        w, nw = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        n = self.order.n
        for s, (e, lo, hi) in enumerate(self.blocks()):
            if s % nw != w:
                continue
            shard, off = self.order.order(e)
            out = []
            for p in range(lo, hi):
                g = e * n + p
                if g % self.world != self.rank:
                    continue
                it = self.source.item_at(int(shard[p]), int(off[p]), np.random.default_rng([self.seed, e, p]))
                it["g"] = g
                out.append(it)
            yield out


def _identity(x):
    return x


class BatchStream:
    """Per-rank batches from a StreamingDataset through a DataLoader with ``workers`` processes."""

    def __init__(self, ds: StreamingDataset, workers: int = 0, prefetch: int = 2):
        self.ds = ds
        kw: dict[str, Any] = {"prefetch_factor": prefetch, "persistent_workers": False} if workers > 0 else {}
        self.loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=_identity, **kw)
        self._it = iter(self.loader)
        self._buf: deque = deque()
        g = ds.start
        self.expect = g + (ds.rank - g) % ds.world  # first global index this rank owns

    def take(self, k: int) -> list[dict[str, Any]]:
        while len(self._buf) < k:
            try:
                self._buf.extend(next(self._it))
            except DataError:
                raise
            except Exception as e:  # a worker's error arrives wrapped with its traceback: keep one line
                lines = [ln for ln in str(e).splitlines() if ln.strip()]
                last = lines[-1] if lines else type(e).__name__
                if "StoreError" in last or "DataError" in last:
                    raise DataError(last.split(": ", 1)[-1]) from None
                raise
        out = [self._buf.popleft() for _ in range(k)]
        for it in out:  # the order promise, checked: this rank's global indices, consecutive
            if it["g"] != self.expect:
                raise RuntimeError(f"data stream out of order: got sample {it['g']}, expected {self.expect}")
            self.expect += self.ds.world
        return out

    def close(self) -> None:
        del self._it
