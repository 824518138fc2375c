"""docs/reuse.md runs as written: its python blocks, joined in order, run as one script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reuse.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_reuse_page_runs(tmp_path):
    blocks = _blocks("python")
    assert len(blocks) >= 6
    script = tmp_path / "reuse_page.py"
    script.write_text("\n\n".join(blocks))
    env = {k: v for k, v in os.environ.items() if k != "SSL_BACKDOOR_LIGHTNING"}  # the page shows the rule
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "clean accuracy after 5 steps:" in out and "ASR:" in out
    assert "SSL modules take dict batches" in out and "SSLDataModule" in out
    # section 7: one defense of each kind on a model of one's own, and the missing-member sentence
    assert "what each defense needs beyond forward: {" in out and "'fp': ('features', 'head', 'last_conv')" in out
    assert "spectral: flagged" in out and "activation_clustering: flagged" in out
    assert "fine-pruning removed" in out and "Backdoor Invalidator: ASR" in out
    assert "fine_prune needs a last_conv module" in out and "wrap_backbone(net, num_classes, last_conv=" in out


def test_reuse_page_yaml_parses():
    docs = [d for block in _blocks("yaml") for d in yaml.safe_load_all(block)]
    assert docs and all(d["model"]["class_path"] for d in docs)
