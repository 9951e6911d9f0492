"""Config resolution: file, flags on top, per-client defenses, validation."""

import tomllib

import pytest

from fedmia.config import RunConfig, clients_from_groups, load_run_config, resolve_config, spread
from fedmia.defenses import DefenseSpec
from fedmia.errors import FedmiaError


def test_spread_gives_equal_contiguous_blocks():
    assert spread([1, 4, 8, "inf"], 20, "epsilon") == [1] * 5 + [4] * 5 + [8] * 5 + ["inf"] * 5
    assert spread([1, 2, 3, 4], 4, "epsilon") == [1, 2, 3, 4]
    with pytest.raises(FedmiaError):
        spread([1, 2, 3], 2, "epsilon")


def test_a_list_that_does_not_divide_the_clients_is_an_error_naming_both_numbers():
    """`--epsilon 1,2,3` over 4 clients used to give uneven blocks without a word."""
    with pytest.raises(FedmiaError, match="--epsilon has 3 values for 4 clients.*divides 4"):
        resolve_config(None, {"clients": 4}, "dpsgd", {"epsilon": "1,2,3"})
    with pytest.raises(FedmiaError, match="2 values for 5 clients"):
        spread(["a", "b"], 5, "delta")


def test_flags_override_file_values():
    config = resolve_config({"clients": 4, "rounds": 7, "local-epochs": 3}, {"rounds": 2})
    assert (config.clients, config.rounds, config.local_epochs) == (4, 2, 3)


def test_infinite_epsilon_means_no_defense():
    config = resolve_config(None, {"clients": 4}, "dpsgd", {"epsilon": "1,inf"})
    assert [spec.name for spec in config.defenses] == ["dpsgd", "dpsgd", "none", "none"]
    assert config.defenses[0].params == {"epsilon": 1}
    assert config.dp_compatible_model


def test_client_groups_from_file_and_the_rest_undefended():
    specs, roles = clients_from_groups([{"ids": "0-1", "defense": "none"}, {"ids": [3], "defense": "none"}], 5)
    assert specs == tuple(DefenseSpec("none", {}) for _ in range(5)) and roles == ("honest",) * 5
    with pytest.raises(FedmiaError, match="two"):
        clients_from_groups([{"ids": "0-2"}, {"ids": "2"}], 5)
    with pytest.raises(FedmiaError, match="outside"):
        clients_from_groups([{"ids": "4-9"}], 5)


def test_resolved_config_round_trips_through_its_toml():
    config = resolve_config({"clients": 6, "client": [{"ids": "0-2", "defense": "none"}]},
                            {"seed": 3, "partition": "dirichlet:0.5"})
    assert resolve_config(tomllib.loads(config.to_toml()), {}) == config


def test_default_run_directory_names_the_setting():
    assert RunConfig(clients=3, rounds=2, seed=1).out == "runs/digits-3c-2r-seed1"


@pytest.mark.parametrize("settings, message", [
    ({"clients": 0}, "--clients"),
    ({"rounds": -1}, "--rounds"),
    ({"lr": 0.0}, "--lr"),
    ({"fraction": 1.5}, "--fraction"),
    ({"dataset": "imagenet"}, "unknown dataset"),
    ({"model": "gpt"}, "unknown model"),
    ({"partition": "dirichlet:0"}, "partition"),
    ({"attacks": ("loss", "magic")}, "unknown attack"),
    ({"device": "tpu"}, "--device"),
    ({"client_dp": "maybe"}, "--client-dp"),
    ({"client_dp": "server-fixed", "fraction": 0.5}, "--fraction 1"),
])
def test_bad_values_are_one_line_errors(settings, message):
    with pytest.raises(FedmiaError, match=message) as error:
        resolve_config(None, settings)
    assert "\n" not in str(error.value)


def test_unknown_file_key_and_defense_are_reported():
    with pytest.raises(FedmiaError, match="unknown key 'roundz'"):
        resolve_config({"roundz": 3}, {})
    with pytest.raises(FedmiaError, match="unknown defense"):
        resolve_config(None, {"clients": 2}, "magic", {})



@pytest.mark.parametrize("ids", ["3-1", "", "1-", "-1", "0-2,5-4", [], [True]])
def test_reversed_empty_or_malformed_client_ranges_are_errors(ids):
    """`ids = "3-1"` used to select nobody: those clients silently trained without DP."""
    with pytest.raises(FedmiaError, match="client ids|select no client"):
        clients_from_groups([{"ids": ids, "defense": "dpsgd", "epsilon": 1.0}], 6)


def test_config_toml_records_exactly_the_groups_used():
    groups = [{"ids": [4, 0, 2], "defense": "dpsgd", "epsilon": 1.0}, {"ids": "5", "defense": "ladp", "epsilon": 8}]
    config = resolve_config({"clients": 6, "client": groups}, {})
    written = tomllib.loads(config.to_toml())["client"]
    assert written == [{"ids": "0,2,4", "defense": "dpsgd", "epsilon": 1.0}, {"ids": "1,3", "defense": "none"},
                       {"ids": "5", "defense": "ladp", "epsilon": 8}]
    assert resolve_config(tomllib.loads(config.to_toml()), {}) == config


@pytest.mark.parametrize("defense", ["none", "dpsgd", "ladp"])
def test_a_misspelt_parameter_names_the_defense_the_parameter_and_the_accepted_ones(defense):
    with pytest.raises(FedmiaError) as error:
        DefenseSpec(defense, {"epsilom": 1.0}).build()
    message = str(error.value)
    assert f"defense {defense!r} has no parameter 'epsilom'" in message
    assert ("its parameters are epsilon" in message) == (defense != "none")


@pytest.mark.parametrize("defense", ["dpsgd", "ladp"])
def test_a_missing_required_parameter_is_named(defense):
    with pytest.raises(FedmiaError, match=f"defense '{defense}' needs epsilon; its parameters are epsilon, delta"):
        DefenseSpec(defense, {"delta": 1e-5}).build()


def test_top_level_defense_keys_in_a_file_work_like_the_flags():
    config = resolve_config({"clients": 4, "defense": "dpsgd", "epsilon": [1, "inf"]}, {})
    assert [spec.name for spec in config.defenses] == ["dpsgd", "dpsgd", "none", "none"]
    with pytest.raises(FedmiaError, match="one or the other"):
        resolve_config({"defense": "dpsgd", "epsilon": 1, "client": [{"ids": "0", "defense": "none"}]}, {})


@pytest.mark.parametrize("settings, message", [
    ({"rounds": 10**20}, "--rounds must be an integer from 1 to 1000"),
    ({"clients": 10**11}, "--clients must be an integer from 1 to 10000"),
    ({"seed": -1}, "--seed must be an integer from 0"),
    ({"batch_size": 10**9}, "--batch-size"),
    ({"local_epochs": 10**6}, "--local-epochs"),
    ({"out": ""}, "--out"),
    ({"attacks": ("loss", "loss")}, "listed twice"),
    ({"attacks": ()}, "at least one attack"),
    ({"device": "cuda:x"}, "--device"),
    ({"download": "yes"}, "download must be true or false"),
])
def test_absurd_sizes_and_wrong_types_are_bounded(settings, message):
    with pytest.raises(FedmiaError, match=message):
        resolve_config(None, settings)


def test_a_run_written_before_keep_uploads_existed_kept_only_last_uploads():
    text = RunConfig(clients=2, out="runs/old").to_toml()
    earlier = "\n".join(line for line in text.splitlines() if not line.startswith("keep_uploads"))
    assert load_run_config(earlier).keep_uploads == "last"
    assert load_run_config(text).keep_uploads == "all"
