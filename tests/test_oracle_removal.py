"""``defense: oracle_removal``: the same split with every known poison removed (a reference row), and
the report's vacuous / genuine targeted trials that it enables (Carlini 2021, Table 1)."""

from __future__ import annotations

import copy
import json

import torch
import yaml

from lightning_ssl_backdoor.cli import main
from lightning_ssl_backdoor.data.split import PoisonedSplit
from lightning_ssl_backdoor.defenses import OracleRemoval
from lightning_ssl_backdoor.report.diagnostics import diagnostics_markdown

from tests.test_baseline_runner import SETTING


def test_oracle_removal_drops_exactly_the_poisons_of_both_pools(digits_split):
    base = digits_split
    lab = torch.zeros(len(base.labeled), dtype=torch.bool)
    unl = torch.zeros(len(base.unlabeled), dtype=torch.bool)
    lab[[1, 4]] = True
    unl[[0, 2, 7]] = True
    split = PoisonedSplit(**{**{f: getattr(base, f) for f in base.__dataclass_fields__},
                             "labeled_poison_mask": lab, "unlabeled_poison_mask": unl,
                             "attack": {"pool": "unlabeled"}})
    out, info = OracleRemoval().filter(split, ctx=None)
    assert info == {"removed_labeled": 2, "removed_unlabeled": 3}
    assert len(out.labeled) == len(split.labeled) - 2 and len(out.unlabeled) == len(split.unlabeled) - 3
    assert not out.labeled_poison_mask.any() and not out.unlabeled_poison_mask.any()
    keep = torch.nonzero(~unl).flatten()
    assert torch.equal(out.unlabeled.images, split.unlabeled.images[keep])
    assert torch.equal(out.labeled_indices, split.labeled_indices[torch.nonzero(~lab).flatten()])


def test_oracle_removal_lowers_asr_through_the_runner(tmp_path):
    setting = copy.deepcopy(SETTING)
    setting["defenses"] = [None, {"name": "oracle_removal"}]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(setting))
    out = tmp_path / "run"
    assert main(["experiment", "-c", str(path), "--output", str(out), "--no_progress", "true"]) == 0
    rows = {r["defense"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    none, ref = rows[None], rows["oracle_removal"]
    assert none["asr"] >= 70
    assert ref["asr"] <= 20 and ref["clean_accuracy"] >= none["clean_accuracy"] - 5
    assert ref["defense_info"]["removed_labeled"] == 12 and ref["defense_info"]["removed_unlabeled"] == 0


def test_targeted_trials_discount_what_the_no_poison_reference_already_gets():
    hits = {None: (100.0, 0.0, 100.0, 100.0), "clustering": (0.0, 0.0, 100.0, 100.0),
            "oracle_removal": (0.0, 0.0, 100.0, 0.0)}
    rows = [{"algorithm": "fixmatch", "attack": "interpolation", "defense": d, "seed": s, "target": s,
             "targeted_success": h[s], "defense_info": {}} for d, h in hits.items() for s in range(4)]
    md = "\n".join(diagnostics_markdown(rows))
    assert "| vacuous | genuine |" in md
    assert "| fixmatch | interpolation | none | 3/4 | 0:0:1 1:1:0 2:2:1 3:3:1 | n/a | n/a | n/a | 2 | 2/3 |" in md
    assert "| fixmatch | interpolation | clustering | 2/4 | 0:0:0 1:1:0 2:2:1 3:3:1 | n/a | n/a | n/a | 2 | 1/3 |" in md
    # without a reference row the table keeps its eight columns
    plain = "\n".join(diagnostics_markdown([r for r in rows if r["defense"] != "oracle_removal"]))
    assert "vacuous" not in plain
