"""Cluster pseudo-labels of Pal et al.'s Algorithm 2 (paper 002, Sec. 4.4).

"We cluster these embeddings into 10 (number of classes) clusters using K-Means clustering. Since,
for each of these clusters, we are aware of the ground truth labels, we pseudo-label the data in
each cluster through majority voting." Then, for any image ``x``, "predict its corresponding
cluster by the minimum Euclidean distance between the cluster centers and h_x".

- :func:`majority_labels`: each cluster takes the most frequent given label among its labeled
  members (the paper; two clusters may take the same class). Ties go to the smaller class index; a
  cluster with no labeled member takes the majority label of all labeled images.
- :func:`hungarian_labels`: a one-to-one cluster -> class map maximising the number of labeled
  images whose cluster's class equals their label (``scipy.optimize.linear_sum_assignment``);
  needs as many clusters as classes. Not the paper's rule: an option for when majority voting
  leaves classes without a cluster.
- :func:`cluster_pseudo_labels`: the class of the nearest centre and a confidence (the cosine
  similarity of the normalised embedding to that centre, which ranks the per-class top-k).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_ssl_backdoor.defenses.self_training.kmeans import nearest_centre
from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["ASSIGNMENTS", "agreement_matrix", "cluster_pseudo_labels", "hungarian_labels", "majority_labels"]

ASSIGNMENTS = ("majority", "hungarian")


def agreement_matrix(assign: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int) -> torch.Tensor:
    """``M[j, c]``: how many labeled images in cluster ``j`` carry label ``c``."""
    m = torch.zeros(k, num_classes, dtype=torch.long)
    m.index_put_((assign.long().cpu(), labels.long().cpu()), torch.ones(len(assign), dtype=torch.long), accumulate=True)
    return m


def majority_labels(assign: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int) -> torch.Tensor:
    """Class of each of the ``k`` clusters by majority vote of its labeled members ``[k]``."""
    m = agreement_matrix(assign, labels, k, num_classes)
    fallback = int(m.sum(0).argmax())
    out = m.argmax(1)  # first maximum: the smaller class index on ties
    out[m.sum(1) == 0] = fallback
    return out


def hungarian_labels(assign: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int) -> torch.Tensor:
    """One class per cluster, all distinct, maximising the labeled images that agree ``[k]``."""
    from scipy.optimize import linear_sum_assignment

    if k != num_classes:
        raise ConfigError(f"a one-to-one (hungarian) cluster assignment needs as many clusters as classes, got {k} and {num_classes}.")
    m = agreement_matrix(assign, labels, k, num_classes)
    rows, cols = linear_sum_assignment(m.numpy(), maximize=True)
    out = torch.empty(k, dtype=torch.long)
    out[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return out


def cluster_pseudo_labels(h: torch.Tensor, centres: torch.Tensor, cluster_class: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(confidence [N], class [N])`` of embeddings ``h`` (normalised here) from the nearest centre."""
    z = F.normalize(h.float(), dim=1)
    idx, _ = nearest_centre(z, centres.float())
    conf = (z * F.normalize(centres.float(), dim=1)[idx]).sum(1)
    return conf, cluster_class.to(idx.device)[idx]
