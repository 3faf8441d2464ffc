"""Top-k soft labels: extraction from logits and the documented reconstruction rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from kdcache.teacher_cache.store.topk import logits_to_topk, topk_to_probs


def synthetic_teacher(n: int = 1000, c: int = 1000, seed: int = 0) -> torch.Tensor:
    """Logits of a teacher on mixed views: noise plus peaks at two labels weighted by lambda."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 1.5
    rows = torch.arange(n)
    a, b = torch.randint(0, c, (2, n), generator=g)
    lam = torch.rand(n, generator=g)
    logits[rows, a] += 11 * lam
    logits[rows, b] += 11 * (1 - lam)
    return logits


def test_reconstruction_on_a_hand_computed_case():
    lp = np.log(np.array([[0.5, 0.3]], np.float32))
    cls = np.array([[3, 1]], np.int16)
    out = topk_to_probs(lp, cls, 5)
    rest = 0.2 / 3
    np.testing.assert_allclose(out, [[rest, 0.3, rest, 0.5, rest]], rtol=1e-6)
    assert out.dtype == np.float32
    # Temperature: each reconstructed p becomes p^(1/T), renormalised.
    p = np.array([rest, 0.3, rest, 0.5, rest])
    for t in (0.5, 2.0, 4.0):
        want = p ** (1 / t) / (p ** (1 / t)).sum()
        np.testing.assert_allclose(topk_to_probs(lp, cls, 5, temperature=t), [want], rtol=1e-5)


def test_leftover_is_clamped_at_zero_and_the_result_renormalised():
    # fp16 rounding can push the top-k mass above 1: the other classes then get exactly 0.
    lp = np.array([[np.log(0.7), np.log(0.31)]], np.float32)
    out = topk_to_probs(lp, np.array([[0, 2]]), 4)
    assert out[0, 1] == 0 and out[0, 3] == 0
    np.testing.assert_allclose(out[0, [0, 2]], np.array([0.7, 0.31]) / 1.01, rtol=1e-6)


def test_k_equal_to_num_classes_is_the_softmax():
    logits = torch.randn(7, 12)
    lp, cls = logits_to_topk(logits, 12)
    np.testing.assert_allclose(topk_to_probs(lp.numpy(), cls.numpy(), 12), torch.softmax(logits, -1), atol=2e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0, 4.0])
def test_numpy_and_torch_agree_and_sum_to_one(temperature):
    lp, cls = logits_to_topk(synthetic_teacher(256, 1000), 10)
    out_t = topk_to_probs(lp, cls, 1000, temperature=temperature)
    out_n = topk_to_probs(lp.numpy(), cls.numpy(), 1000, temperature=temperature)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    assert isinstance(out_n, np.ndarray) and out_n.shape == (256, 1000)
    np.testing.assert_allclose(out_t.numpy(), out_n, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out_n.sum(-1), 1.0, atol=1e-5)
    assert (out_n >= 0).all()
    # Stored classes carry their own probability (renormalisation aside) at T = 1.
    if temperature == 1.0:
        got = np.take_along_axis(out_n, cls.numpy().astype(np.int64), -1)
        np.testing.assert_allclose(got, np.exp(lp.numpy().astype(np.float32)), rtol=1e-3)


def test_logits_to_topk_sorted_dtypes_and_ties():
    logits = torch.tensor([[0.0, 2.0, 2.0, -1.0, 2.0]])
    lp, cls = logits_to_topk(logits, 3)
    assert lp.dtype == torch.float16 and cls.dtype == torch.int16
    assert cls.tolist() == [[1, 2, 4]]  # ties: lower class id first, on every device
    assert (lp[:, :-1] >= lp[:, 1:]).all()
    big = torch.randn(2, 40000)
    lp, cls = logits_to_topk(big.bfloat16(), 5)  # any input dtype; log_softmax runs in float32
    assert cls.dtype == torch.int32 and lp.dtype == torch.float16
    assert cls[:, 0].tolist() == big.bfloat16().float().argmax(-1).tolist()
    with pytest.raises(ValueError, match="need 1 <= k"):
        logits_to_topk(big, 0)


def test_l1_to_the_full_teacher_decreases_with_k_and_is_bounded_by_the_tail():
    logits = synthetic_teacher(300)
    full = torch.softmax(logits, -1)
    dists = []
    for k in (1, 5, 10, 32, 100):
        lp, cls = logits_to_topk(logits, k)
        q = topk_to_probs(lp, cls, 1000)
        l1 = (q - full).abs().sum(-1)
        tail = 1 - full.sort(-1, descending=True).values[:, :k].sum(-1)
        # Top-k entries are exact (up to fp16); the spread tail can be off by at most twice its mass.
        assert (l1 <= 2 * tail + 2e-3).all()
        dists.append(l1.mean().item())
    assert all(a > b for a, b in itertools.pairwise(dists)), dists


def test_fp16_logprobs_are_effectively_lossless_unlike_uint8_probabilities():
    logits = synthetic_teacher(500)
    lp32 = torch.log_softmax(logits, -1).sort(-1, descending=True)
    lp32_k, cls = lp32.values[:, :10], lp32.indices[:, :10]
    exact = topk_to_probs(lp32_k, cls, 1000)
    fp16 = topk_to_probs(lp32_k.half(), cls, 1000)
    uint8 = torch.log((lp32_k.exp() * 255).round().clamp_min(1e-9) / 255)  # probabilities quantised to 1/255
    quant = topk_to_probs(uint8, cls, 1000)
    err16 = (fp16 - exact).abs().sum(-1).mean().item()
    err8 = (quant - exact).abs().sum(-1).mean().item()
    assert err16 < 5e-4
    assert err16 * 10 < err8


def test_shape_and_temperature_checks():
    with pytest.raises(ValueError, match="equal shapes"):
        topk_to_probs(np.zeros((2, 3)), np.zeros((2, 2), np.int64), 10)
    with pytest.raises(ValueError, match="temperature"):
        topk_to_probs(np.zeros((2, 3)), np.zeros((2, 3), np.int64), 10, temperature=0)
