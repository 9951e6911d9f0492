"""Accounting: calibration hits the target, independent accountants agree, the ledger persists,
and the layered rule is right on a case computed by hand."""

import json
import math

import dp_accounting
import pytest
from hypothesis import given, settings
from scipy.optimize import brentq
from scipy.stats import norm
from hypothesis import strategies as st

from fedmia.errors import FedmiaError
from fedmia.privacy.accounting import CALIBRATION_TOLERANCE
from fedmia.privacy import (
    AccountantRecord,
    allocate_layer_sigmas,
    calibrate_noise_multiplier,
    compute_epsilon,
    default_delta,
    effective_noise_multiplier,
)


def google_epsilon(sigma: float, q: float, steps: int, delta: float, method: str) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    accountant = (dp_accounting.rdp.RdpAccountant() if method == "rdp"
                  else dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4))
    accountant.compose(event)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("target, q, steps, accountant",
                         [(1.0, 1 / 3, 30, "rdp"), (4.0, 0.1, 200, "rdp"), (8.0, 0.25, 40, "prv")])
def test_calibrated_sigma_gives_the_target_epsilon_within_1_percent(target, q, steps, accountant):
    delta = 1e-3
    sigma = calibrate_noise_multiplier(target, delta, q, steps, accountant)
    epsilon = compute_epsilon([(sigma, q, steps)], delta, accountant)
    assert epsilon <= target and epsilon == pytest.approx(target, rel=0.01)


@pytest.mark.parametrize("sigma, q, steps, accountant, google", [
    (1.0, 1 / 3, 30, "rdp", "rdp"), (0.8, 0.1, 200, "rdp", "rdp"), (5.0, 0.05, 60, "rdp", "rdp"),
    (2.0, 0.25, 40, "prv", "pld"), (5.0, 0.05, 60, "prv", "pld")])
def test_reported_epsilon_agrees_with_googles_dp_accounting(sigma, q, steps, accountant, google):
    delta = 1e-4
    assert compute_epsilon([(sigma, q, steps)], delta, accountant) == pytest.approx(
        google_epsilon(sigma, q, steps, delta, google), rel=0.02)


def test_epsilon_grows_with_every_round_and_does_not_depend_on_how_steps_were_split():
    record = AccountantRecord("rdp", 1e-4)
    epsilons = []
    for _ in range(5):
        record.record(1.0, 0.2, 10)
        epsilons.append(record.epsilon())
    assert all(a < b for a, b in zip(epsilons, epsilons[1:]))
    assert compute_epsilon([(1.0, 0.2, 50)], 1e-4) == pytest.approx(epsilons[-1])
    assert record.steps == 50


def test_the_record_survives_a_json_round_trip_and_predicts_the_next_round():
    record = AccountantRecord("prv", 1e-5, [(1.1, 0.05, 20)])
    restored = AccountantRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert restored == record
    next_epsilon = restored.epsilon_after(1.1, 0.05, 20)
    restored.record(1.1, 0.05, 20)
    assert restored.epsilon() == next_epsilon > record.epsilon()


def test_unknown_accountants_and_impossible_budgets_are_user_errors():
    with pytest.raises(FedmiaError, match="moments"):
        compute_epsilon([(1.0, 0.1, 10)], 1e-5, "moments")
    with pytest.raises(FedmiaError):
        calibrate_noise_multiplier(math.inf, 1e-5, 0.1, 10)


def test_effective_multiplier_on_a_case_computed_by_hand():
    # sigma = (2, 2, 1): 1/4 + 1/4 + 1/1 = 1.5, so sigma_eff = 1 / sqrt(1.5) = 0.81650
    assert effective_noise_multiplier([2.0, 2.0, 1.0]) == pytest.approx(0.81650, abs=1e-5)
    assert effective_noise_multiplier([3.0]) == 3.0


def test_equal_layer_sigmas_reduce_to_flat_dpsgd_accounting():
    sigma_eff = 1.1
    sigmas = allocate_layer_sigmas(sigma_eff, [1.0] * 4)
    assert sigmas == pytest.approx([2.2] * 4)  # sqrt(4) * 1.1
    flat = compute_epsilon([(sigma_eff, 0.2, 25)], 1e-4)
    layered = compute_epsilon([(effective_noise_multiplier(sigmas), 0.2, 25)], 1e-4)
    assert layered == pytest.approx(flat, rel=1e-9)


def test_allocation_keeps_sigma_eff_and_the_ratios_asked_for():
    sigmas = allocate_layer_sigmas(0.7, [1.0, 0.5, 0.5, 2.0])
    assert effective_noise_multiplier(sigmas) == pytest.approx(0.7)
    assert sigmas[1] == pytest.approx(sigmas[0] / 2) and sigmas[3] == pytest.approx(2 * sigmas[0])


def test_default_delta_is_an_order_below_one_over_n():
    assert default_delta(36) == pytest.approx(1 / 360)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(target=st.floats(0.3, 10.0), q=st.floats(0.005, 0.3), steps=st.integers(1, 400),
       delta=st.floats(1e-7, 1e-2))
def test_calibrated_sigma_never_overshoots_by_fedmia_or_by_google(target, q, steps, delta):
    sigma = calibrate_noise_multiplier(target, delta, q, steps)
    ours = compute_epsilon([(sigma, q, steps)], delta)
    assert (1 - CALIBRATION_TOLERANCE) * target <= ours <= target
    assert google_epsilon(sigma, q, steps, delta, "rdp") <= target * 1.02


def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """The tight epsilon of a Gaussian mechanism with sensitivity/std ratio mu (Balle & Wang
    2018): delta(eps) = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu), solved for eps."""
    def excess(eps):
        return norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * norm.cdf(-mu / 2 - eps / mu) - delta
    return brentq(excess, 0.0, 100.0)


@pytest.mark.parametrize("sigma, steps", [(2.0, 10), (5.0, 100), (1.0, 1)])
def test_without_subsampling_both_accountants_bracket_the_closed_form(sigma, steps):
    """q = 1: k Gaussian steps of multiplier sigma compose to one Gaussian with mu = sqrt(k)/sigma,
    whose exact epsilon is known. RDP must never be below it; PRV must be close to it."""
    delta = 1e-5
    exact = exact_gaussian_epsilon(math.sqrt(steps) / sigma, delta)
    rdp = compute_epsilon([(sigma, 1.0, steps)], delta, "rdp")
    prv = compute_epsilon([(sigma, 1.0, steps)], delta, "prv")
    assert exact <= rdp <= 1.35 * exact
    assert prv >= exact * (1 - 1e-3) and prv == pytest.approx(exact, rel=0.02)
