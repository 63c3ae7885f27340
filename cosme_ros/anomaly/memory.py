"""MulMem — the multi-layer prototype memory of CosMe (Cen et al., docs/ARCHITECTURE.md).

For each memory layer l (default C4, C5, LH) a sub-branch S^(l) holds K unit prototypes. Scoring:

- Eq. 3: ``γ^(l)_ij = 1 − max_{p∈S^(l)} cos(p, f^(l)_ij)``  → :func:`gamma_layer`;
- Eq. 4: ``Γ_ij = Π_{l∈L} γ^(l)_ij``, every γ^(l) bilinearly upsampled to a common size first
  → :func:`gamma`.

Building (offline, streaming over training batches) → :class:`MulMemBuilder`:

- Algorithm 1 (initialisation): greedy τ-diverse sampling of random feature vectors;
- Algorithm 2 (learning): nearest-prototype assignment and momentum update.

Scoring follows docs/ARCHITECTURE.md: prototypes are pre-normalised and ``max_k ⟨f, p_k⟩ / ‖f‖`` is one
matmul per chunk of prototypes followed by a single division by the feature norm, so a normalised
copy of the features is never made and the (pixels × K) similarity is never whole in memory.
"""

from __future__ import annotations

import hashlib
import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import distributed
from ..nets.taps import Taps

__all__ = [
    "max_cosine",
    "naive_max_cosine",
    "gamma_layer",
    "gamma",
    "momentum_update",
    "MulMemBuilder",
]

DEFAULT_CHUNK_BYTES = 64 * 2**20


# --------------------------------------------------------------------------------------------
# Scoring: Eq. 3 and Eq. 4
# --------------------------------------------------------------------------------------------


def _check_shapes(features: Tensor, prototypes: Tensor) -> None:
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, H, W), got shape {tuple(features.shape)}")
    if prototypes.dim() != 2:
        raise ValueError(f"prototypes must be (K, C), got shape {tuple(prototypes.shape)}")
    if prototypes.shape[1] != features.shape[1]:
        raise ValueError(
            f"prototypes have {prototypes.shape[1]} channels but features have {features.shape[1]}"
        )
    if prototypes.shape[0] == 0:
        raise ValueError("the memory has no prototypes (K = 0)")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got {features.dtype}")


#: CPU block of the similarity: pixels × prototypes products of about this size stay in the
#: core's cache between the GEMM that writes them and the max that reads them. Against 64 MiB
#: chunks of K (the previous layout), paired runs on a Zen 5 (1 MiB L2 per core), 1 and 2
#: threads: 5.7–7.8× for ESPNetv2's 10-channel LH (the GEMM is output-bound there), 1.3–1.4×
#: for R101's 256-channel LH at K = 2048, the same (±4 %) for R101's C5.
CPU_BLOCK_BYTES = 2 * 2**20
_MIN_BLOCK_ROWS = 256


def _cpu_blocks(k: int, budget: int) -> Tuple[int, int]:
    """(pixel rows, prototypes) per CPU block so that rows × kc × 4 bytes ≤ ``budget``: all K
    prototypes at once when that leaves at least 256 rows, else chunks of K."""
    if 4 * k * _MIN_BLOCK_ROWS <= budget:
        return budget // (4 * k), k
    kc = min(k, max(1, budget // (4 * _MIN_BLOCK_ROWS)))
    return max(1, budget // (4 * kc)), kc


def _max_dot(
    features: Tensor, prototypes: Tensor, chunk_bytes: int, with_index: bool
) -> Tuple[Tensor, Optional[Tensor], Tensor]:
    """``max_k ⟨f, p_k⟩`` (and its argmax) and ``‖f‖`` per pixel, all (B, H·W), fp32.

    The fp32 product is never larger than ``chunk_bytes``: on the CPU it is computed in blocks
    of pixel rows × prototypes of at most :data:`CPU_BLOCK_BYTES` (cache-resident); on other
    devices in chunks of K covering all pixels (few, large kernels).
    """
    _check_shapes(features, prototypes)
    b, c, h, w = features.shape
    k = prototypes.shape[0]
    n = h * w
    # (B, H·W, C) as a view (channels-first or channels-last alike). Only a dtype cast is ever
    # copied: bf16/fp16 products would round every cosine to ~3 significant digits, so the
    # products and the norm are taken in fp32. No normalised copy: the norm divides the max once.
    f = features.flatten(2).transpose(1, 2)
    if f.dtype != torch.float32:
        f = f.float()
    p = prototypes.to(device=f.device, dtype=torch.float32)
    norm = torch.linalg.vector_norm(f, dim=2)

    # Pixels-major product: the max then reduces the contiguous last dimension (measured ~1.7×
    # faster on CPU than a (K, H·W) layout for the 128×256 LH tap).
    if f.device.type == "cpu":
        rows, kc = _cpu_blocks(k, max(1, min(int(chunk_bytes), CPU_BLOCK_BYTES)))
    else:
        rows, kc = n, max(1, min(k, int(chunk_bytes) // max(1, n * 4)))
    rows = min(rows, n)
    p_t = [p[k0 : k0 + kc].T for k0 in range(0, k, kc)]  # (C, kc) views; BLAS reads them as is
    best = torch.empty((b, n), dtype=torch.float32, device=f.device)
    best_idx = torch.empty((b, n), dtype=torch.int64, device=f.device) if with_index else None
    for i in range(b):
        for r0 in range(0, n, rows):
            fr = f[i, r0 : r0 + rows]
            out = best[i, r0 : r0 + rows]
            out_idx = best_idx[i, r0 : r0 + rows] if best_idx is not None else None
            for j, pj in enumerate(p_t):
                sim = torch.mm(fr, pj)  # (rows, kc)
                if out_idx is not None:
                    m, a = sim.max(dim=1)
                    if j == 0:
                        out.copy_(m)
                        out_idx.copy_(a)
                    else:
                        # strict ">" keeps the earliest prototype on ties, like one argmax over K
                        better = m > out
                        out_idx.copy_(torch.where(better, a + j * kc, out_idx))
                        out.copy_(torch.where(better, m, out))
                elif j == 0:
                    torch.amax(sim, dim=1, out=out)
                else:
                    torch.maximum(out, sim.amax(dim=1), out=out)
                del sim
    return best, best_idx, norm


def max_cosine(
    features: Tensor, prototypes: Tensor, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Tensor:
    """``max_k ⟨f_ij, p_k⟩ / ‖f_ij‖`` — the max cosine similarity of Eq. 3, memory-bounded.

    Args:
        features: (B, C, H, W), any float dtype (bf16/fp16 are computed in fp32).
        prototypes: (K, C), **already unit-normalised**.
        chunk_bytes: bound on the fp32 similarity intermediate (at least one prototype
            per chunk is always taken).

    Returns:
        (B, H, W) fp32. A zero feature vector has no direction and gets cosine 0 (not NaN).
    """
    b, _, h, w = features.shape
    best, _, norm = _max_dot(features, prototypes, chunk_bytes, with_index=False)
    # ⟨f, p⟩ = 0 when f = 0, so the where() only guards the 0/0.
    out = torch.where(norm > 0, best / norm.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    return out.view(b, h, w)


def naive_max_cosine(features: Tensor, prototypes: Tensor) -> Tensor:
    """Reference form of :func:`max_cosine`: normalise features, full (B, H·W, K) similarity, max.

    Memory-hungry on purpose (it is the straightforward formula); used by tests and benchmarks.
    """
    _check_shapes(features, prototypes)
    b, c, h, w = features.shape
    f = F.normalize(features.float().flatten(2).transpose(1, 2), dim=2)  # zero → zero
    sim = f @ prototypes.to(device=f.device, dtype=torch.float32).T
    return sim.max(dim=2).values.reshape(b, h, w)


def gamma_layer(features: Tensor, prototypes: Tensor, **kw) -> Tensor:
    """Eq. 3: ``γ^(l)_ij = 1 − max_{p∈S^(l)} cos(p, f^(l)_ij)`` → (B, H, W) fp32 in [0, 2].

    Keyword arguments go to :func:`max_cosine` (``chunk_bytes``).
    """
    return 1.0 - max_cosine(features, prototypes, **kw)


def gamma(
    taps: Taps,
    memory: Mapping[str, Tensor],
    size: Optional[Tuple[int, int]] = None,
    **kw,
) -> Tensor:
    """Eq. 4: ``Γ_ij = Π_{l∈L} γ^(l)_ij`` over the memory layers L = ``memory.keys()``.

    Each γ^(l) is upsampled bilinearly (``align_corners=False``) to ``size`` before the product;
    ``size`` defaults to the largest spatial size (by H·W) among the memory layers' taps.
    Returns (B, H, W) fp32. Keyword arguments go to :func:`max_cosine`.
    """
    if not memory:
        raise ValueError("the memory has no layers")
    missing = [name for name in memory if name not in taps]
    if missing:
        raise KeyError(f"memory layer(s) {missing} not among the taps {sorted(taps)}")
    if size is None:
        size = max((tuple(taps[name].shape[-2:]) for name in memory), key=lambda s: s[0] * s[1])
    size = (int(size[0]), int(size[1]))
    out: Optional[Tensor] = None
    for name, protos in memory.items():
        g = gamma_layer(taps[name], protos, **kw)
        if tuple(g.shape[-2:]) != size:
            g = F.interpolate(g.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
            g = g.squeeze(1)
        out = g if out is None else out.mul_(g)
    assert out is not None
    return out


# --------------------------------------------------------------------------------------------
# Building: Algorithms 1 and 2
# --------------------------------------------------------------------------------------------


def momentum_update(
    prototypes: Tensor, sums: Tensor, counts: Tensor, momentum: float, *, renormalise: bool = True
) -> Tensor:
    """Algorithm 2's update: ``p ← m·p + (1−m)·mean(assigned)``; prototypes with count 0 unchanged.

    Args:
        prototypes: (K, C) unit fp32.
        sums: (K, C) sum of the (unit-normalised) features assigned to each prototype.
        counts: (K,) number of features assigned.
        renormalise: project the updated prototypes back onto the unit sphere (the builder does;
            ``False`` exposes the raw convex combination for tests).

    Returns a new (K, C) fp32 tensor; rows with ``counts == 0`` are bit-identical to the input.
    """
    out = prototypes.clone()
    hit = counts > 0
    if bool(hit.any()):
        mean = sums[hit] / counts[hit].to(sums.dtype).unsqueeze(1)
        upd = momentum * prototypes[hit].to(mean.dtype) + (1.0 - momentum) * mean
        if renormalise:
            upd = F.normalize(upd, dim=1)
        out[hit] = upd.to(out.dtype)
    return out


def _seed_for(*parts) -> int:
    """A 63-bit seed from a tuple — stable across processes and Python runs (unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class MulMemBuilder:
    """Streaming builder of the MulMem prototypes: Algorithm 1, then Algorithm 2.

    Usage::

        b = MulMemBuilder(["c4", "c5", "lh"], k=2048)
        for taps in batches:                # Algorithm 1
            if b.init_step(taps):
                break
        else:
            b.finish_init()                 # data ran out: keep the prototypes found so far
        for epoch ...:
            for taps in batches:
                b.learn_step(taps)          # Algorithm 2
        memory = b.prototypes()             # {layer: (K, C) unit fp32}

    **Algorithm 1 (initialisation)**, streaming form. Each :meth:`init_step` draws, for every image
    of the batch and every layer still short of K, ``candidates_per_image`` distinct random pixels
    (fewer if the map is smaller). Their feature vectors are unit-normalised, zero/non-finite ones
    dropped, the candidates of all images are put in a random order, and each in turn is added iff
    its max cosine to every prototype so far (including those added earlier in the same step) is
    < τ — exactly the paper's sequential test; the layer stops at K. The pixels of image g of step
    t in layer l come from a generator seeded by (seed, t, g, l) and the order from one seeded by
    (seed, t, l), so the result depends on the data and the seed only.

    **Algorithm 2 (learning)**, :meth:`learn_step`: every feature vector of the batch (all pixels;
    zero vectors have no direction and are skipped) is assigned to its most similar prototype by
    cosine, then ``p ← m·p + (1−m)·mean(assigned)`` and p is renormalised; unassigned prototypes
    are unchanged. *The mean is over unit-normalised features*: the prototypes are unit vectors,
    assignment and scoring are cosine-based, so only directions matter. A raw-feature mean would
    let high-norm pixels dominate and, with prototypes of norm 1 against feature norms of 10–100,
    the momentum would no longer mean "1 − m of the way" towards the assigned directions. The
    renormalisation keeps the prototypes on the unit sphere, which :func:`max_cosine` assumes.
    Sums are accumulated in float64. *This departs from the paper's text*, which averages the raw
    features; an outside audit re-implemented the raw form and measured it equivalent on the demo
    bundle's test split (MulMem AP 24.95 with raw means vs 24.89 here).

    **Distributed** (``torch.distributed`` initialised): every method is collective — all ranks
    must call it the same number of times. The equivalence, for both algorithms, is: *N processes,
    rank r given batch b_r at step t, build the same prototypes as one process given
    ``cat(b_0, …, b_{N−1})`` (batch dimension, rank order) at step t.* For Algorithm 1 the image
    index g is global (rank r's images are numbered after those of ranks < r), the candidates are
    all-gathered in rank order and every rank runs the identical τ test on the identical
    concatenation. For Algorithm 2 the per-prototype sums and counts are all-reduced (SUM) before
    the update, so every rank applies the same update (equal to one process up to float64
    summation order). Batches may differ in size between ranks.

    Deterministic for a given seed and data. The mutating methods run under
    ``torch.inference_mode`` (callers may or may not be in it); :meth:`prototypes` and
    :meth:`state_dict` return ordinary tensors.
    """

    def __init__(
        self,
        layers: Sequence[str],
        k: int,
        tau: float = 0.85,
        momentum: float = 0.99,
        seed: int = 0,
        candidates_per_image: int = 64,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        layers = tuple(layers)
        if not layers:
            raise ValueError("MulMem needs at least one layer")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layer list {list(layers)} names a layer twice")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not -1.0 < tau <= 1.0:
            raise ValueError(f"tau is a cosine threshold in (-1, 1], got {tau}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        if candidates_per_image < 1:
            raise ValueError(f"candidates_per_image must be >= 1, got {candidates_per_image}")
        self.layers = layers
        self.k = int(k)
        self.tau = float(tau)
        self.momentum = float(momentum)
        self.seed = int(seed)
        self.candidates_per_image = int(candidates_per_image)
        self.chunk_bytes = int(chunk_bytes)
        # (K, C) buffers allocated on first sight of a layer (C is unknown before); rows past
        # _count[l] are unused.
        self._protos: Dict[str, Optional[Tensor]] = {l: None for l in layers}
        self._count: Dict[str, int] = {l: 0 for l in layers}
        self._usage: Dict[str, Optional[Tensor]] = {l: None for l in layers}
        self._init_steps = 0
        self._learn_steps = 0
        self._init_finished = False

    # ---- queries ---------------------------------------------------------------------------

    @property
    def init_done(self) -> bool:
        """True once every layer has K prototypes."""
        return all(self._count[l] >= self.k for l in self.layers)

    @property
    def init_finished(self) -> bool:
        """True once initialisation is over (K reached, or :meth:`finish_init` called)."""
        return self._init_finished or self.init_done

    @property
    def init_steps(self) -> int:
        return self._init_steps

    @property
    def learn_steps(self) -> int:
        return self._learn_steps

    def counts(self) -> Dict[str, int]:
        """Number of prototypes per layer (K for a complete initialisation)."""
        return dict(self._count)

    def shortfall(self) -> Dict[str, int]:
        """Prototypes missing per layer (``K − count``); non-zero only if the data ran out."""
        return {l: self.k - self._count[l] for l in self.layers}

    def usage(self) -> Dict[str, Tensor]:
        """Per layer, (count,) int64: features assigned to each prototype over all learn steps."""
        return {
            l: (u.clone() if u is not None else torch.zeros(self._count[l], dtype=torch.int64))
            for l, u in self._usage.items()
        }

    def prototypes(self) -> Dict[str, Tensor]:
        """{layer: (count, C) unit fp32}; count = K unless initialisation ended short."""
        out = {}
        for l in self.layers:
            buf = self._protos[l]
            if buf is None:
                raise RuntimeError(f"layer {l!r} has no prototypes yet (no init_step has run)")
            out[l] = buf[: self._count[l]].clone()
        return out

    # ---- Algorithm 1 -----------------------------------------------------------------------

    def _candidates(self, feats: Tensor, step: int, layer_idx: int, first_image: int) -> Tensor:
        """Unit fp32 (n, C) candidate vectors of one layer of one local batch, image order."""
        b, c, h, w = feats.shape
        hw = h * w
        m = min(self.candidates_per_image, hw)
        flat = feats.flatten(2)  # (B, C, H·W) view
        out = []
        for i in range(b):
            g = torch.Generator().manual_seed(
                _seed_for(self.seed, step, first_image + i, layer_idx)
            )
            pix = torch.randperm(hw, generator=g)[:m].to(flat.device)
            out.append(flat[i].index_select(1, pix).T)
        cand = torch.cat(out).float() if out else feats.new_zeros((0, c), dtype=torch.float32)
        norm = torch.linalg.vector_norm(cand, dim=1)
        keep = (norm > 0) & torch.isfinite(norm)
        return cand[keep] / norm[keep].unsqueeze(1)

    def _greedy_add(self, layer: str, cand: Tensor) -> None:
        """The τ test of Algorithm 1 over ``cand`` (unit rows) in order, stopping at K."""
        buf = self._protos[layer]
        assert buf is not None
        n = self._count[layer]
        if n > 0 and cand.shape[0] > 0:
            far = (cand @ buf[:n].T).amax(dim=1) < self.tau
            cand = cand[far]
        if cand.shape[0] == 0:
            return
        # Candidates accepted in this step must also be < τ from each other, in order: greedy
        # over their Gram matrix (a row blocks every later candidate within τ of it).
        close = (cand @ cand.T >= self.tau).cpu().numpy()
        blocked = np.zeros(cand.shape[0], dtype=bool)
        accepted = []
        room = self.k - n
        for i in range(cand.shape[0]):
            if blocked[i]:
                continue
            accepted.append(i)
            if len(accepted) == room:
                break
            blocked |= close[i]
        idx = torch.tensor(accepted, dtype=torch.long, device=cand.device)
        buf[n : n + len(accepted)] = cand.index_select(0, idx)
        self._count[layer] = n + len(accepted)

    @torch.inference_mode()
    def init_step(self, taps: Taps) -> bool:
        """Algorithm 1 on one batch; returns :attr:`init_done`. Collective when distributed."""
        if self.init_finished:
            return self.init_done
        missing = [l for l in self.layers if l not in taps]
        if missing:
            raise KeyError(f"memory layer(s) {missing} not among the taps {sorted(taps)}")
        step = self._init_steps
        local_b = int(taps[self.layers[0]].shape[0])
        dist = distributed.active()
        first_image = 0
        if dist:
            sizes = [s[0] for s in distributed.all_gather_ints([local_b])]
            first_image = sum(sizes[: torch.distributed.get_rank()])
        for li, layer in enumerate(self.layers):
            feats = taps[layer]
            if feats.dim() != 4 or feats.shape[0] != local_b:
                raise ValueError(
                    f"tap {layer!r} has shape {tuple(feats.shape)}; expected (B={local_b}, C, H, W)"
                )
            if self._protos[layer] is None:
                self._protos[layer] = torch.zeros(
                    (self.k, feats.shape[1]), dtype=torch.float32, device=feats.device
                )
            elif self._protos[layer].shape[1] != feats.shape[1]:
                raise ValueError(
                    f"tap {layer!r} has {feats.shape[1]} channels, the memory "
                    f"{self._protos[layer].shape[1]}"
                )
            if self._count[layer] >= self.k:
                continue  # identical on every rank: the state is replicated
            cand = self._candidates(feats, step, li, first_image)
            if dist:
                cand = distributed.all_gather_rows(cand)
            # "a random vector of a random image": shuffle the step's candidates across images
            g = torch.Generator().manual_seed(_seed_for(self.seed, step, li, "order"))
            order = torch.randperm(cand.shape[0], generator=g).to(cand.device)
            self._greedy_add(layer, cand.index_select(0, order))
        self._init_steps += 1
        return self.init_done

    def finish_init(self) -> Dict[str, int]:
        """End Algorithm 1 with what was found (the data ran out). Returns the count per layer.

        Compare with K (or read :meth:`shortfall`) to report a short memory. A layer with no
        prototype at all is an error: it could never score anything.
        """
        empty = [l for l in self.layers if self._count[l] == 0]
        if empty:
            raise RuntimeError(f"initialisation found no prototype for layer(s) {empty}")
        self._init_finished = True
        return self.counts()

    # ---- Algorithm 2 -----------------------------------------------------------------------

    def _assign_sums(self, feats: Tensor, protos: Tensor) -> Tuple[Tensor, Tensor]:
        """Float64 sums of unit features and int64 counts per nearest prototype, one layer."""
        k, c = protos.shape
        sums = torch.zeros((k, c), dtype=torch.float64, device=protos.device)
        counts = torch.zeros(k, dtype=torch.int64, device=protos.device)
        # one image at a time bounds the argmax vector and the float64 rows
        for i in range(feats.shape[0]):
            fi = feats[i : i + 1]
            _, idx, norm = _max_dot(fi, protos, self.chunk_bytes, with_index=True)
            assert idx is not None
            idx, norm = idx[0], norm[0]
            flat = fi[0].flatten(1)  # (C, H·W) view
            hw = flat.shape[1]
            rows = max(1, self.chunk_bytes // max(1, c * 8))
            for p0 in range(0, hw, rows):
                nrm = norm[p0 : p0 + rows]
                ok = (nrm > 0) & torch.isfinite(nrm)
                x = flat[:, p0 : p0 + rows].T[ok].double() / nrm[ok].double().unsqueeze(1)
                a = idx[p0 : p0 + rows][ok]
                sums.index_add_(0, a, x)
                counts += torch.bincount(a, minlength=k)
        return sums, counts

    @torch.inference_mode()
    def learn_step(self, taps: Taps) -> None:
        """Algorithm 2 on one batch (all pixels). Collective when distributed."""
        if not self.init_finished:
            raise RuntimeError(
                "Algorithm 2 needs the initial prototypes: call init_step until it returns True, "
                "or finish_init() if the data ran out"
            )
        missing = [l for l in self.layers if l not in taps]
        if missing:
            raise KeyError(f"memory layer(s) {missing} not among the taps {sorted(taps)}")
        dist = distributed.active()
        for layer in self.layers:
            buf = self._protos[layer]
            assert buf is not None
            n = self._count[layer]
            protos = buf[:n]
            sums, counts = self._assign_sums(taps[layer].to(buf.device), protos)
            if dist:
                distributed.all_reduce_sum_(sums)
                distributed.all_reduce_sum_(counts)
            buf[:n] = momentum_update(protos, sums, counts, self.momentum)
            usage = self._usage[layer]
            self._usage[layer] = counts.cpu() if usage is None else usage + counts.cpu()
        self._learn_steps += 1

    # ---- checkpointing ---------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Tensor]:
        """All state as CPU tensors (safetensors-compatible), for resuming an interrupted build."""
        sd: Dict[str, Tensor] = {
            "k": torch.tensor(self.k, dtype=torch.int64),
            "tau": torch.tensor(self.tau, dtype=torch.float64),
            "momentum": torch.tensor(self.momentum, dtype=torch.float64),
            "seed": torch.tensor(self.seed, dtype=torch.int64),
            "candidates_per_image": torch.tensor(self.candidates_per_image, dtype=torch.int64),
            "init_steps": torch.tensor(self._init_steps, dtype=torch.int64),
            "learn_steps": torch.tensor(self._learn_steps, dtype=torch.int64),
            "init_finished": torch.tensor(int(self._init_finished), dtype=torch.int64),
        }
        usage = self.usage()
        for l in self.layers:
            buf = self._protos[l]
            if buf is not None:
                sd[f"prototypes.{l}"] = buf[: self._count[l]].detach().cpu().clone()
                sd[f"usage.{l}"] = usage[l]
        return sd

    @torch.inference_mode()
    def load_state_dict(self, sd: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state_dict`. The configuration must match (ValueError naming the key)."""
        for key, mine in (
            ("k", self.k),
            ("tau", self.tau),
            ("momentum", self.momentum),
            ("seed", self.seed),
            ("candidates_per_image", self.candidates_per_image),
        ):
            if key not in sd:
                raise ValueError(f"builder state lacks {key!r}")
            theirs = sd[key].item()
            if not math.isclose(float(theirs), float(mine), rel_tol=0, abs_tol=1e-12):
                raise ValueError(f"builder state has {key}={theirs}, this builder {mine}")
        extra = sorted(
            k.split(".", 1)[1]
            for k in sd
            if k.startswith("prototypes.") and k.split(".", 1)[1] not in self.layers
        )
        if extra:
            raise ValueError(
                f"builder state has prototypes for layer(s) {extra} not in {self.layers}"
            )
        protos: Dict[str, Optional[Tensor]] = {}
        count: Dict[str, int] = {}
        usage: Dict[str, Optional[Tensor]] = {}
        for l in self.layers:
            key = f"prototypes.{l}"
            dev = self._protos[l].device if self._protos[l] is not None else torch.device("cpu")
            if key not in sd:
                protos[l], count[l], usage[l] = None, 0, None
                continue
            p = sd[key]
            if p.dim() != 2 or p.shape[0] > self.k or not p.is_floating_point():
                raise ValueError(f"{key!r} must be (n <= {self.k}, C) float, got {tuple(p.shape)}")
            buf = torch.zeros((self.k, p.shape[1]), dtype=torch.float32, device=dev)
            buf[: p.shape[0]] = p.to(device=dev, dtype=torch.float32)
            protos[l], count[l] = buf, int(p.shape[0])
            u = sd.get(f"usage.{l}")
            if u is not None and tuple(u.shape) != (p.shape[0],):
                raise ValueError(
                    f"'usage.{l}' must have shape ({p.shape[0]},), got {tuple(u.shape)}"
                )
            usage[l] = u.to(torch.int64).clone() if u is not None else None
        self._protos, self._count, self._usage = protos, count, usage
        self._init_steps = int(sd["init_steps"].item()) if "init_steps" in sd else 0
        self._learn_steps = int(sd["learn_steps"].item()) if "learn_steps" in sd else 0
        self._init_finished = bool(sd["init_finished"].item()) if "init_finished" in sd else False
