"""Collapse metrics on embeddings whose answer is known in closed form."""

import math

import numpy as np
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


# ----------------------------------------------------------------------------- alpha-ReQ and LiDAR


def _rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_generator(seed), dtype=torch.float64))
    return q


def _orthonormal_centred(n: int, k: int, seed: int, groups: int = 1) -> torch.Tensor:
    """``(n, k)`` orthonormal columns with zero mean within each of ``groups`` equal consecutive blocks
    of rows (groups=1: centred columns)."""
    g = torch.randn(n, k, generator=_generator(seed), dtype=torch.float64)
    g = g.view(groups, n // groups, k)
    g = (g - g.mean(dim=1, keepdim=True)).view(n, k)
    q, _ = torch.linalg.qr(g)
    return q


def _embeddings_with_covariance_spectrum(eigenvalues: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``(n, D)`` embeddings whose covariance (1/n, centred) has exactly these eigenvalues, in a random basis."""
    d = eigenvalues.numel()
    q = _orthonormal_centred(n, d, seed)
    return math.sqrt(n) * q @ torch.diag(eigenvalues.sqrt()) @ _rotation(d, seed + 1).T + 3.0


def test_a_power_law_spectrum_gives_its_exponent_exactly():
    ranks = torch.arange(1, 101, dtype=torch.float64)
    for alpha in (0.5, 1.0, 1.7, 3.0):
        assert metrics.power_law_exponent(2.5 * ranks ** (-alpha)) == pytest.approx(alpha, abs=1e-10)
    # only ranks 4..50 are fitted: the head and the tail may do anything
    spectrum = ranks**-1.3
    spectrum[:3] = torch.tensor([50.0, 1.0, 0.9])
    spectrum[50:] = 1e-9
    assert metrics.power_law_exponent(spectrum) == pytest.approx(1.3, abs=1e-10)
    assert metrics.power_law_exponent(spectrum.flip(0)) == pytest.approx(1.3, abs=1e-10)  # sorted first
    assert metrics.power_law_exponent(ranks**-2.0, first_rank=1, last_rank=10) == pytest.approx(2.0, abs=1e-10)


def test_the_fit_stops_at_the_last_non_zero_eigenvalue_and_is_inf_without_two_points():
    spectrum = torch.cat([torch.arange(1, 21, dtype=torch.float64) ** -0.8, torch.zeros(40)])
    assert metrics.power_law_exponent(spectrum) == pytest.approx(0.8, abs=1e-10)
    assert metrics.power_law_exponent(torch.tensor([1.0, 0.5, 0.25, 0.1, 0.0, 0.0])) == math.inf
    assert metrics.power_law_exponent(torch.zeros(60)) == math.inf
    assert metrics.power_law_exponent(torch.tensor([2.0])) == math.inf  # one sample: one eigenvalue


def test_power_law_fit_refuses_what_is_not_a_spectrum_or_a_range():
    with pytest.raises(ValueError, match="1-D"):
        metrics.power_law_exponent(torch.ones(3, 3))
    with pytest.raises(ValueError, match="first_rank < last_rank"):
        metrics.power_law_exponent(torch.ones(10), first_rank=5, last_rank=5)
    with pytest.raises(ValueError, match="non-negative"):
        metrics.power_law_exponent(torch.tensor([1.0, -0.5, 0.1]))
    with pytest.raises(ValueError, match="non-negative"):
        metrics.power_law_exponent(torch.tensor([1.0, float("nan"), 0.1]))


def test_alpha_req_of_embeddings_with_a_power_law_covariance_is_its_exponent_whatever_the_rotation_and_scale():
    eigenvalues = torch.arange(1, 65, dtype=torch.float64) ** -1.4
    x = _embeddings_with_covariance_spectrum(eigenvalues, n=300, seed=3)
    assert metrics.alpha_req(x) == pytest.approx(1.4, abs=1e-8)
    assert metrics.alpha_req(0.01 * x @ _rotation(64, 9)) == pytest.approx(1.4, abs=1e-8)


def test_alpha_req_of_collapsed_embeddings_is_inf():
    x = _embeddings_with_covariance_spectrum(torch.tensor([1.0, 0.5] + [0.0] * 30, dtype=torch.float64), 100, 4)
    assert metrics.alpha_req(x) == math.inf
    assert metrics.alpha_req(torch.ones(50, 16)) == math.inf


def _views(between: torch.Tensor, within: torch.Tensor, n: int, q: int, seed: int) -> torch.Tensor:
    """``(n, q, D)`` views whose between-class scatter is ``diag(between)`` and within-class scatter
    ``diag(within)`` exactly (LiDAR's normalisations: 1/(n-1) and 1/(n(q-1)))."""
    d = between.numel()
    means = math.sqrt(n - 1) * _orthonormal_centred(n, d, seed) @ torch.diag(between.sqrt())
    offsets = math.sqrt(n * (q - 1)) * _orthonormal_centred(n * q, d, seed + 1, groups=n) @ torch.diag(within.sqrt())
    return means[:, None, :] + offsets.view(n, q, d) + 5.0


def _smooth_rank(values: torch.Tensor, eps: float = metrics.LIDAR_EPS) -> float:
    p = values / values.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def _lidar_reference(views: torch.Tensor, delta: float = metrics.LIDAR_DELTA) -> float:
    """LiDAR written from the paper's definitions, one class and one view at a time (numpy)."""
    e = views.double().numpy()
    n, q, d = e.shape
    mu_x = [e[x].mean(axis=0) for x in range(n)]
    mu = sum(mu_x) / n
    s_b = sum(np.outer(m - mu, m - mu) for m in mu_x) / (n - 1)
    s_w = sum(np.outer(e[x, i] - mu_x[x], e[x, i] - mu_x[x]) for x in range(n) for i in range(q)) / (n * (q - 1))
    s_w = s_w + delta * np.eye(d)
    w, v = np.linalg.eigh(s_w)
    inv_sqrt = v @ np.diag(w**-0.5) @ v.T
    lam = np.clip(np.linalg.eigvalsh(inv_sqrt @ s_b @ inv_sqrt), 0, None)
    return _smooth_rank(torch.from_numpy(lam))


def test_lidar_of_known_between_and_within_scatter():
    between = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.0, 0.0], dtype=torch.float64)
    within = torch.tensor([1.0, 1.0, 0.5, 0.5, 2.0, 0.1], dtype=torch.float64)
    views = _views(between, within, n=20, q=3, seed=5)
    expected = _smooth_rank(between / (within + metrics.LIDAR_DELTA))
    assert metrics.lidar(views) == pytest.approx(expected, rel=1e-9)
    assert metrics.lidar(views) == pytest.approx(_lidar_reference(views), rel=1e-9)
    # rotating the embedding changes nothing
    assert metrics.lidar(views @ _rotation(6, 7)) == pytest.approx(expected, rel=1e-9)


def test_lidar_whitens_by_the_within_class_scatter():
    within = torch.tensor([10.0, 1.0, 0.1, 0.01], dtype=torch.float64)
    # between-class scatter proportional to the within-class one: every direction separates the images
    # equally well once whitened, so LiDAR is the full 4 while the class means' own spectrum is steep
    views = _views(3.0 * (within + metrics.LIDAR_DELTA), within, n=30, q=4, seed=8)
    assert metrics.lidar(views) == pytest.approx(4.0, rel=1e-6)
    assert metrics.rankme(views.mean(dim=1) - views.mean(dim=(0, 1))) < 2.5
    # and k equal discriminative directions over isotropic noise give k
    views = _views(
        torch.tensor([1.0, 1.0, 1.0, 0, 0], dtype=torch.float64), torch.ones(5, dtype=torch.float64), 25, 2, 2
    )
    assert metrics.lidar(views) == pytest.approx(3.0, rel=1e-6)


def test_lidar_of_degenerate_views():
    same_image = torch.randn(1, 8, generator=_generator(3)).expand(10, 3, 8)
    assert metrics.lidar(same_image) == 0.0  # no class separates from another
    # views identical within each class: the within-class scatter is delta * I, still defined
    means = torch.randn(10, 1, 4, generator=_generator(4), dtype=torch.float64).expand(10, 2, 4)
    assert metrics.lidar(means) == pytest.approx(_lidar_reference(means), rel=1e-9)
    with pytest.raises(ValueError, match="3-D"):
        metrics.lidar(torch.ones(4, 8))
    with pytest.raises(ValueError, match=">= 2 images with >= 2 views"):
        metrics.lidar(torch.ones(4, 1, 8))
    with pytest.raises(ValueError, match=">= 2 images with >= 2 views"):
        metrics.lidar(torch.ones(1, 3, 8))
    with pytest.raises(ValueError, match="delta"):
        metrics.lidar(torch.ones(4, 2, 8), delta=0.0)


def test_prototypes_used_counts_the_distinct_argmax_prototypes():
    """Partial prototype collapse (Govindarajan et al. 2024): 64 samples spread over prototypes 0, 3, 5 of
    K = 16 use 3; one-prototype collapse uses 1; a batch smaller than K uses at most N."""
    k = 16
    assignment = torch.tensor([0, 3, 5, 3] * 16)
    probs = torch.full((64, k), 0.01)
    probs[torch.arange(64), assignment] = 1.0 - 0.01 * (k - 1)
    assert metrics.prototypes_used(probs) == 3
    assert metrics.prototypes_used(torch.softmax(torch.randn(1, k).expand(64, k), dim=1)) == 1
    assert metrics.prototypes_used(torch.eye(k)[:5]) == 5
    assert metrics.prototypes_used(torch.eye(k)) == k


def test_unique_prototypes_counts_directions_not_rows():
    """K = 12 prototypes built from 4 directions, each repeated 3 times with a small perturbation and a
    different length: 4 unique. Orthogonal prototypes are all unique; one direction repeated is 1."""
    generator = torch.Generator().manual_seed(0)
    directions = torch.linalg.qr(torch.randn(32, 4, generator=generator, dtype=torch.float64))[0].T  # 4 x 32
    scales = torch.tensor([1.0, 2.5, 0.3], dtype=torch.float64)
    copies = directions.repeat_interleave(3, dim=0) * scales.repeat(4)[:, None]
    noisy = copies + 1e-3 * torch.randn(copies.shape, generator=generator, dtype=torch.float64)
    assert metrics.unique_prototypes(noisy) == 4
    assert metrics.unique_prototypes(torch.eye(8)) == 8
    assert metrics.unique_prototypes(torch.ones(5, 3) * torch.arange(1.0, 6.0)[:, None]) == 1
    # a looser threshold merges directions 45 degrees apart (cosine 0.707), a tighter one keeps them apart
    pair = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert metrics.unique_prototypes(pair, max_cosine=0.7) == 1
    assert metrics.unique_prototypes(pair, max_cosine=0.8) == 2
    with pytest.raises(ValueError, match="max_cosine must be in"):
        metrics.unique_prototypes(pair, max_cosine=1.0)
