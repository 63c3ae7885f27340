"""MulMem: Eq. 3, Eq. 4, chunked max-cosine, Algorithms 1 and 2, determinism, 2-process build."""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from cosme_ros.anomaly.memory import (
    MulMemBuilder,
    gamma,
    gamma_layer,
    max_cosine,
    momentum_update,
    naive_max_cosine,
)


def _fmap(*pixels, h, w):
    """(1, C, h, w) map from pixel vectors in row-major order."""
    t = torch.tensor(pixels, dtype=torch.float32)  # (h*w, C)
    return t.T.reshape(1, -1, h, w)


# ---- Eq. 3 -------------------------------------------------------------------------------------


def test_eq3_hand_2d_and_zero_vector():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f = _fmap([1.0, 1.0], [3.0, 0.0], [0.0, 0.0], [-1.0, -1.0], h=1, w=4)
    cos = max_cosine(f, protos)
    expect = torch.tensor([[[1 / math.sqrt(2), 1.0, 0.0, -1 / math.sqrt(2)]]])
    assert cos.dtype == torch.float32 and cos.shape == (1, 1, 4)
    torch.testing.assert_close(cos, expect, atol=1e-6, rtol=0)
    torch.testing.assert_close(gamma_layer(f, protos), 1 - expect, atol=1e-6, rtol=0)
    assert not torch.isnan(cos).any()


def test_eq3_hand_3d():
    protos = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    f = _fmap([1.0, 2.0, 2.0], [0.0, 0.0, 5.0], h=2, w=1)  # |f| = 3, best dot 2; orthogonal
    torch.testing.assert_close(
        gamma_layer(f, protos), torch.tensor([[[1 - 2 / 3], [1.0]]]), atol=1e-6, rtol=0
    )


# ---- Eq. 4 -------------------------------------------------------------------------------------


def test_eq4_two_layers_with_upsampling():
    p = torch.tensor([[1.0, 0.0]])
    # layer a, 1×2: γ = [0, 1]; bilinear (align_corners=False) to 2×4 gives [0, .25, .75, 1] rows
    a = _fmap([1.0, 0.0], [0.0, 1.0], h=1, w=2)
    # layer b, 2×4: γ = 1 − cos
    r = 1 / math.sqrt(2)
    b = _fmap([1, 1], [-1, 0], [0, 2], [1, 0], [2, 0], [1, -1], [0, -1], [-3, 0], h=2, w=4)
    gb = torch.tensor([[1 - r, 2, 1, 0], [0, 1 - r, 1, 2]])
    ga_up = torch.tensor([[0, 0.25, 0.75, 1.0]] * 2)
    out = gamma({"a": a, "b": b, "o": torch.zeros(1, 3, 9, 9)}, {"a": p, "b": p})
    assert out.shape == (1, 2, 4) and out.dtype == torch.float32  # size of the largest memory tap
    torch.testing.assert_close(out[0], ga_up * gb, atol=1e-6, rtol=0)
    # explicit size: both layers upsampled; a single layer is just its γ at that size
    out2 = gamma({"a": a}, {"a": p}, size=(2, 4))
    torch.testing.assert_close(out2[0], ga_up, atol=1e-6, rtol=0)
    with pytest.raises(KeyError):
        gamma({"a": a}, {"a": p, "b": p})


# ---- chunked max-cosine vs the naive reference -----------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_max_cosine_matches_naive_many_chunks(dtype, channels_last):
    g = torch.Generator().manual_seed(1)
    f = torch.randn(2, 16, 5, 7, generator=g).to(dtype)
    f[0, :, 2, 3] = 0  # a zero vector
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    protos = F.normalize(torch.randn(37, 16, generator=g), dim=1)
    ref = naive_max_cosine(f.float(), protos)  # the same bf16-rounded values, in fp32
    # 2·35·4 bytes per prototype: 300 bytes → 1 prototype per chunk (37 chunks); 1000 → 3
    for cb in (1, 300, 1000, 64 * 2**20):
        out = max_cosine(f, protos, chunk_bytes=cb)
        assert out.dtype == torch.float32 and out.shape == (2, 5, 7)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert out[0, 2, 3] == 0


def test_shape_errors():
    with pytest.raises(ValueError):
        max_cosine(torch.randn(1, 3, 2, 2), torch.randn(4, 5))
    with pytest.raises(ValueError):
        max_cosine(torch.randn(1, 3, 2, 2), torch.randn(0, 3))


# ---- Algorithm 1 -------------------------------------------------------------------------------


def _batches(n_steps, sizes, shapes, seed):
    """Per step, per rank: taps dict. ``shapes``: {layer: (C, H, W)}."""
    g = torch.Generator().manual_seed(seed)
    return [
        [{l: torch.randn(b, *s, generator=g) for l, s in shapes.items()} for b in sizes]
        for _ in range(n_steps)
    ]


def _cat(taps_list):
    return {l: torch.cat([t[l] for t in taps_list]) for l in taps_list[0]}


SHAPES = {"c5": (12, 3, 4), "lh": (8, 6, 8)}


def test_init_diverse_and_stops_at_k():
    b = MulMemBuilder(["c5", "lh"], k=25, tau=0.5, seed=3, candidates_per_image=8)
    done = False
    for (taps,) in _batches(20, [3], SHAPES, seed=0):
        done = b.init_step(taps)
        if done:
            break
    assert done and b.init_done and b.counts() == {"c5": 25, "lh": 25}
    for layer, p in b.prototypes().items():
        assert p.shape == (25, SHAPES[layer][0]) and p.dtype == torch.float32
        torch.testing.assert_close(p.norm(dim=1), torch.ones(25))
        cos = p @ p.T
        off = cos[~torch.eye(25, dtype=torch.bool)]
        assert off.max() < 0.5, layer
    # further steps consume nothing
    before = b.prototypes()
    assert b.init_step(_batches(1, [3], SHAPES, seed=9)[0][0])
    assert all(torch.equal(before[l], b.prototypes()[l]) for l in before)


def test_init_rejects_close_vectors_and_reports_shortfall():
    # three tight clusters: at τ = 0.85 only one prototype per cluster can enter
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4)[:3] * 5
    b = MulMemBuilder(["c4"], k=10, tau=0.85, seed=0, candidates_per_image=16)
    for _ in range(4):
        lab = torch.randint(0, 3, (2, 4, 4), generator=g)
        x = centres[lab] + 0.05 * torch.randn(2, 4, 4, 4, generator=g)  # (B, H, W, C)
        assert not b.init_step({"c4": x.permute(0, 3, 1, 2)})
    assert b.counts()["c4"] == 3
    assert b.finish_init() == {"c4": 3} and b.shortfall() == {"c4": 7}
    assert b.init_finished and not b.init_done
    p = b.prototypes()["c4"]
    assert (p @ p.T)[~torch.eye(3, dtype=torch.bool)].max() < 0.85


def test_finish_init_with_nothing_is_an_error():
    b = MulMemBuilder(["c4"], k=4)
    b.init_step({"c4": torch.zeros(1, 3, 2, 2)})  # zero vectors are never candidates
    with pytest.raises(RuntimeError):
        b.finish_init()


# ---- Algorithm 2 -------------------------------------------------------------------------------


def _builder_with(protos, momentum):
    b = MulMemBuilder(["x"], k=protos.shape[0], momentum=momentum)
    sd = b.state_dict()
    sd["prototypes.x"] = protos
    sd["init_finished"] = torch.tensor(1)
    b.load_state_dict(sd)
    return b


def test_momentum_update_exact_before_normalisation():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    sums = torch.tensor([[0.0, 2.0], [3.0, 3.0], [9.0, 9.0]], dtype=torch.float64)
    counts = torch.tensor([2, 3, 0])
    raw = momentum_update(p, sums, counts, 0.9, renormalise=False)
    torch.testing.assert_close(raw[0], torch.tensor([0.9, 0.1]))  # 0.9·p + 0.1·[0, 1]
    torch.testing.assert_close(raw[1], torch.tensor([0.1, 1.0]))  # 0.9·p + 0.1·[1, 1]
    assert torch.equal(raw[2], p[2])
    unit = momentum_update(p, sums, counts, 0.9)
    torch.testing.assert_close(unit[0], torch.tensor([0.9, 0.1]) / math.hypot(0.9, 0.1))


def test_learn_step_hand_example():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.6, -0.8]])
    b = _builder_with(p, momentum=0.75)
    # pixels: two nearest p0, one nearest p1, a zero vector (skipped); none near p2
    f = _fmap([3.0, 0.0], [2.0, 2.0], [0.0, 0.0], [-0.1, 5.0], h=2, w=2)
    b.learn_step({"x": f})
    out = b.prototypes()["x"]
    r = 1 / math.sqrt(2)
    mean0 = torch.tensor([(1 + r) / 2, r / 2])  # mean of unit [1,0] and [r,r]
    e0 = 0.75 * p[0] + 0.25 * mean0
    u1 = torch.tensor([-0.1, 5.0]) / math.hypot(0.1, 5.0)
    e1 = 0.75 * p[1] + 0.25 * u1
    torch.testing.assert_close(out[0], e0 / e0.norm(), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], e1 / e1.norm(), atol=1e-6, rtol=0)
    assert torch.equal(out[2], p[2])  # unassigned: bit-exact
    assert b.usage()["x"].tolist() == [2, 1, 0] and b.learn_steps == 1


def test_learn_before_init_is_an_error():
    with pytest.raises(RuntimeError):
        MulMemBuilder(["x"], k=2).learn_step({"x": torch.randn(1, 2, 2, 2)})


# ---- determinism and resume ----------------------------------------------------------------------


def _run(builder, init_batches, learn_batches):
    for taps in init_batches:
        if builder.init_step(taps):
            break
    else:
        builder.finish_init()
    for taps in learn_batches:
        builder.learn_step(taps)
    return builder.prototypes()


def test_deterministic_for_seed_and_resumable():
    data = [s[0] for s in _batches(6, [2], SHAPES, seed=5)]

    def mk(seed):
        return MulMemBuilder(
            ["c5", "lh"], k=12, tau=0.6, seed=seed, candidates_per_image=4, chunk_bytes=256
        )

    a = _run(mk(0), data, data[:3])
    b = _run(mk(0), data, data[:3])
    c = _run(mk(1), data, data[:3])
    assert all(torch.equal(a[l], b[l]) for l in a)
    assert any(a[l].shape != c[l].shape or not torch.equal(a[l], c[l]) for l in a)

    # interrupt after two init steps, resume from the state dict in a fresh builder
    first = mk(0)
    first.init_step(data[0])
    first.init_step(data[1])
    resumed = mk(0)
    resumed.load_state_dict(first.state_dict())
    r = _run(resumed, data[2:], data[:3])
    assert all(torch.equal(a[l], r[l]) for l in a)
    with pytest.raises(ValueError, match="tau"):
        MulMemBuilder(["c5", "lh"], k=12, tau=0.7, seed=0, candidates_per_image=4).load_state_dict(
            first.state_dict()
        )


def test_inference_mode_mixing():
    data = [s[0] for s in _batches(3, [2], SHAPES, seed=5)]
    b = MulMemBuilder(["c5", "lh"], k=8, tau=0.9, candidates_per_image=4)
    with torch.inference_mode():
        assert b.init_step(data[0])
    b.learn_step(data[1])  # outside inference mode: the buffers must still be writable
    with torch.inference_mode():
        b.learn_step(data[2])
    p = b.prototypes()["lh"]
    assert not p.is_inference() and p.shape == (8, 8)


# ---- two processes ≡ one process on the concatenated batches -------------------------------------

DIST_SIZES = [2, 3]  # unequal batch sizes per rank on purpose
DIST_KW = dict(layers=["c5", "lh"], k=30, tau=0.7, seed=7, candidates_per_image=3, chunk_bytes=512)


def _dist_worker(rank, world, init_file, out_dir, init_data, learn_data):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        b = MulMemBuilder(**DIST_KW)
        for step in init_data:
            b.init_step(step[rank])
        after_init = b.prototypes()
        for step in learn_data:
            b.learn_step(step[rank])
        torch.save(
            {
                "init": after_init,
                "learn": b.prototypes(),
                "steps": b.init_steps,
                "done": b.init_done,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_two_process_build_equals_single_process(tmp_path):
    import torch.multiprocessing as mp

    init_data = _batches(4, DIST_SIZES, SHAPES, seed=11)
    learn_data = _batches(2, DIST_SIZES, SHAPES, seed=12)
    mp.spawn(
        _dist_worker,
        nprocs=2,
        join=True,
        args=(2, str(tmp_path / "init"), str(tmp_path), init_data, learn_data),
    )

    single = MulMemBuilder(**DIST_KW)
    for step in init_data:
        single.init_step(_cat(step))
    ref_init = single.prototypes()
    assert single.counts() == {"c5": 30, "lh": 30}
    assert single.init_steps == 3  # the fourth step found the memory full: K reached mid-data
    for step in learn_data:
        single.learn_step(_cat(step))
    ref_learn = single.prototypes()

    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["done"] and got["steps"] == single.init_steps
        for l in ref_init:
            torch.testing.assert_close(got["init"][l], ref_init[l], atol=1e-6, rtol=0)
            torch.testing.assert_close(got["learn"][l], ref_learn[l], atol=1e-6, rtol=0)
        # learning moved the prototypes, so the comparison above is not vacuous
        assert not torch.allclose(ref_init["lh"], ref_learn["lh"], atol=1e-4)
