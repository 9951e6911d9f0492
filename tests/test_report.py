"""What report.md says about client-level DP: whom its epsilon protects, and which delta."""

from fedmia.privacy import default_delta
from fedmia.report import client_level_section


def section(mode: str, clients: int = 5, accounted: bool = True) -> str:
    dp = {"mode": mode, "noise_multiplier": 1.0, "clipping_norm": 1.0, "epsilon": None, "delta": None,
          "accountant": None, "note": "Flower accounts fixed clipping only"}
    if accounted:
        dp.update(epsilon=3.2, delta=default_delta(clients), accountant="flower rdp", releases=4)
    return "\n".join(client_level_section(dp, clients))


def test_client_level_epsilon_is_not_claimed_against_the_server_adversary():
    for mode in ("server-fixed", "client-fixed", "server-adaptive"):
        text = section(mode, accounted=mode.endswith("fixed"))
        assert "other participants" in text and "final model" in text
        assert "does not protect against the server adversary" in text
        assert "before it adds noise" in text


def test_server_side_clipping_is_named_as_unclipped_uploads():
    assert "before it clips them" in section("server-fixed")
    assert "clips" not in section("client-fixed").split("before it adds noise")[1].split(".")[0]


def test_the_delta_rule_is_stated_with_the_number_of_clients():
    text = section("server-fixed", clients=8)
    assert f"delta {default_delta(8):.1e}" in text
    assert "1 / (10 K) for K = 8 clients" in text
    assert "1 / (10 K)" not in section("server-adaptive", accounted=False)


def test_no_section_without_client_level_dp():
    assert client_level_section(None, 5) == []
