"""Command line: `python -m fedmia simulate|attack|check`.

Bad input of any kind ends in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from fedmia.config import (MAX_BATCH_SIZE, MAX_CLIENTS, MAX_LOCAL_EPOCHS, MAX_ROUNDS, NUMERIC_KEYS,
                           RunConfig, load_toml, parse_attacks, parse_classes, parse_inversions, parse_names,
                           resolve_config)
from fedmia.errors import FedmiaError
from fedmia.rundir import RunDirectory

USAGE_ERROR = 2

# Per-client defense parameters accepted on the command line as comma lists.
DEFENSE_PARAM_FLAGS = {
    "epsilon": "target epsilon per client for DP defenses; a comma list is spread over the "
               "clients in order in equal blocks, so its length must divide --clients "
               "(1,4,8,inf: four blocks); inf = no DP for those clients",
    "delta": "delta per client for DP defenses (default: 1/(10 n_k) for a client with n_k examples)",
    "max-grad-norm": "per-sample clipping norm C for DP defenses (default: 1.0)",
    "accountant": "privacy accountant for DP defenses: rdp (default) or prv",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line with exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"fedmia: error: {message} (see `{self.prog} --help`)\n")


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in fields(RunConfig) if f.name not in ("defenses", "roles")}


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    d = _defaults()
    flag = parser.add_argument
    flag("--config", type=Path, help="TOML file with any of the keys below and [[client]] groups; "
                                     "flags override it")
    flag("--clients", type=int, help=f"number of clients, at most {MAX_CLIENTS} (default: {d['clients']})")
    flag("--rounds", type=int, help=f"federated rounds, at most {MAX_ROUNDS} (default: {d['rounds']})")
    flag("--dataset", help=f"digits, fashion-mnist, mnist, cifar10, cifar100 (default: {d['dataset']})")
    flag("--dataset-size", type=int, help="use a seeded, label-stratified draw of this many samples of the "
                                          f"dataset; 0 = all (default: {d['dataset_size']})")
    flag("--public-size", type=int, help="set this many samples aside as a public pool every client may "
                                         f"use (distill's reference set); 0 = none (default: {d['public_size']})")
    flag("--model", help=f"cnn, resnet18, vgg11 (default: {d['model']})")
    flag("--partition", help=f"iid, dirichlet:ALPHA or classes:K (default: {d['partition']})")
    flag("--local-epochs", type=int, help=f"local epochs per round, at most {MAX_LOCAL_EPOCHS} "
                                          f"(default: {d['local_epochs']})")
    flag("--batch-size", type=int, help=f"local batch size, at most {MAX_BATCH_SIZE}; 0: the whole client data (default: {d['batch_size']})")
    flag("--lr", type=float, help=f"local SGD learning rate (default: {d['lr']})")
    flag("--fraction", type=float, help=f"fraction of clients per round (default: {d['fraction']})")
    flag("--seed", type=int, help=f"seed for split, weights and training, 0 to 2^32-1 (default: {d['seed']})")
    flag("--out", help="run directory; must be new or empty (default: "
                       "runs/<dataset>-<clients>c-<rounds>r-seed<seed>)")
    flag("--overwrite", action="store_true", help="replace the run already in --out (only a fedmia "
                                                  "run directory is ever cleared)")
    flag("--data-dir", help="folder holding the dataset files; must exist unless --download "
                            "(default: $FEDMIA_DATA, then the Debian dataset folder for fashion-mnist)")
    flag("--cache-dir", help="folder for defenses' one-time preparation (diffusion models, teachers), "
                             "reused by later rounds and runs (default: $FEDMIA_CACHE_DIR, then ~/.cache/fedmia)")
    flag("--download", action="store_true", default=None,
         help="let torchvision download the dataset when online (default: off)")
    flag("--device", help=f"cpu or cuda[:N] (default: {d['device']})")
    flag("--client-cpus", type=float, help=f"CPUs per Ray client actor (default: {d['client_cpus']})")
    flag("--client-gpus", type=float, help=f"GPU fraction per Ray client actor, for --device cuda "
                                           f"(default: {d['client_gpus']})")
    flag("--attacks", help="comma list of attacks, each name[:key=value...], e.g. loss,rmia:refs=4 "
                           "(default: " + ",".join(d["attacks"]) + ")")
    _add_adversary_flags(parser)
    flag("--keep-uploads", help="uploads the server keeps for trajectory attacks: all, last or every:N "
                                f"(default: {d['keep_uploads']})")
    flag("--defense", help="local defense for every client: none, dpsgd, ladp, mixup, distill, ..., or "
                           "parts joined with + such as label-smoothing+dpsgd (default: none)")
    for name, text in DEFENSE_PARAM_FLAGS.items():
        flag(f"--{name}", help=text)
    flag("--defense-param", action="append", metavar="KEY=VALUE",
         help="any parameter of --defense, e.g. --defense-param alpha=0.2; repeatable; a comma list "
              "is spread over the clients like --epsilon")
    flag("--client-dp", help="client-level DP on the server through Flower's wrappers: off, "
                             "server-fixed, client-fixed, server-adaptive, client-adaptive "
                             f"(default: {d['client_dp']})")
    flag("--client-dp-noise", type=float, help=f"client-level DP noise multiplier (default: {d['client_dp_noise']})")
    flag("--client-dp-clip", type=float, help=f"client-level DP (initial) clipping norm (default: {d['client_dp_clip']})")
    _add_attack_workers_flag(parser)
    flag("-v", "--verbose", action="store_true", help="show Flower's and Ray's logs")


def _add_attack_workers_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--attack-workers", type=int,
                        help="processes attacking scopes in parallel, same results as 1; 0 = one "
                             f"per CPU, 1 = serial (default: {_defaults()['attack_workers']})")


def _add_adversary_flags(parser: argparse.ArgumentParser) -> None:
    d = _defaults()
    parser.add_argument("--adversaries", help="comma list: server (always), querier; malicious clients come "
                                              "from [[client]] role = \"malicious\" "
                                              f"(default: {','.join(d['adversaries'])})")
    parser.add_argument("--querier-output", help="what the querier sees per query: logits, top-k:N or label "
                                                 f"(default: {d['querier_output']})")
    parser.add_argument("--release", help="defense on the released model's answers to the querier: none, "
                                          "memguard[:epsilon=X...] (needs --public-size) or top-k[:k=N] "
                                          f"(default: {d['release']})")
    parser.add_argument("--inversions", help="comma list of reconstruction attacks after the membership attacks: "
                                             "gradient inversion on each client's upload (dlg, idlg, "
                                             "inverting-gradients), model inversion on the final model "
                                             "(mi-face, gmi), each name[:key=value...]; none (default)")
    parser.add_argument("--protected-classes", help="comma list of the classes model inversion reconstructs "
                                                    f"(default: {','.join(map(str, d['protected_classes']))})")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m fedmia", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    simulate = commands.add_parser("simulate", help="train a federation, attack it, write a report")
    _add_run_flags(simulate)
    attack = commands.add_parser("attack", help="run the attack phase and report again on a run's "
                                                 "saved models (e.g. after it failed or with other attacks)")
    attack.add_argument("run_dir", type=Path, help="a run directory whose training finished")
    attack.add_argument("--attacks", help="comma list of attacks (default: the run's own)")
    _add_adversary_flags(attack)
    _add_attack_workers_flag(attack)
    check = commands.add_parser("check", help="recompute every attack number of a run from its files")
    check.add_argument("run_dir", type=Path, help="a run directory written by simulate")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    file_data = load_toml(args.config) if args.config else None
    flags = {name: getattr(args, name, None) for name in _defaults()}
    flags.update(attack_flags(args))
    params = {name.replace("-", "_"): getattr(args, name.replace("-", "_"))
              for name in DEFENSE_PARAM_FLAGS if getattr(args, name.replace("-", "_")) is not None}
    params.update(defense_param_flags(getattr(args, "defense_param", None) or []))
    return resolve_config(file_data, flags, args.defense, params)


def defense_param_flags(items: list[str]) -> dict[str, str]:
    """`--defense-param alpha=0.2` (repeatable) -> {"alpha": "0.2"}."""
    params: dict[str, str] = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key.strip() or not value.strip():
            raise FedmiaError(f"--defense-param {item!r} is not KEY=VALUE; write e.g. --defense-param alpha=0.2")
        params[key.strip().replace("-", "_")] = value.strip()
    return params


def attack_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The attack-phase settings given as flags (simulate and attack share them)."""
    flags: dict[str, Any] = {}
    if args.attacks is not None:
        flags["attacks"] = parse_attacks(args.attacks)
    if args.adversaries is not None:
        flags["adversaries"] = parse_names(args.adversaries, "adversaries")
    if args.querier_output is not None:
        flags["querier_output"] = args.querier_output
    if args.release is not None:
        flags["release"] = args.release
    if args.inversions is not None:
        flags["inversions"] = parse_inversions(args.inversions)
    if args.protected_classes is not None:
        flags["protected_classes"] = parse_classes(args.protected_classes)
    return flags


def run_simulate(args: argparse.Namespace) -> None:
    from fedmia.simulation import simulate
    from fedmia.summary import print_summary

    config = config_from_args(args)
    RunDirectory(config.out).ensure_fresh(args.overwrite)
    results = simulate(config, verbose=args.verbose)
    print_summary(results)


def run_attack(args: argparse.Namespace) -> None:
    from fedmia.evaluation import reattack
    from fedmia.summary import print_summary

    if args.attack_workers is not None:
        NUMERIC_KEYS["attack_workers"].check("attack_workers", args.attack_workers)
    rundir = RunDirectory(args.run_dir)
    rundir.verify_trained()
    results = reattack(args.run_dir, attack_flags(args), args.attack_workers)
    rundir.remove_stale_scores(results)
    print_summary(results)


def run_check(args: argparse.Namespace) -> None:
    from fedmia.summary import check_run

    mismatches = check_run(args.run_dir)
    if mismatches:
        raise FedmiaError(f"{len(mismatches)} numbers differ from results.json, first: {mismatches[0]}")
    print(f"{args.run_dir}: every attack metric in results.json matches its saved scores")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"simulate": run_simulate, "attack": run_attack, "check": run_check}[args.command](args)
    except FedmiaError as error:
        print(f"fedmia: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("fedmia: interrupted; finished rounds are kept in the run directory", file=sys.stderr)
        return 130
    return 0
