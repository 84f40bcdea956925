"""FID / KID on features: known answers for the Fréchet distance and KID's unbiasedness."""

import numpy as np
import pytest

from recaption.metrics import feature_distance as fd


def test_identical_sets_are_at_distance_zero():
    x = np.random.default_rng(0).normal(size=(2000, 8))
    assert fd.frechet_distance(x, x) == pytest.approx(0, abs=1e-8)
    # Unbiased KID of a set against itself is slightly negative (the diagonal terms the
    # within-set sums leave out are in the cross sum): about -0.008 here, against 1.1
    # for the same set shifted by half a standard deviation.
    assert fd.kernel_distance(x, x, subsets=20)[0] == pytest.approx(0, abs=0.02)
    assert fd.kernel_distance(x, x + 0.5, subsets=20)[0] > 1.0


def test_the_frechet_distance_of_two_gaussians_has_its_closed_form():
    # Diagonal covariances commute: Tr(sqrt(A B)) = sum sqrt(a_i b_i), so the distance is
    # |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2 = (9 + 16) + (1 + 1 + 0) = 27.
    mu_a, mu_b = np.zeros(3), np.array([3.0, 4.0, 0.0])
    cov_a, cov_b = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 9.0])
    assert fd.gaussian_frechet(mu_a, cov_a, mu_b, cov_b) == pytest.approx(27.0, abs=1e-9)


def test_the_frechet_distance_of_rotated_covariances():
    # Non-commuting covariances: B is A rotated by 90 degrees in the plane. With
    # A = diag(4, 1), B = diag(1, 4): Tr(sqrt(A^(1/2) B A^(1/2))) = Tr(diag(2, 2)) = 4,
    # so the distance is 5 + 5 - 8 = 2; a rotation by 45 degrees gives the same formula's
    # value computed by hand: sqrt(A) B sqrt(A) = [[10, 3], [3, 2.5]] -> Tr sqrt = sqrt(12.5
    # + 2 sqrt(16)) = sqrt(20.5), distance 10 - 2 sqrt(20.5).
    a = np.diag([4.0, 1.0])
    assert fd.gaussian_frechet(np.zeros(2), a, np.zeros(2), np.diag([1.0, 4.0])) == (
        pytest.approx(2.0, abs=1e-9)
    )
    r = np.array([[1, -1], [1, 1]]) / np.sqrt(2)
    b = r @ a @ r.T  # [[2.5, 1.5], [1.5, 2.5]]
    expected = 10 - 2 * np.sqrt(20.5)
    assert fd.gaussian_frechet(np.zeros(2), a, np.zeros(2), b) == pytest.approx(expected, abs=1e-9)


def test_the_frechet_distance_of_samples_converges_to_the_gaussians():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20000, 2)) * [1.0, 2.0]
    b = rng.normal(size=(20000, 2)) * [2.0, 1.0] + [3.0, 4.0]
    assert fd.frechet_distance(a, b) == pytest.approx(25 + 2, abs=0.3)


def test_kid_is_unbiased_for_two_samples_of_one_distribution():
    rng = np.random.default_rng(2)
    estimates = [
        fd.kernel_distance(rng.normal(size=(50, 4)), rng.normal(size=(50, 4)), subsets=1)[0]
        for _ in range(400)
    ]
    spread = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates)) < 3 * spread  # a biased MMD^2 sits at about +2/m above 0
    shifted = fd.kernel_distance(rng.normal(size=(50, 4)), rng.normal(size=(50, 4)) + 1)
    assert shifted[0] > 20 * spread


def test_too_few_features_are_refused():
    with pytest.raises(ValueError, match="at least two"):
        fd.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="at least two"):
        fd.kernel_distance(np.zeros((5, 3)), np.zeros((1, 3)))
