"""The README documents every public command, flag, config key, defense and release defense."""

from dataclasses import fields
from pathlib import Path

from fedmia.cli import build_parser
from fedmia.config import RunConfig
from fedmia.defenses import DEFENSES
from fedmia.inversion import INVERSIONS
from fedmia.release import RELEASE_DEFENSES

README = (Path(__file__).parent.parent / "README.md").read_text()


def flags(parser):
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            for sub in action.choices.values():
                yield from flags(sub)
        yield from (option for option in action.option_strings if option.startswith("--"))


def test_every_flag_and_config_key_is_in_the_readme():
    missing = sorted({flag for flag in flags(build_parser()) if f"`{flag}" not in README and flag != "--help"})
    assert not missing
    keys = [f.name.replace("_", "-") for f in fields(RunConfig) if f.name not in ("defenses", "roles")]
    assert not [key for key in keys if f"--{key}" not in README and f"`{key}" not in README]


def test_every_defense_and_release_defense_is_in_the_readme():
    assert not [name for name in DEFENSES if f"| `{name}` |" not in README]
    assert not [name for name in RELEASE_DEFENSES if f"`{name}[" not in README]


def test_every_inversion_attack_and_its_parameters_are_in_the_readme():
    for name, attack in INVERSIONS.items():
        row = next((line for line in README.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, name
        assert not [key for key in attack.parameters if f"`{key}`" not in row], name
