"""Collapse metrics on embeddings whose answer is known in closed form."""

import math

import pytest
import torch

from dinolite.monitor import metrics


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_isotropic_gaussian_std_is_one_over_sqrt_d_and_rankme_near_full():
    n, d = 4096, 64
    x = torch.randn(n, d, generator=_generator())
    std = metrics.embedding_std(x)
    assert std == pytest.approx(1 / math.sqrt(d), rel=0.03)
    # Marchenko-Pastur spread (d/n = 1/64) keeps singular values within ~13% of each other.
    assert metrics.rankme(x) > 0.97 * d


def test_rank_k_embeddings_have_rankme_k():
    n, d, k = 2048, 64, 5
    basis, _ = torch.linalg.qr(torch.randn(d, k, generator=_generator(1)))  # k orthonormal directions
    coeffs = torch.randn(n, k, generator=_generator(2))
    x = coeffs @ basis.T
    rank = metrics.rankme(x)
    assert rank == pytest.approx(k, rel=0.05)
    sv = metrics.singular_values(x)
    assert sv.shape == (d,)
    assert torch.all(sv[:-1] >= sv[1:])  # sorted descending
    assert sv[k:].max() < 1e-6 * sv[0]


def test_equal_singular_values_give_rankme_exactly_k():
    # k orthogonal rows of equal norm: p_k = 1/k, RankMe = exp(ln k) = k (eps shifts it by ~1e-6).
    x = torch.zeros(7, 10)
    for i, j in enumerate([0, 2, 4, 6, 8, 9, 1]):
        x[i, j] = 3.0
    assert metrics.rankme(x) == pytest.approx(7.0, rel=1e-4)


def test_constant_embeddings_have_zero_std_and_rankme_one():
    x = torch.randn(1, 32, generator=_generator(3)).repeat(512, 1)
    assert metrics.embedding_std(x) == pytest.approx(0.0, abs=1e-7)
    assert metrics.rankme(x) == pytest.approx(1.0, abs=1e-3)


def test_std_ignores_the_scale_of_each_embedding():
    x = torch.randn(256, 16, generator=_generator(4))
    scales = torch.rand(256, 1, generator=_generator(5)) * 100 + 0.1
    assert metrics.embedding_std(x * scales) == pytest.approx(metrics.embedding_std(x), rel=1e-9)


def test_singular_values_match_torch_svd_both_shapes():
    for shape in [(40, 12), (12, 40)]:
        x = torch.randn(*shape, generator=_generator(6), dtype=torch.float64)
        expected = torch.linalg.svdvals(x)
        torch.testing.assert_close(metrics.singular_values(x), expected, rtol=1e-8, atol=1e-10)


def test_covariance_spectrum_matches_numpy_covariance_eigenvalues():
    x = torch.randn(300, 8, generator=_generator(7), dtype=torch.float64) * torch.arange(1, 9)
    z = torch.nn.functional.normalize(x, dim=1)
    cov = torch.cov(z.T, correction=0)
    expected = torch.linalg.eigvalsh(cov).flip(0)
    torch.testing.assert_close(metrics.covariance_spectrum(x), expected, rtol=1e-8, atol=1e-12)
    assert metrics.covariance_spectrum(x).sum() == pytest.approx(float(torch.trace(cov)))


def test_all_zero_embeddings_have_rankme_zero():
    assert metrics.rankme(torch.zeros(10, 4)) == 0.0


def test_uniform_teacher_entropy_is_log_k_for_both():
    k = 64
    probs = torch.full((32, k), 1.0 / k)
    assert metrics.entropy(probs) == pytest.approx(math.log(k))
    assert metrics.batch_mean_entropy(probs) == pytest.approx(math.log(k))
    assert metrics.normalized_entropy(metrics.entropy(probs), k) == pytest.approx(1.0)


def test_one_hot_collapse_entropy_is_zero_for_both():
    probs = torch.zeros(32, 64)
    probs[:, 5] = 1.0
    assert metrics.entropy(probs) == pytest.approx(0.0, abs=1e-12)
    assert metrics.batch_mean_entropy(probs) == pytest.approx(0.0, abs=1e-12)


def test_healthy_teacher_is_sharp_per_sample_but_spread_over_the_batch():
    # Each sample one-hot on its own prototype: per-sample 0, batch mean uniform over 64 -> ln 64.
    probs = torch.eye(64)
    assert metrics.entropy(probs) == pytest.approx(0.0, abs=1e-12)
    assert metrics.batch_mean_entropy(probs) == pytest.approx(math.log(64))


def test_entropy_hand_computed():
    probs = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])
    h0 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert metrics.entropy(probs) == pytest.approx(h0 / 2)
    mean = [0.75, 0.125, 0.125]
    assert metrics.batch_mean_entropy(probs) == pytest.approx(-sum(p * math.log(p) for p in mean))


def test_cross_entropy_and_kl_hand_computed():
    student_logits = torch.tensor([[0.2, 0.0, -0.1]])
    teacher = torch.tensor([[0.7, 0.2, 0.1]])
    temp = 0.1
    z = [v / temp for v in (0.2, 0.0, -0.1)]
    log_norm = math.log(sum(math.exp(v) for v in z))
    log_s = [v - log_norm for v in z]
    ce = -sum(q * ls for q, ls in zip((0.7, 0.2, 0.1), log_s))
    h = -sum(q * math.log(q) for q in (0.7, 0.2, 0.1))
    got_ce, got_kl = metrics.cross_entropy_kl(student_logits, teacher, temp)
    assert got_ce == pytest.approx(ce)
    assert got_kl == pytest.approx(ce - h)


def test_kl_is_zero_when_student_matches_teacher():
    logits = torch.randn(16, 10, generator=_generator(8), dtype=torch.float64)
    teacher = torch.softmax(logits / 0.1, dim=1)
    _, kl = metrics.cross_entropy_kl(logits, teacher, 0.1)
    assert kl == pytest.approx(0.0, abs=1e-10)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="2-D"):
        metrics.embedding_std(torch.zeros(3))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.cross_entropy_kl(torch.zeros(2, 3), torch.full((2, 4), 0.25), 0.1)
    with pytest.raises(ValueError, match="at least 2 classes"):
        metrics.entropy(torch.ones(4, 1))
