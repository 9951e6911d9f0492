"""Accounting: calibration hits the target, an independent accountant agrees, layered rule."""

import math

import dp_accounting
import pytest

from fedmia.privacy import (
    allocate_layer_sigmas,
    calibrate_noise_multiplier,
    default_delta,
    effective_noise_multiplier,
    epsilon_of,
)


def google_rdp_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(event)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("target, q, steps", [(1.0, 1 / 3, 30), (4.0, 0.1, 200), (8.0, 0.25, 40)])
def test_calibrated_sigma_gives_the_target_epsilon_within_1_percent(target, q, steps):
    delta = 1e-3
    sigma = calibrate_noise_multiplier(target, delta, q, steps)
    epsilon = epsilon_of([(sigma, q, steps)], delta)
    assert epsilon <= target and epsilon == pytest.approx(target, rel=0.01)


@pytest.mark.parametrize("sigma, q, steps", [(1.0, 1 / 3, 30), (0.8, 0.1, 200), (2.0, 0.25, 40)])
def test_reported_epsilon_agrees_with_googles_dp_accounting(sigma, q, steps):
    delta = 1e-4
    assert epsilon_of([(sigma, q, steps)], delta) == pytest.approx(
        google_rdp_epsilon(sigma, q, steps, delta), rel=0.02)


def test_epsilon_grows_with_every_round_and_merging_rounds_changes_nothing():
    rounds = [[1.0, 0.2, 10]] * 5
    epsilons = [epsilon_of(rounds[:k], 1e-4) for k in range(1, 6)]
    assert all(a < b for a, b in zip(epsilons, epsilons[1:]))
    assert epsilon_of([(1.0, 0.2, 50)], 1e-4) == pytest.approx(epsilons[-1])


def test_prv_accountant_is_selectable_and_close_to_rdp():
    rdp = epsilon_of([(1.0, 0.1, 100)], 1e-5, "rdp")
    prv = epsilon_of([(1.0, 0.1, 100)], 1e-5, "prv")
    assert 0 < prv <= rdp * 1.01


def test_effective_multiplier_on_a_case_computed_by_hand():
    # sigma = (2, 2, 1): 1/4 + 1/4 + 1 = 1.5, so sigma_eff = 1 / sqrt(1.5) = 0.8165
    assert effective_noise_multiplier([2.0, 2.0, 1.0]) == pytest.approx(1 / math.sqrt(1.5))
    assert effective_noise_multiplier([3.0]) == 3.0


def test_equal_layer_sigmas_reduce_to_flat_dpsgd_accounting():
    sigma_eff = 1.1
    sigmas = allocate_layer_sigmas(sigma_eff, [1.0] * 4)
    assert sigmas == pytest.approx([2.2] * 4)
    assert effective_noise_multiplier(sigmas) == pytest.approx(sigma_eff)
    flat = epsilon_of([(sigma_eff, 0.2, 25)], 1e-4)
    layered = epsilon_of([(effective_noise_multiplier(sigmas), 0.2, 25)], 1e-4)
    assert layered == pytest.approx(flat)


def test_allocation_keeps_sigma_eff_for_any_relative_noise():
    sigmas = allocate_layer_sigmas(0.7, [1.0, 0.5, 0.5, 2.0])
    assert effective_noise_multiplier(sigmas) == pytest.approx(0.7)
    assert sigmas[1] == pytest.approx(sigmas[0] / 2)


def test_default_delta_is_below_one_over_n():
    assert default_delta(36) == pytest.approx(1 / 360) and default_delta(36) < 1 / 36
