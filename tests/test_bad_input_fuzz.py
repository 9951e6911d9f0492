"""Generated bad input, flags and config-file values: every one is exit code 2 and exactly one
`fedmia: error:` line, never a traceback, and is refused during config validation.

Each strategy draws only from values the documented rules reject, so every example is bad.
`--out` points at a folder that is not a run directory: an input accepted by mistake would be
refused there with a message the tests reject, instead of starting a federation.
"""

import contextlib
import io
import math
import re
from dataclasses import fields

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmia.attacks import ATTACKS
from fedmia.cli import main
from fedmia.config import CLIENT_DP_MODES, DEFENSE_KEYS, NUMERIC_KEYS, PartitionSpec, RunConfig
from fedmia.data import DATASETS
from fedmia.errors import FedmiaError
from fedmia.models import MODELS

FUZZ = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
INT_KEYS = [key for key, rule in NUMERIC_KEYS.items() if rule.integer]
FLOAT_KEYS = [key for key, rule in NUMERIC_KEYS.items() if not rule.integer]


@pytest.fixture(scope="module")
def tripwire(tmp_path_factory):
    """A non-empty folder that is not a run: a valid config would be refused here."""
    folder = tmp_path_factory.mktemp("not-a-run")
    (folder / "keep.txt").write_text("mine")
    return str(folder)


def run_main(args: list[str]) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(args)
        except SystemExit as exited:  # argparse's own usage errors
            code = exited.code
    return code, stderr.getvalue()


def assert_refused(args: list[str]) -> None:
    code, err = run_main(args)
    lines = err.strip().splitlines()
    assert code == 2, (args, err)
    assert len(lines) == 1 and lines[0].startswith("fedmia: error: "), (args, err)
    assert "Traceback" not in err and "not a fedmia run directory" not in err, (args, err)


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def out_of_range_int(key: str) -> st.SearchStrategy[int]:
    rule = NUMERIC_KEYS[key]
    return st.integers(max_value=int(rule.low) - 1) | st.integers(min_value=int(rule.high) + 1)


def bad_float(key: str) -> st.SearchStrategy[float]:
    rule = NUMERIC_KEYS[key]
    below = st.floats(max_value=rule.low, exclude_max=not rule.low_open, allow_nan=False)
    above = st.floats(min_value=rule.high, exclude_min=True) if math.isfinite(rule.high) else st.nothing()
    return below | above | st.sampled_from([math.nan, math.inf, -math.inf])


def unknown_name(known) -> st.SearchStrategy[str]:
    return st.text(max_size=12).filter(lambda text: text not in known)


def bad_partition(text: str) -> bool:
    try:
        PartitionSpec.parse(text)
    except FedmiaError:
        return True
    return False


def is_bad_attack_list(names: list[str]) -> bool:
    stripped = [name.strip() for name in names]
    return any(name not in ATTACKS for name in stripped) or len(set(stripped)) < len(stripped)


attack_name = st.sampled_from(list(ATTACKS)) | st.text(alphabet=st.characters(blacklist_characters=",", blacklist_categories=("Cs",)), max_size=8)
clients_and_a_list_that_does_not_divide = st.integers(2, 60).flatmap(
    lambda clients: st.tuples(st.just(clients), st.integers(1, clients).filter(lambda k: clients % k)))

#: Every key a config file accepts, in its dashed form.
FILE_KEYS = {f.name.replace("_", "-") for f in fields(RunConfig)} | {
    key.replace("_", "-") for key in DEFENSE_KEYS} | {"client", "attack"}

bad_flags = st.one_of(
    st.sampled_from(INT_KEYS).flatmap(lambda key: out_of_range_int(key).map(lambda v: [f"{flag(key)}={v}"])),
    st.sampled_from(FLOAT_KEYS).flatmap(lambda key: bad_float(key).map(lambda v: [f"{flag(key)}={v}"])),
    unknown_name(DATASETS).map(lambda v: [f"--dataset={v}"]),
    unknown_name(MODELS).map(lambda v: [f"--model={v}"]),
    unknown_name(CLIENT_DP_MODES).map(lambda v: [f"--client-dp={v}"]),
    st.text(max_size=12).filter(bad_partition).map(lambda v: [f"--partition={v}"]),
    st.text(max_size=12).filter(lambda v: not re.fullmatch(r"cpu|cuda(:[0-9]+)?", v)).map(lambda v: [f"--device={v}"]),
    st.sampled_from(["", " ", "\t"]).map(lambda v: [f"--out={v}"]),
    st.lists(attack_name, max_size=6).filter(is_bad_attack_list).map(lambda v: [f"--attacks={','.join(v)}"]),
    clients_and_a_list_that_does_not_divide.map(lambda ck: [f"--clients={ck[0]}", "--defense=dpsgd",
                                                            "--epsilon=" + ",".join(["8"] * ck[1])]),
    st.lists(st.sampled_from(["1", "8", "", " "]), min_size=2, max_size=5).filter(
        lambda v: any(not x.strip() for x in v)).map(lambda v: ["--clients=60", "--defense=dpsgd",
                                                                "--epsilon=" + ",".join(v)]),
    st.sampled_from(["dpsgd", "ladp"]).map(lambda d: [f"--defense={d}"]),
    unknown_name(["none", "dpsgd", "ladp"]).map(lambda d: [f"--defense={d}"]),
)


@FUZZ
@given(bad=bad_flags)
def test_generated_bad_flags_are_one_line(bad, tripwire):
    assert_refused(["simulate", "--out", tripwire, *bad])


not_an_int = st.text(max_size=6) | st.floats() | st.booleans() | st.lists(st.integers(), max_size=2)
not_a_number = st.text(max_size=6) | st.booleans() | st.lists(st.floats(), max_size=2)
not_a_text = st.integers() | st.floats() | st.booleans() | st.lists(st.text(max_size=3), max_size=2) | st.just("")
identifier = st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True)
accepted_parameters = {"epsilon", "delta", "accountant", "max_grad_norm", "sensitive_clip", "other_clip",
                       "other_noise", "reallocate_every"}


def reversed_range(clients: int) -> st.SearchStrategy[str]:
    return st.tuples(st.integers(1, clients - 1), st.integers(1, clients - 1)).filter(
        lambda ab: ab[0] > ab[1]).map(lambda ab: f"{ab[0]}-{ab[1]}")


bad_groups = st.one_of(
    reversed_range(20).map(lambda ids: [{"ids": ids, "defense": "dpsgd", "epsilon": 1.0}]),
    st.integers(20, 10**6).map(lambda i: [{"ids": [i], "defense": "none"}]),
    st.just([{"ids": [], "defense": "none"}]),
    identifier.filter(lambda key: key not in accepted_parameters | {"ids", "defense"}).map(
        lambda key: [{"ids": "0-4", "defense": "dpsgd", "epsilon": 1.0, key: 1.0}]),
    not_a_number.filter(lambda v: not (isinstance(v, str) and v.strip().lower() in ("inf", "+inf", "infinity")))
    .map(lambda v: [{"ids": "0-4", "defense": "dpsgd", "epsilon": v}]),
    st.sampled_from(["dpsgd", "ladp"]).map(lambda d: [{"ids": "0-4", "defense": d}]),
)
bad_file_values = st.one_of(
    st.sampled_from(INT_KEYS).flatmap(lambda key: st.tuples(st.just(key), not_an_int | out_of_range_int(key))),
    st.sampled_from(FLOAT_KEYS).flatmap(lambda key: st.tuples(st.just(key), not_a_number | bad_float(key))),
    st.sampled_from(["dataset", "model", "partition", "device", "client_dp", "out"]).flatmap(
        lambda key: st.tuples(st.just(key), not_a_text)),
    st.tuples(st.just("download"), st.integers() | st.text(max_size=4)),
    st.tuples(st.just("attacks"), st.integers() | st.booleans() | st.lists(attack_name, max_size=6).filter(is_bad_attack_list)),
    st.tuples(st.just("client"), st.integers() | st.text(max_size=4) | st.lists(st.integers(), min_size=1, max_size=2) | bad_groups),
    st.tuples(identifier.filter(lambda key: key.replace("_", "-") not in FILE_KEYS), st.integers()),
)


@FUZZ
@given(bad=bad_file_values)
def test_generated_bad_config_file_values_are_one_line(bad, tripwire, tmp_path_factory):
    key, value = bad
    config = tmp_path_factory.mktemp("toml") / "config.toml"
    config.write_text(tomli_w.dumps({"clients": 20, "out": tripwire, key: value}))
    assert_refused(["simulate", "--config", str(config)])
