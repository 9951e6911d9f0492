"""results.json, report.md and the plots, all from the run's own files and results.

results.json is written first, so a failure while drawing loses no number.
"""

from __future__ import annotations

import json

import os
from pathlib import Path
from typing import Any

import numpy as np

from fedmia.inversion.base import GRADIENT_INVERSION
from fedmia.metrics import roc
from fedmia.preparation import PREPARATION_FILE
from fedmia.run import PreparedRun
from fedmia.timing import RunTimer

#: Image grids of inversions the report shows (every one is in reconstructions/).
MAX_REPORT_GRIDS = 12
PROTOCOL = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"

EPS_NOTE = ("Measured epsilon (**held-out**) is an audit-style lower bound from one run's attack, "
            "at 95% confidence (Clopper-Pearson): each scope's balanced evaluation set is cut into "
            "two seeded halves, balanced per class; every attack picks its threshold on the "
            "selection half, the attack with the largest bound there is kept, and the bound is "
            "computed at that single threshold on the other half, whose labels took no part in the "
            "choice. It is not a guarantee; a held-out bound above a formal epsilon would mean a "
            "bug in the accounting or the defense (or the 5% chance of a wrong bound). The "
            "**optimistic** figures are the largest bound over every attack and threshold on all "
            "labels: the choice is made on the labels the bound is computed from, so their 95% is "
            "nominal and they overstate the evidence; they are shown only for comparison.")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "inf" if value == float("inf") else f"{value:.{digits}f}"
    return str(value)


def formal_epsilon(row: dict[str, Any]) -> float | None:
    """A client's formal epsilon: its accountant's value, or infinity without DP."""
    privacy = row.get("privacy")
    return privacy["epsilon"] if privacy else float("inf")


def run_summary(run: PreparedRun) -> dict[str, Any]:
    c = run.config
    rounds = run.rundir.read_metrics()
    return {
        "out": str(run.rundir.path), "dataset": c.dataset, "model": c.model, "clients": c.clients,
        "rounds": c.rounds, "partition": c.partition, "seed": c.seed, "fraction": c.fraction,
        "final_test_accuracy": rounds[-1]["test_accuracy"] if rounds else None,
        "round_test_accuracy": [r["test_accuracy"] for r in rounds],
        "problems": [p for r in rounds for p in r["problems"]],
        "adversaries": list(c.adversaries), "querier_output": c.querier_output, "roles": list(c.roles),
    }


def protocol_link(out: str) -> str:
    """The protocol document, linked relative to the run directory when the repository has it."""
    if PROTOCOL.exists():
        return f"[docs/PROTOCOL.md]({Path(os.path.relpath(PROTOCOL, Path(out).resolve())).as_posix()})"
    return "docs/PROTOCOL.md in the fedmia repository"


def held_out_line(scope: dict[str, Any]) -> str:
    """The held-out bound with what it rests on: attack, threshold, the bound half's counts."""
    bound = scope["eps_bound"]
    return (f"Measured epsilon lower bound (held-out, 95%): **{_fmt(bound['eps_lower_bound'], 2)}**: "
            f"attack `{bound['attack']}` at threshold {bound['threshold']:.6g}, chosen on the "
            f"selection half (bound there {_fmt(bound['selection_bound'], 2)}); on the bound half "
            f"{bound['false_positives']} false positives of {bound['n_nonmembers']} non-members, "
            f"{bound['false_negatives']} false negatives of {bound['n_members']} members, delta "
            f"{bound['delta']:.1e}. Optimistic figure (max over attacks and thresholds on all "
            f"labels): {_fmt(scope['eps_lower_bound_optimistic'], 2)}.")


def attack_table(attacks: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| attack | AUC | balanced acc | advantage | TPR@1%FPR | TPR@0.1%FPR | optimistic eps lb "
             "| acc at adversary's threshold | members / non-members | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in attacks.items():
        lines.append(f"| {name} | {_fmt(m['auc'])} | {_fmt(m['balanced_accuracy'])} | "
                     f"{_fmt(m['advantage'])} | {_fmt(m['tpr_at_1pct_fpr'])} | "
                     f"{_fmt(m['tpr_at_01pct_fpr'])} | {_fmt(m['eps_lower_bound_optimistic'], 2)} | "
                     f"{_fmt(m['threshold_accuracy'])} | {m['n_members']} / {m['n_nonmembers']} | "
                     f"{_fmt(m.get('seconds'), 2)} |")
    return lines


ADVERSARY_TEXT = {
    "querier": "Adversary: anyone querying the final global model, seeing `{output}` per query. "
               "Members: the union of all clients' data.",
    "client": "Adversary: malicious client {client} ({role}), which sees only the global models it "
              "received (with their weights) and its own data. Members: the other clients' data.",
}


def release_lines(release: dict[str, Any] | None) -> list[str]:
    """What the release defense did to the querier's answers (labels are never changed)."""
    if not release:
        return []
    params = ", ".join(f"{key} {value}" for key, value in release["params"].items())
    return [f"Release defense: `{release['name']}` ({params}): every answer's predicted label unchanged; "
            f"{_fmt(release['changed_fraction'])} of {release['rows']} answers changed, mean L1 distortion "
            f"of the probability vector {_fmt(release['mean_l1'])} (max {_fmt(release['max_l1'])})."]


def adversary_sections(results: dict[str, Any], querier_output: str, roles: list[str]) -> list[str]:
    """One section per scope of the querier and of each malicious client."""
    lines: list[str] = []
    for scope, table in results.get("adversaries", {}).items():
        adversary = table["adversary"]
        if adversary == "querier":
            text = ADVERSARY_TEXT["querier"].format(output=querier_output)
        else:
            client = int(adversary.partition(":")[2])
            text = ADVERSARY_TEXT["client"].format(client=client, role=roles[client] if client < len(roles) else "")
        lines += [f"## Leakage to the {adversary} adversary (scope `{scope}`)", "", text,
                  *release_lines(table.get("release")),
                  f"Target test accuracy: {_fmt(table['test_accuracy'])}.", "",
                  held_out_line(table), "", *attack_table(table["attacks"]), ""]
    return lines


def cost_table(results: dict[str, Any]) -> list[str]:
    """Seconds per attack summed over its scopes, and the adversary's model training."""
    tables = [results["global"], *[r for r in results["clients"] if r.get("attacks")],
              *results.get("adversaries", {}).values()]
    totals: dict[str, float] = {}
    for table in tables:
        for name, m in table["attacks"].items():
            totals[name] = totals.get(name, 0.0) + (m.get("seconds") or 0.0)
    shadow = sum(t["seconds"]["shadow"] for t in tables if "seconds" in t)
    references = sum(t["seconds"]["references"] for t in tables if "seconds" in t)
    cached = all(t["seconds"]["references_cached"] for t in tables if "seconds" in t)
    lines = ["## Attack cost", "", "| what | seconds (all scopes) |", "|---|---|",
             f"| shadow models | {_fmt(shadow, 1)} |",
             f"| reference models{' (loaded from the cache)' if cached and references else ''} | {_fmt(references, 1)} |"]
    return lines + [f"| {name} (fit + score) | {_fmt(seconds, 2)} |" for name, seconds in totals.items()] + [""]


def formal_cells(privacy: dict[str, Any] | None) -> str:
    """Formal epsilon with what it rests on (PROTOCOL.md): accountant, delta, sigma, q, steps."""
    if not privacy:
        return "inf | - | - | - | -"
    return (f"{_fmt(privacy['epsilon'], 2)} ({privacy['accountant']}) | {privacy['delta']:.1e} | "
            f"{_fmt(privacy['noise_multiplier'], 3)} | {_fmt(privacy['sample_rate'], 3)} | {privacy['steps']}")


def client_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| client | defense | n train | train acc | test acc | gap | formal eps | delta | sigma | q "
             "| steps | measured eps lb (held-out) | optimistic eps lb | strongest attack | AUC "
             "| TPR@1%FPR | TPR@0.1%FPR | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if not row["trained"]:
            lines.append(f"| {row['client']} | {row['defense']} | {row['n_train']} | n/a | n/a | n/a | "
                         "n/a | - | - | - | - | n/a | n/a | n/a | n/a | n/a | n/a | never uploaded a model |")
            continue
        best = row["attacks"][row["strongest_attack"]]
        notes = ["stopped: budget spent"] if row.get("stopped") else []
        if row.get("epsilon_not_covering"):
            notes.append("formal eps is NOT a guarantee for this client; it does not cover: "
                         + "; ".join(row["epsilon_not_covering"]))
        note = "; ".join(notes)
        lines.append(f"| {row['client']} | {row['defense']} | {row['n_train']} | "
                     f"{_fmt(row['train_accuracy'])} | {_fmt(row['test_accuracy'])} | "
                     f"{_fmt(row['generalization_gap'])} | {formal_cells(row.get('privacy'))} | "
                     f"{_fmt(row['eps_lower_bound'], 2)} ({row['eps_bound']['attack']}) | "
                     f"{_fmt(row['eps_lower_bound_optimistic'], 2)} | "
                     f"{row['strongest_attack']} | {_fmt(best['auc'])} | "
                     f"{_fmt(best['tpr_at_1pct_fpr'])} | {_fmt(best['tpr_at_01pct_fpr'])} | {note} |")
    return lines


CLIENT_LEVEL_SCOPE = (
    "What this epsilon protects: a whole client's participation, against everyone who sees only "
    "what the server releases after adding noise: the other participants (the global models "
    "they receive) and whoever gets the final model. It does not protect against the server "
    "adversary whose attacks fill the rest of this report: the server sees every upload before "
    "it adds noise{clipping}, so the per-client leakage above is measured on un-noised models "
    "and this epsilon does not bound it.")
DELTA_RULE = ("Delta is 1 / (10 K) for K = {clients} clients: the unit protected is a client, so "
              "fedmia's default rule 1 / (10 n) is applied with n the number of clients, which keeps "
              "delta below 1 / K.")


def client_level_section(dp: dict[str, Any] | None, clients: int) -> list[str]:
    """Client-level DP (Flower's wrappers): the guarantee for a whole client's participation,
    and whom it holds against."""
    if not dp:
        return []
    guarantee = (f"epsilon {_fmt(dp['epsilon'], 2)} at delta {dp['delta']:.1e} ({dp['accountant']}, "
                 f"{dp['releases']} releases)" if dp["epsilon"] is not None else dp["note"])
    server_clips = dp["mode"].startswith("server-")
    clipping = " and, with server-side clipping, before it clips them" if server_clips else ""
    lines = ["## Client-level DP on the server", "",
             f"Mode `{dp['mode']}`, noise multiplier {dp['noise_multiplier']}, clipping norm "
             f"{dp['clipping_norm']}: {guarantee}.", "", CLIENT_LEVEL_SCOPE.format(clipping=clipping)]
    if dp["epsilon"] is not None:
        lines += ["", DELTA_RULE.format(clients=clients)]
    return lines + [""]


def _flat_details(details: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalar details with dotted keys (`memorization.pixels.fraction_closer`); lists, such as
    the closest pairs, are left to preparation.json."""
    flat: dict[str, Any] = {}
    for key, value in details.items():
        if isinstance(value, dict):
            flat.update(_flat_details(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            flat[f"{prefix}{key}"] = value
    return flat


def _detail_text(details: dict[str, Any]) -> str:
    return ", ".join(f"{key} {_fmt(value) if isinstance(value, float) else value}"
                     for key, value in _flat_details(details).items())


def preparation_section(preparation: dict[str, list[dict[str, Any]]] | None) -> list[str]:
    """What each client's defense prepared before the first round, or found in the cache."""
    if not preparation:
        return []
    lines = ["## Defense preparation", "",
             "Done once per client before the first round (teachers, diffusion models and their "
             "samples), kept in the preparation cache under a content key; `reused` means this run "
             "loaded it.", "", "| client | what | key | reused | seconds | details |", "|---|---|---|---|---|---|"]
    images = []
    for client, rows in preparation.items():
        for row in rows:
            lines.append(f"| {client} | {row['kind']} | `{row['key']}` | {'yes' if row['reused'] else 'no'} | "
                         f"{_fmt(row['seconds'], 1)} | {_detail_text(row['details'])} |")
            images += [f"![client {client} {row['kind']}]({path})" for path in row.get("files", [])
                       if path.endswith(".png")]
    return lines + [""] + [line for image in images for line in (image, "")]


def _inversion_row(entry: dict[str, Any]) -> str:
    where = f"| {entry['attack']} | `{entry['scope']}` |"
    if "skipped" in entry:
        return f"{where} skipped: {entry['skipped']} |"
    m = entry["metrics"]
    if entry["kind"] == GRADIENT_INVERSION:
        label = "n/a" if m["label_accuracy"] is None else _fmt(m["label_accuracy"])
        numbers = (f"round {entry['round']}, {entry['num_examples']} records, local steps {entry['local_steps']}"
                   f": PSNR {_fmt(m['psnr'], 1)} dB, SSIM {_fmt(m['ssim'])}, MSE {_fmt(m['mse'], 4)}, "
                   f"labels {label}")
    else:
        numbers = (f"class {entry['class']}: attack accuracy {_fmt(m['attack_accuracy'])}, feature distance "
                   f"{_fmt(m['feature_distance'])}, Frechet {_fmt(m['frechet'], 1)}")
    return f"{where} {numbers} ({_fmt(entry['seconds']['attack'], 1)} s) |"


def inversion_section(inversion: dict[str, Any] | None) -> list[str]:
    """Reconstruction attacks: what each adversary recovered of the images."""
    if not inversion:
        return []
    lines = ["## Reconstruction (inversion attacks)", "",
             "Gradient inversion: the server reconstructs each client's records from its last upload; "
             "each reconstruction is paired with a distinct record by optimal assignment, compared in "
             "[0, 1] (PSNR with data range 1, SSIM, MSE). Model inversion: the adversary reconstructs a "
             "protected class from the final model; an evaluation classifier trained on the test pool "
             "(which no target trained on) judges the images: attack accuracy on the class, feature "
             "distance to the nearest private record of the class, Frechet distance to those records."]
    evaluator = inversion.get("evaluator")
    if evaluator:
        lines += ["", f"Evaluation classifier: {evaluator['records']} test records, accuracy "
                      f"{_fmt(evaluator['accuracy'])} on the held-out non-members."]
    lines += ["", "| attack | scope | result |", "|---|---|---|",
              *[_inversion_row(entry) for entry in inversion["results"]], ""]
    grids = [entry["file"].removesuffix(".npz") + ".png" for entry in inversion["results"] if "file" in entry]
    return lines + [line for grid in grids[:MAX_REPORT_GRIDS] for line in (f"![{grid}]({grid})", "")]


def render_report(results: dict[str, Any], preparation: dict[str, list[dict[str, Any]]] | None = None) -> str:
    run, timing, glob = results["run"], results["timing"], results["global"]
    lines = [
        f"# fedmia report: {run['out']}", "",
        f"{run['clients']} clients, {run['rounds']} rounds, dataset `{run['dataset']}`, model "
        f"`{run['model']}`, partition `{run['partition']}`, fraction {run['fraction']}, seed {run['seed']}.",
        "", f"Definitions and procedures: {protocol_link(run['out'])}.",
        "", "## Utility", "",
        f"Final global test accuracy: **{_fmt(run['final_test_accuracy'])}**. Per round (0 = initial): "
        + ", ".join(_fmt(a) for a in run["round_test_accuracy"]) + ".",
        f"Final global model on all clients' training data: train accuracy {_fmt(glob['train_accuracy'])}, "
        f"generalization gap (train - test) {_fmt(glob['generalization_gap'])}.",
        "", "## Leakage of the final global model (scope `global`)", "",
        "Adversary: the server (honest-but-curious), or anyone querying the final model. Members: "
        "the union of all clients' data; non-members: the held-out pool.", "",
        held_out_line(glob), "",
        *attack_table(glob["attacks"]),
        "", "## Leakage per client (scope `client:k`, each client's last upload)", "",
        "Adversary: the server, which sees every upload. Each client is attacked on its n train "
        "members and as many held-out non-members (per class, as far as the pool allows). TPR at "
        "1% (0.1%) FPR needs at least 100 (1,000) non-members, hence n/a for small clients. "
        "Train acc: the client's last upload on its own training data, evaluated after training; "
        "test acc: that upload on the test pool; gap: train minus test. The held-out bound names "
        "the attack chosen on the selection half.", "",
        *client_table(results["clients"]),
        "", EPS_NOTE, "",
        *preparation_section(preparation),
        *inversion_section(results.get("inversion")),
        *adversary_sections(results, run.get("querier_output", "logits"), run.get("roles", [])),
        *client_level_section(results.get("client_level_dp"), run["clients"]),
        "![log-scale ROC](roc.png)", "", "![privacy per client](privacy.png)", "",
        *cost_table(results),
        "## Time", "",
        "| phase | seconds |", "|---|---|",
        *[f"| {k.removesuffix('_s')} | {_fmt(v, 1)} |" for k, v in timing.items()],
    ]
    if run["problems"]:
        lines += ["", "## Problems during training", "",
                  *[f"- round {p['round']}, client {p['client']}: {p['reason']}" for p in run["problems"]]]
    lines += ["", "## Re-checking", "",
              "Every attack number above comes from `scores/<scope>__<attack>.npz` (scores, labels "
              "with 1 = member, dataset indices, halves with 0 = selection and 1 = bound half) "
              "through `fedmia.metrics.membership_metrics` and `held_out_bound`; "
              "`python -m fedmia check` recomputes them, and every inversion number from "
              "`reconstructions/` (the images, the records they stand for, the evaluator's weights). "
              "The split is in `manifest.json`, the models in `models/`."]
    return "\n".join(lines) + "\n"


def plot_roc(run: PreparedRun, results: dict[str, Any]) -> None:
    """Log-log ROC of the strongest attack on the global scope, on each client (orange) and on
    each other adversary's scope."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 5))
    scopes = [("global", results["global"]["strongest_attack"], "global", 2.0)]
    scopes += [(f"client:{r['client']}", r["strongest_attack"], None, 0.6)
               for r in results["clients"] if r["trained"]]
    scopes += [(scope, table["strongest_attack"], scope, 1.5)
               for scope, table in results.get("adversaries", {}).items()]
    smallest = 1.0
    for scope, attack, label, width in scopes:
        data = run.rundir.load_scores(scope, attack)
        fpr, tpr = roc(data["scores"], data["labels"])
        floor = 1.0 / max(int((data["labels"] == 0).sum()), 1)
        smallest = min(smallest, floor)
        color = "C1" if label is None else "C0" if label == "global" else None
        axis.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), lw=width, label=label,
                  color=color, alpha=1.0 if label else 0.35)
    axis.plot([smallest, 1], [smallest, 1], "k--", lw=0.8, label="chance")
    axis.set(xscale="log", yscale="log", xlim=(smallest, 1), ylim=(smallest, 1),
             xlabel="false positive rate", ylabel="true positive rate",
             title="ROC, strongest attack per scope (orange: clients)")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(run.rundir.path / "roc.png", dpi=120)
    plt.close(figure)


def plot_privacy(run: PreparedRun, results: dict[str, Any]) -> None:
    """Per client: formal epsilon next to the measured lower bound (top), and what protection
    costs and buys: test accuracy of the upload and the strongest attack's AUC (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["clients"] if r["trained"]]
    x = np.array([r["client"] for r in rows])
    measured = [r["eps_lower_bound"] for r in rows]
    formal = [formal_epsilon(r) for r in rows]
    ceiling = max([f for f in formal if f != float("inf")] + measured + [1.0]) * 1.25
    undefended = [f == float("inf") for f in formal]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, len(rows) * 0.45), 6.5), sharex=True)
    bars = top.bar(x - 0.2, [ceiling if u else f for f, u in zip(formal, undefended)], 0.4,
                   label="formal epsilon (hatched: no DP, infinite)", color="C2")
    for bar, no_dp in zip(bars, undefended):
        bar.set_hatch("//" if no_dp else "")
        bar.set_alpha(0.35 if no_dp else 1.0)
    top.bar(x + 0.2, measured, 0.4, label="measured epsilon lower bound (95%, held-out half)", color="C3")
    top.set(ylabel="epsilon", ylim=(0, ceiling), title="privacy per client: formal vs measured")
    top.legend(fontsize=8)
    bottom.bar(x - 0.2, [r["test_accuracy"] for r in rows], 0.4, color="C0", label="test accuracy of upload")
    bottom.bar(x + 0.2, [r["attacks"][r["strongest_attack"]]["auc"] for r in rows], 0.4, color="C1",
               label="strongest attack AUC")
    bottom.axhline(0.5, color="k", lw=0.8, ls="--")
    bottom.set(xlabel="client", ylim=(0, 1), xticks=x)
    bottom.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(run.rundir.path / "privacy.png", dpi=110)
    plt.close(figure)


def write_outputs(run: PreparedRun, evaluation: dict[str, Any], timer: RunTimer) -> dict[str, Any]:
    """results.json first, then the plots and report.md; returns the results."""
    results = {"run": run_summary(run), "timing": timer.as_dict(), **evaluation}
    run.rundir.write_json("results.json", results)
    with timer.phase("report"):
        plot_roc(run, results)
        plot_privacy(run, results)
    results["timing"] = timer.as_dict()
    run.rundir.write_json("results.json", results)
    preparation_file = run.rundir.path / PREPARATION_FILE
    preparation = json.loads(preparation_file.read_text()) if preparation_file.is_file() else None
    run.rundir.write_text("report.md", render_report(results, preparation))
    return results
