"""DeNeB (Yan et al., "Deep Neural Backdoor in Semi-Supervised Learning", IEEE TIFS 2021; 000).

**Alg. 1, adversarial perturbation generator** (:func:`deneb_perturbation`). For an image u and
the surrogate theta_0 (features g, classifier f), minimise Eq. 16

    lambda * || g(u + P) - g(x~) ||_2  -  log f_t(u + P)      s.t. ||P||_inf <= eps

where x~ is the nearest (in g-space) target-class labeled image within a mini-batch B_l sampled
once per image (step 2); the nearest neighbour is recomputed every ``nn_every`` = 30 iterations
(their code; Alg. 1 writes every iteration). Step 4 is a gradient step ``P <- P - eta * grad``
(``update="grad"``, Alg. 1 literally; ``update="sign"`` takes the signed-gradient PGD step of Madry
et al. instead), then steps 5-8 clip P to [-eps, eps] and u + P to [0, 1]. ``eta`` starts at 0.01
and is multiplied by 0.95 every 200 iterations (Sec. VI-B.3; the decay in their code never fires,
here it does); eps = 32/255, lambda = 0.01, N = 1000 iterations by default.

**Alg. 2, contrastive data poisoning** (:class:`DeNeBAttack`). Our reading of Eq. 17-18 and Alg. 2:
for each selected unlabeled image u_i (any class: "randomly selected from the entire unlabeled
data"), the trigger is pasted to get u_i^delta; Alg. 1 is run twice, once on u_i (giving
P(u_i)) and once on u_i^delta (giving P(u_i^delta)); w1, w2 ~ Beta(1, beta) (beta = 9, so
E[w] = 0.1); the two poisons are

    weak   u^_i       = u_i       + w1 * P(u_i)             (no trigger; keeps u_i's pseudo-label)
    strong u^_i^delta = u_i^delta + (1 - w2) * P(u_i^delta) (trigger; pseudo-labelled as target)

With ``tie_w`` (default) one draw serves both, w1 = w2: the Discussion after Eq. 20 reports that
w1 = w2 "successfully alleviates the model's attention on the adversarial pattern and improves
the attack success rate" (the second term of Eq. 20 then vanishes); ``tie_w=False`` draws them
independently, as steps 5-7 of Alg. 2 are written.

Both are appended to the unlabeled set (originals stay, as in their code), so a budget of N
source images yields 2N poisons; both are marked in the poison mask. With ``injection="replace"``
the weak poison overwrites u_i and the strong one is appended. Both perturbations are convex
shrinkings of a feasible P, so they stay in [0, 1] and within eps; quantisation keeps every pixel
within ``floor(255 eps)`` grey levels of the clean (resp. triggered) image.

**Robustness to the weak view** (``eot`` > 0; our extension, off by default): FixMatch-class
learners pseudo-label an unlabeled image from its *weak* augmentation, and a perturbation found
for the un-augmented image alone rarely survives the random crop (on 16 px digits, theta_0 labels
55% of the poisons as the target without augmentation but 14% after a 2 px crop). With ``eot = K``
every step of Alg. 1 averages Eq. 16 over K random crops of u + P (pad ``eot_pad``, reflect;
expectation over transformations, Athalye et al. 2018), drawn up front from the attack's seed.

Batched: all poisons of a chunk are optimised together (losses summed, model frozen in eval
mode), every random draw (selection, B_l, w) is made up front from the seeded generator, so a
chunk size of 1 (one image at a time) gives the same result up to float rounding, and finished
chunks can be checkpointed and resumed (:class:`~lightning_ssl_backdoor.attacks.chunks.ChunkStore`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lightning_ssl_backdoor.attacks.adversarial import frozen, model_device, predict
from lightning_ssl_backdoor.attacks.base import Attack, Poisons, quantize_within
from lightning_ssl_backdoor.attacks.chunks import ChunkStore
from lightning_ssl_backdoor.augment import StrongAugment, WeakAugment, WeakParams
from lightning_ssl_backdoor.data.imageset import quantize
from lightning_ssl_backdoor.errors import ConfigError

UPDATES = ("grad", "sign")
FEATURE_TERMS = ("paper", "authors")
AUTHORS_BATCH = 64


def sample_beta_1(n: int, beta: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws of Beta(1, beta) by inverting its CDF ``1 - (1 - w)^beta`` (seeded, exact)."""
    if beta <= 0:
        raise ConfigError(f"beta must be positive, got {beta}.")
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return (1.0 - (1.0 - u) ** (1.0 / float(beta))).to(torch.float32)


def deneb_perturbation(
    model: torch.nn.Module,
    images: torch.Tensor,
    anchors: torch.Tensor,
    batch_index: torch.Tensor,
    target: int,
    eps: float = 32.0 / 255.0,
    steps: int = 1000,
    lr: float = 0.01,
    lr_decay: float = 0.95,
    decay_every: int = 200,
    nn_every: int = 30,
    lam: float = 0.01,
    update: str = "grad",
    chunk_size: int = 128,
    progress: bool = True,
    store: Optional[ChunkStore] = None,
    store_key: str = "",
    precision: str = "float32",
    eot_offsets: Optional[torch.Tensor] = None,
    eot_pad: int = 0,
    feature_term: str = "paper",
) -> torch.Tensor:
    """Alg. 1 for every image in ``images`` (float ``[P, C, H, W]``); returns the perturbations.

    ``anchors``: target-class labeled images (float ``[M, C, H, W]``); ``batch_index``: long
    ``[P, m]``, row i = the mini-batch B_l of image i (indices into ``anchors``). Images are
    optimised ``chunk_size`` at a time; with ``store``, finished chunks are saved and reused.

    Any chunk size computes the same thing; in float32, convolutions round differently for
    different batch sizes and a rounding difference that crosses a ReLU kink changes a gradient,
    so results of different chunk sizes agree to ~1e-4. ``precision="float64"`` (a float64 copy of
    the model; slower) makes them agree to ~1e-15.

    ``eot_offsets``: optional uint8 ``[P, steps, K, 2]`` crop offsets (top, left) in ``[0, 2 *
    eot_pad]``, or ``[P, steps, K, 3]`` with a horizontal-flip bit third (the victim's weak view
    flips too); step n of image i then averages the loss over its K views of the padded u + P.

    ``feature_term``: ``"paper"`` is Eq. 16 as printed, per image ``lambda * ||g(u+P) - g(x~)||_2 +
    CE``; ``"authors"`` is the scale of the authors' code, a batch-mean CE plus lambda times a sum
    of squares: per image ``lambda * ||g(u+P) - g(x~)||_2^2 + CE / AUTHORS_BATCH`` with a fixed
    ``AUTHORS_BATCH`` = 64 (the paper's batch size), so the feature term is roughly 1000x stronger
    than in the printed equation while each image's gradient still depends only on that image
    (chunking does not change the result).
    """
    if precision not in ("float32", "float64"):
        raise ConfigError(f"precision must be 'float32' or 'float64', got {precision!r}.")
    if update not in UPDATES:
        raise ConfigError(f"update must be one of {list(UPDATES)}, got {update!r}.")
    if feature_term not in FEATURE_TERMS:
        raise ConfigError(f"feature_term must be one of {list(FEATURE_TERMS)}, got {feature_term!r}.")
    if steps < 0 or eps <= 0 or lr <= 0 or nn_every < 1 or decay_every < 1 or chunk_size < 1:
        raise ConfigError(
            "DeNeB needs steps >= 0, eps > 0, lr > 0 and nn_every, decay_every, chunk_size >= 1."
        )
    if batch_index.shape[0] != images.shape[0]:
        raise ConfigError("batch_index needs one row (a mini-batch of anchors) per image.")
    if eot_offsets is not None and (eot_offsets.shape[:2] != (images.shape[0], steps) or eot_offsets.shape[3] not in (2, 3)
                                    or (eot_offsets.numel() and int(eot_offsets.max()) > 2 * int(eot_pad))):
        raise ConfigError("eot_offsets must be [P, steps, K, 2] crop offsets within [0, 2 * eot_pad].")
    dev = model_device(model)
    out = torch.empty_like(images)
    store = store or ChunkStore(None)
    if precision == "float64":
        model = copy.deepcopy(model).double()
        images, anchors = images.double(), anchors.double()
    with frozen(model):
        with torch.no_grad():
            feats = torch.cat([model.features(anchors[i : i + 512].to(dev)) for i in range(0, len(anchors), 512)])
        n_chunks = (len(images) + chunk_size - 1) // chunk_size
        for c in range(n_chunks):
            lo, hi = c * chunk_size, min(len(images), (c + 1) * chunk_size)
            key = f"{store_key}|{lo}:{hi}"
            key += "" if eot_offsets is None else f"|eot{tuple(eot_offsets.shape)}"
            key += "" if feature_term == "paper" else f"|{feature_term}"
            cached = store.load("deneb", c, key + f"|{precision}")
            if cached is not None:
                out[lo:hi] = cached["delta"].to(out.device, out.dtype)
                continue
            delta = _optimise_chunk(
                model, images[lo:hi].to(dev), feats, batch_index[lo:hi].to(dev), int(target), float(eps),
                int(steps), float(lr), float(lr_decay), int(decay_every), int(nn_every), float(lam), update,
                progress, f"DeNeB {c + 1}/{n_chunks}",
                None if eot_offsets is None else eot_offsets[lo:hi].to(dev), int(eot_pad),
                feature_term,
            )
            out[lo:hi] = delta.to(device=out.device, dtype=out.dtype)
            store.save("deneb", c, key + f"|{precision}", {"delta": delta.to(out.dtype)})
    return out


def _optimise_chunk(model, u, feats, bidx, target, eps, steps, lr, lr_decay, decay_every, nn_every, lam,
                    update, progress, desc, offsets=None, pad=0, feature_term="paper") -> torch.Tensor:
    P = torch.zeros_like(u)
    b = u.shape[0]
    views = 1 if offsets is None else offsets.shape[2]
    tgt = torch.full((b * views,), target, dtype=torch.long, device=u.device)
    batch_feats = feats[bidx]  # [b, m, D]
    nearest = None
    crop = None
    if offsets is not None:
        crop = WeakAugment(flip=False, pad=pad)
        no_flip = torch.zeros(b * views, dtype=torch.bool, device=u.device)
        flips = offsets.shape[3] == 3
    for n in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        P.requires_grad_(True)
        x = u + P
        if crop is not None:  # K crops per image, view-major: rows k * b .. (k + 1) * b - 1
            o = offsets[:, n].long().permute(1, 0, 2).reshape(-1, offsets.shape[3])
            flip = o[:, 2].bool() if flips else no_flip
            x = crop.apply_params(x.repeat(views, 1, 1, 1), WeakParams(flip, o[:, 0], o[:, 1]))
        g = model.features(x)
        logits = model.head(g)
        if n % nn_every == 0:  # step 3: nearest labeled target-class sample in B_l, in g-space
            with torch.no_grad():
                g_mean = g.detach().view(views, b, -1).mean(0)
                d = ((g_mean.unsqueeze(1) - batch_feats) ** 2).sum(-1)
                nearest = batch_feats[torch.arange(b, device=g.device), d.argmin(1)]
        sq = ((g - nearest.repeat(views, 1)) ** 2).sum(1)
        ce = F.cross_entropy(logits, tgt, reduction="none")
        if feature_term == "paper":
            loss = (lam * sq.add(1e-12).sqrt() + ce).sum() / views
        else:
            loss = (lam * sq + ce / AUTHORS_BATCH).sum() / views
        (grad,) = torch.autograd.grad(loss, P)
        eta = lr * lr_decay ** (n // decay_every)
        with torch.no_grad():
            step = grad if update == "grad" else grad.sign()
            P = (P - eta * step).clamp(-eps, eps)  # steps 4-5
            P = (u + P).clamp(0.0, 1.0) - u  # steps 6-8
    return P.detach()


def _fingerprint(config, chosen, images, anchors, model) -> str:
    """Identifies the work of a DeNeB run (config, sources, pixels, anchors, surrogate weights), so
    checkpointed chunks are reused only for exactly the same optimisation."""
    h = hashlib.sha256(json.dumps([config, chosen.tolist()], sort_keys=True).encode())
    for t in (images, anchors, *model.state_dict().values()):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class DeNeBAttack(Attack):
    """DeNeB (Yan et al. 2021, Alg. 1 + Alg. 2); see the module docstring for our reading.

    Args (beyond :class:`Attack`): ``eps``, ``steps``, ``lr``, ``lr_decay``, ``decay_every``,
    ``nn_every``, ``lam`` (lambda of Eq. 16), ``update`` ("grad" or "sign"), ``beta`` (w ~
    Beta(1, beta)), ``anchor_batch`` (size of B_l), ``chunk_size`` (poisons optimised together),
    ``precision`` ("float32", or "float64" for results independent of ``chunk_size`` to ~1e-15),
    ``eot`` (weak-view crops averaged per step; 0 = Alg. 1 as written) and ``eot_pad`` (their
    padding; default 1/8 of the image side, FixMatch's weak crop), ``eot_flip`` (the EOT views
    also flip horizontally at random, as the victim's weak view does), ``feature_term`` ("paper":
    Eq. 16 as printed; "authors": their code's scale, see :func:`deneb_perturbation`), ``tie_w`` (w1 = w2, the
    paper's finding; False: independent draws). The budget counts source images (each gives a weak and a strong poison).
    """

    name = "deneb"
    requires_model = True
    default_budget = {"budget_rate": 0.01}
    default_trigger = {"name": "deneb"}

    def __init__(
        self,
        *,
        eps: float = 32.0 / 255.0,
        steps: int = 1000,
        lr: float = 0.01,
        lr_decay: float = 0.95,
        decay_every: int = 200,
        nn_every: int = 30,
        lam: float = 0.01,
        update: str = "grad",
        beta: float = 9.0,
        anchor_batch: int = 64,
        chunk_size: int = 128,
        precision: str = "float32",
        eot: int = 0,
        eot_pad: Optional[int] = None,
        eot_flip: bool = False,
        feature_term: str = "paper",
        tie_w: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if precision not in ("float32", "float64"):
            raise ConfigError(f"precision must be 'float32' or 'float64', got {precision!r}.")
        if update not in UPDATES:
            raise ConfigError(f"update must be one of {list(UPDATES)}, got {update!r}.")
        if not 0 < float(eps) <= 1 or int(steps) < 0 or float(lr) <= 0 or float(beta) <= 0 or int(anchor_batch) < 1:
            raise ConfigError("DeNeB needs 0 < eps <= 1, steps >= 0, lr > 0, beta > 0 and anchor_batch >= 1.")
        if int(chunk_size) < 1 or int(nn_every) < 1 or int(decay_every) < 1:
            raise ConfigError("DeNeB needs chunk_size, nn_every and decay_every >= 1.")
        self.eps, self.steps, self.lr = float(eps), int(steps), float(lr)
        self.lr_decay, self.decay_every, self.nn_every = float(lr_decay), int(decay_every), int(nn_every)
        self.lam, self.update, self.beta = float(lam), str(update), float(beta)
        self.anchor_batch, self.chunk_size = int(anchor_batch), int(chunk_size)
        self.precision = str(precision)
        if int(eot) < 0 or (eot_pad is not None and int(eot_pad) < 0):
            raise ConfigError(f"DeNeB needs eot >= 0 and eot_pad >= 0, got {eot} and {eot_pad}.")
        self.eot, self.eot_pad = int(eot), None if eot_pad is None else int(eot_pad)
        self.tie_w = bool(tie_w)
        if feature_term not in FEATURE_TERMS:
            raise ConfigError(f"feature_term must be one of {list(FEATURE_TERMS)}, got {feature_term!r}.")
        self.eot_flip, self.feature_term = bool(eot_flip), str(feature_term)

    def craft(self, split, pool, chosen, model, trigger, generator) -> Poisons:
        anchors_mask = split.labeled.labels == self.target
        if not bool(anchors_mask.any()):
            raise ConfigError(
                f"DeNeB needs labeled images of the target class {self.target} (feature matching); "
                "the labeled set has none."
            )
        anchors = split.labeled.float()[anchors_mask]
        P = len(chosen)
        u = pool.float()[chosen]
        ut = trigger(u)
        m = min(self.anchor_batch, len(anchors))
        bidx = torch.stack([torch.randperm(len(anchors), generator=generator)[:m] for _ in range(2 * P)])
        w1 = sample_beta_1(P, self.beta, generator)
        w2 = w1.clone() if self.tie_w else sample_beta_1(P, self.beta, generator)
        offsets, pad = None, 0
        if self.eot:
            h = u.shape[-1]
            pad = self.eot_pad if self.eot_pad is not None else max(1, round(h / 8))
            offsets = torch.randint(0, 2 * pad + 1, (2 * P, self.steps, self.eot, 2), generator=generator,
                                    dtype=torch.uint8)
            if self.eot_flip:
                flip = torch.randint(0, 2, (2 * P, self.steps, self.eot, 1), generator=generator, dtype=torch.uint8)
                offsets = torch.cat([offsets, flip], dim=3)
        key = _fingerprint(self.config(), chosen, u, anchors, model)
        delta = deneb_perturbation(
            model, torch.cat([u, ut]), anchors, bidx, self.target, self.eps, self.steps, self.lr,
            self.lr_decay, self.decay_every, self.nn_every, self.lam, self.update, self.chunk_size,
            self.progress, ChunkStore(self.work_dir), key, self.precision, offsets, pad, self.feature_term,
        )
        view = (-1, 1, 1, 1)
        weak = u + w1.view(view) * delta[:P]
        strong = ut + (1.0 - w2).view(view) * delta[P:]
        weak_q = quantize_within(weak, pool.images[chosen], self.eps)
        strong_q = quantize_within(strong, quantize(ut), self.eps)
        true = pool.targets[chosen]
        info: Dict[str, Any] = {"num_sources": P, "num_anchors": int(len(anchors)), "anchor_batch": m}
        clean_pred = predict(model, u)
        info["theta0_strong_target_rate"] = float((predict(model, strong_q.float() / 255) == self.target).float().mean())
        info["theta0_weak_kept_rate"] = float((predict(model, weak_q.float() / 255) == clean_pred).float().mean())

        strong_x = strong_q.float() / 255
        crop = WeakAugment(flip=False, pad=pad or max(1, round(u.shape[-1] / 8)))
        if self.eot:  # the same, seen through one random weak crop (what the victim pseudo-labels)
            g_view = torch.Generator().manual_seed(int(self.seed) + 7)
            info["theta0_strong_target_rate_weak_view"] = float(
                (predict(model, crop(strong_x, generator=g_view)) == self.target).float().mean())
        g_view = torch.Generator().manual_seed(int(self.seed) + 11)  # what FixMatch trains on
        strong_view = StrongAugment(n=2, m=10)(crop(strong_x, generator=g_view), generator=g_view)
        info["theta0_strong_target_rate_strong_view"] = float((predict(model, strong_view) == self.target).float().mean())
        info["theta0_trigger_only_target_rate"] = float((predict(model, ut) == self.target).float().mean())
        return Poisons(
            images=torch.cat([weak_q, strong_q]),
            sources=torch.cat([chosen, chosen]),
            true_labels=torch.cat([true, true]),
            meta={
                "kind": torch.cat([torch.zeros(P, dtype=torch.int8), torch.ones(P, dtype=torch.int8)]),
                "w": torch.cat([w1, w2]),
                "triggered": torch.cat([torch.zeros(P, dtype=torch.bool), torch.ones(P, dtype=torch.bool)]),
            },
            info=info,
        )
