"""Collapse metrics on embedding matrices and teacher distributions.

Pure functions: tensors in, plain floats / 1-D tensors out; nothing is kept between calls. Inputs are
``(N, D)`` (samples x dimensions) embeddings or ``(N, K)`` probability / logit matrices. The linear
algebra runs in float64 when the matrix is small enough (see :func:`_working_dtype`) because the log
spectrum and RankMe care about small singular values that float32 Gram matrices blur.

References
----------
- Chen & He 2020, "Exploring Simple Siamese Representation Learning" (SimSiam), Sec. 4.1: the
  per-dimension std of L2-normalised outputs is about ``1/sqrt(d)`` for well spread outputs and
  goes to 0 under complete collapse.
- Garrido, Balestriero, Najman & LeCun 2023, "RankMe: Assessing the Downstream Performance of
  Pretrained Self-Supervised Representations by Their Rank", Eq. 1-2 (eps = 1e-7).
- Jing, Vincent, LeCun & Tian 2021, "Understanding Dimensional Collapse in Contrastive
  Self-supervised Learning", Sec. 3: the singular value spectrum of the embedding covariance.
- Thilak, Huang, Littwin, Saremi, Susskind & Ermon 2023, "LiDAR: Sensing Linear Probing Performance in
  Joint Embedding SSL Architectures" (ICLR 2024), Sec. 3: the smooth rank of the LDA matrix of surrogate
  classes made of augmented views of one image.
- Agrawal, Mondal, Ghosh & Richards 2022, "alpha-ReQ: Assessing Representation Quality in Self-Supervised
  Learning by measuring eigenspectrum decay" (NeurIPS 2022): the exponent of the power-law decay of the
  embedding covariance eigenspectrum.
- Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers" (DINO), Sec. 5.3:
  sharpening alone collapses to one dimension (teacher entropy -> 0), centering alone to the uniform
  distribution (entropy -> ln K); they watch the teacher entropy and the student-teacher KL.
- Govindarajan, Sidén, Roll & Lindsten 2024, "On Partial Prototype Collapse in the DINO Family of
  Self-Supervised Methods" (BMVC 2024): many of the K prototypes become duplicates of each other, so
  far fewer than K are used, while the batch-mean entropy still looks healthy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

RANKME_EPS = 1e-7  # Garrido et al. 2023, the value they use for float32 embeddings
LIDAR_DELTA = 1e-4  # Thilak et al. 2023: the ridge delta * I added to the within-class scatter
LIDAR_EPS = 1e-8  # the eps of the smooth rank p_k = lambda_k / ||lambda||_1 + eps (stable-pretraining's value)
# alpha-ReQ fits ranks 4..50 (1-based): the authors' released code (fastssl, trange = arange(3, 50)) skips
# the first eigenvalues, which a power law fits badly, and stops before the noisy tail.
ALPHA_REQ_FIRST_RANK, ALPHA_REQ_LAST_RANK = 4, 50
# float64 up to this many matrix entries (128 MiB); above it float32 keeps memory bounded on a GPU.
_FLOAT64_MAX_ELEMENTS = 1 << 24


def _check_matrix(x: Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (samples, dims) tensor, got shape {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one sample and one dimension, got shape {tuple(x.shape)}")


def _working_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.numel() <= _FLOAT64_MAX_ELEMENTS else torch.float32


def embedding_std(embeddings: Tensor) -> float:
    """Mean over dimensions of the per-dimension std of the L2-normalised embeddings (SimSiam).

    ``z_i = x_i / ||x_i||``; ``std = (1/D) sum_d std_i(z_{i,d})`` (population std over the N samples).
    For isotropic Gaussian embeddings ``std ~= 1/sqrt(D)``; for identical embeddings it is 0.
    Multiply by ``sqrt(D)`` for a width-independent ratio (~1 healthy, -> 0 collapsed).
    """
    _check_matrix(embeddings, "embeddings")
    z = F.normalize(embeddings.to(_working_dtype(embeddings)), dim=1)
    return float(z.std(dim=0, unbiased=False).mean())


def singular_values(embeddings: Tensor, center: bool = False, normalize: bool = False) -> Tensor:
    """Singular values of the ``(N, D)`` embedding matrix, sorted descending, ``min(N, D)`` of them.

    ``normalize`` L2-normalises the rows first; ``center`` subtracts the column mean. Computed from the
    smaller Gram matrix (``X X^T`` or ``X^T X``, eigenvalues = squared singular values) so the cost is
    ``N * D * min(N, D)`` even when D is a 65536-prototype head. Returned on the CPU, float64.
    """
    _check_matrix(embeddings, "embeddings")
    x = embeddings.to(_working_dtype(embeddings))
    if normalize:
        x = F.normalize(x, dim=1)
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    eigenvalues = torch.linalg.eigvalsh(gram.to(torch.float64))
    # Round-off makes zero eigenvalues slightly negative; clamp before the square root.
    return eigenvalues.clamp_min(0.0).sqrt().flip(0).cpu()


def covariance_spectrum(embeddings: Tensor, normalize: bool = True) -> Tensor:
    """Singular values of the embedding covariance ``C = (1/N) sum_i (z_i - zbar)(z_i - zbar)^T`` (Jing et al.).

    C is symmetric positive semi-definite, so its singular values are its eigenvalues, i.e. the squared
    singular values of the centred matrix divided by N. Rows are L2-normalised first by default so that
    spectra of different runs and widths share a scale (trace(C) <= 1). Sorted descending, ``min(N, D)``
    values, float64 on the CPU. Dimensional collapse shows as a tail that drops to ~0 (``log`` -> -inf).
    """
    sv = singular_values(embeddings, center=True, normalize=normalize)
    return sv.square() / embeddings.shape[0]


def rankme(embeddings: Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe effective rank (Garrido et al. 2023, Eq. 1-2).

    ``p_k = sigma_k / ||sigma||_1 + eps``, ``RankMe = exp(-sum_k p_k log p_k)`` over the ``min(N, D)``
    singular values of the raw (uncentred, unnormalised) embedding matrix. Equal to k for k equal
    non-zero singular values; ~1 when every embedding is the same vector; at most ``min(N, D)``;
    0 for an all-zero matrix.
    """
    sv = singular_values(embeddings)
    total = sv.sum()
    if total <= 0:
        return 0.0  # an all-zero matrix spans no direction at all
    return _smooth_rank(sv, eps)


def _check_probs(probs: Tensor, name: str) -> None:
    _check_matrix(probs, name)
    if probs.shape[1] < 2:
        raise ValueError(f"{name} needs at least 2 classes to have an entropy, got shape {tuple(probs.shape)}")


def entropy(probs: Tensor) -> float:
    """Mean per-sample entropy ``(1/N) sum_i -sum_k p_ik ln p_ik`` in nats (``0 log 0 = 0``).

    0 for one-hot rows, ``ln K`` for uniform rows. With the batch-mean entropy
    (:func:`batch_mean_entropy`) it separates the two DINO collapses: uniform collapse has both ~ln K,
    one-hot collapse (every sample on the same prototype) has both ~0, a healthy teacher has a low
    per-sample entropy and a high batch-mean entropy.
    """
    _check_probs(probs, "probs")
    p = probs.to(torch.float64)
    return float(-torch.special.xlogy(p, p).sum(dim=1).mean())


def batch_mean_entropy(probs: Tensor) -> float:
    """Entropy of the batch-mean distribution ``pbar_k = (1/N) sum_i p_ik``: ``-sum_k pbar_k ln pbar_k``.

    Low when every sample puts its mass on the same few prototypes (one-hot collapse), ``ln K`` when
    prototypes are used evenly over the batch (which DINO's centering encourages).
    """
    _check_probs(probs, "probs")
    mean = probs.to(torch.float64).mean(dim=0)
    return float(-torch.special.xlogy(mean, mean).sum())


def cross_entropy_kl(student_logits: Tensor, teacher_probs: Tensor, student_temp: float) -> tuple[float, float]:
    """Student-teacher cross-entropy and KL divergence, both averaged over samples, in nats.

    ``s_i = softmax(student_logits_i / student_temp)``, ``CE = -(1/N) sum_i sum_k q_ik ln s_ik`` (the DINO
    loss for one pair of crops), ``KL = CE - H(q)``. DINO (Sec. 5.3) shows KL -> 0 under either collapse:
    the student has nothing left to learn from the teacher.
    """
    _check_probs(teacher_probs, "teacher_probs")
    _check_matrix(student_logits, "student_logits")
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_probs {tuple(teacher_probs.shape)} differ in shape"
        )
    if student_temp <= 0:
        raise ValueError(f"student_temp must be > 0, got {student_temp}")
    q = teacher_probs.to(torch.float64)
    log_s = F.log_softmax(student_logits.to(torch.float64) / student_temp, dim=1)
    ce = -(q * log_s).sum(dim=1).mean()
    h = -torch.special.xlogy(q, q).sum(dim=1).mean()
    return float(ce), float(ce - h)


def prototypes_used(probs: Tensor) -> int:
    """How many distinct prototypes are the argmax of at least one sample's distribution (``(N, K)`` probs).

    At most ``min(N, K)``: over a batch of N samples it reads "used" as "some sample's assignment"
    (Govindarajan et al. 2024's partial prototype collapse: duplicated prototypes are never anyone's
    argmax alone). 1 under one-prototype collapse; ties go to the lowest index (``torch.argmax``).
    """
    _check_probs(probs, "probs")
    return int(torch.unique(probs.argmax(dim=1)).numel())


def unique_prototypes(prototypes: Tensor, max_cosine: float = 0.99) -> int:
    """How many of the ``(K, D)`` prototype vectors are not duplicates (Govindarajan et al. 2024).

    The vectors are L2-normalised; prototype ``k`` is a duplicate when its cosine similarity with an
    earlier unique prototype is above ``max_cosine``. K for K distinct directions, 1 when every row
    points the same way. Greedy in row order: a chain of near neighbours a~b~c with a not ~ c counts a
    and c.
    """
    _check_matrix(prototypes, "prototypes")
    if not -1.0 < max_cosine < 1.0:
        raise ValueError(f"max_cosine must be in (-1, 1), got {max_cosine}")
    unit = F.normalize(prototypes.to(torch.float64), dim=1)
    similar = (unit @ unit.T) > max_cosine
    kept: list[int] = []
    for k in range(unit.shape[0]):
        if not kept or not bool(similar[k, kept].any()):
            kept.append(k)
    return len(kept)


def normalized_entropy(value: float, num_classes: int) -> float:
    """An entropy divided by its maximum ``ln K``: 0 (one-hot) .. 1 (uniform), independent of K."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return value / math.log(num_classes)


def _smooth_rank(values: Tensor, eps: float) -> float:
    """``exp(-sum_k p_k log p_k)`` with ``p_k = v_k / ||v||_1 + eps`` (RankMe's and LiDAR's smooth rank)."""
    p = values / values.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def lidar(views: Tensor, delta: float = LIDAR_DELTA, eps: float = LIDAR_EPS) -> float:
    """LiDAR (Thilak et al. 2023, Sec. 3): the smooth rank of the LDA matrix of surrogate classes.

    ``views`` is ``(n, q, D)``: ``q >= 2`` augmented views (the surrogate class) of each of ``n >= 2``
    images. With ``mu_x`` the mean of image x's views and ``mu`` the mean of the ``mu_x``:

    - between-class scatter ``S_b = 1/(n-1) sum_x (mu_x - mu)(mu_x - mu)^T``;
    - within-class scatter ``S_w = 1/(n(q-1)) sum_x sum_i (e_xi - mu_x)(e_xi - mu_x)^T + delta I``;
    - ``S_lidar = S_w^{-1/2} S_b S_w^{-1/2}`` with eigenvalues ``lambda_k``;
    - ``LiDAR = exp(-sum_k p_k log p_k)``, ``p_k = lambda_k / ||lambda||_1 + eps``.

    Between 1 and ``min(D, n - 1)`` (up to eps): how many directions tell images apart relative to how
    much their augmentations move them. Invariant to rotations of the embedding; ``delta`` makes it
    invariant to scale only for scatters well above it. Views that are all identical (no between-class
    scatter at all) give 0, as RankMe does for an all-zero matrix.
    """
    if views.dim() != 3:
        raise ValueError(f"views must be a 3-D (images, views, dims) tensor, got shape {tuple(views.shape)}")
    n, q, d = views.shape
    if n < 2 or q < 2 or d < 1:
        raise ValueError(
            f"views needs >= 2 images with >= 2 views each and >= 1 dimension, got shape {tuple(views.shape)}"
        )
    if delta <= 0:
        raise ValueError(f"delta must be > 0 (it makes the within-class scatter invertible), got {delta}")
    e = views.to(torch.float64)
    class_means = e.mean(dim=1)
    between = class_means - class_means.mean(dim=0)
    s_b = between.T @ between / (n - 1)
    within = (e - class_means[:, None]).reshape(n * q, d)
    s_w = within.T @ within / (n * (q - 1)) + delta * torch.eye(d, dtype=e.dtype, device=e.device)
    w_values, w_vectors = torch.linalg.eigh(s_w)
    inv_sqrt = (w_vectors * w_values.rsqrt()) @ w_vectors.T
    s_lidar = inv_sqrt @ s_b @ inv_sqrt
    eigenvalues = torch.linalg.eigvalsh((s_lidar + s_lidar.T) / 2).clamp_min(0.0).cpu()
    if eigenvalues.sum() <= 0:
        return 0.0  # every image has the same mean embedding: nothing separates the classes
    return _smooth_rank(eigenvalues, eps)


def power_law_exponent(
    eigenvalues: Tensor, first_rank: int = ALPHA_REQ_FIRST_RANK, last_rank: int = ALPHA_REQ_LAST_RANK
) -> float:
    """The decay exponent ``alpha`` of ``lambda_i ~ c i^(-alpha)`` fitted on ranks ``first..last`` (1-based).

    Least squares of ``log lambda_i`` on ``log i`` weighted by ``1/i`` (as the alpha-ReQ authors' released
    code, after Stringer et al. 2019); ``alpha`` is minus the slope. Eigenvalues are sorted descending
    first. ``last_rank`` is lowered to the number of numerically non-zero eigenvalues (at most
    ``max_i lambda_i * len * float64 eps`` counts as zero); fewer than 2 of them in the range leave no
    slope to fit: ``inf`` (the spectrum ends at once, as a collapsed one does).
    """
    if eigenvalues.dim() != 1 or eigenvalues.numel() < 1:
        raise ValueError(f"eigenvalues must be a non-empty 1-D tensor, got shape {tuple(eigenvalues.shape)}")
    if not 1 <= first_rank < last_rank:
        raise ValueError(f"the fit needs 1 <= first_rank < last_rank, got {first_rank}..{last_rank}")
    values = eigenvalues.to(torch.float64).cpu().sort(descending=True).values
    if not bool(torch.isfinite(values).all()) or bool((values < -1e-12 * values.abs().max()).any()):
        raise ValueError("eigenvalues must be finite and non-negative (a covariance spectrum)")
    tolerance = float(values[0]) * values.numel() * torch.finfo(torch.float64).eps
    positive = int((values > tolerance).sum())
    last = min(last_rank, positive)
    if last - first_rank + 1 < 2:
        return math.inf
    ranks = torch.arange(first_rank, last + 1, dtype=torch.float64)
    x, y, w = ranks.log(), values[first_rank - 1 : last].log(), 1.0 / ranks
    x_mean, y_mean = (w * x).sum() / w.sum(), (w * y).sum() / w.sum()
    slope = (w * (x - x_mean) * (y - y_mean)).sum() / (w * (x - x_mean).square()).sum()
    return float(-slope)


def alpha_req(
    embeddings: Tensor, first_rank: int = ALPHA_REQ_FIRST_RANK, last_rank: int = ALPHA_REQ_LAST_RANK
) -> float:
    """alpha-ReQ (Agrawal et al. 2022): the power-law exponent of the embedding covariance eigenspectrum.

    The eigenvalues of ``C = (1/N) sum_i (x_i - xbar)(x_i - xbar)^T`` of the raw ``(N, D)`` embeddings
    (:func:`covariance_spectrum` without the L2 normalisation), fitted by :func:`power_law_exponent`
    over ranks ``first_rank..last_rank``. Small alpha (~0): a flat, white spectrum that spreads signal and
    noise alike; large alpha: few dimensions carry the variance (dimensional collapse); the paper finds
    the best linear-probe accuracy near alpha ~ 1. Invariant to rotations and to the scale of the
    embedding; ``inf`` when fewer than ``first_rank + 1`` directions have any variance.
    """
    return power_law_exponent(covariance_spectrum(embeddings, normalize=False), first_rank, last_rank)
