"""The registered defense ``invalidator``: a row's FixMatch / FlexMatch / MixMatch trained with
Backdoor Invalidator (BI, paper 001), whose training-time mixin is
:class:`~lightning_ssl_backdoor.defenses.invalidator.InvalidatorMixin`; this module swaps the row's
algorithm for the invalidated class, trains it once per set of training options and, for
``filter_triggered_test=True``, tests the model behind BI's blur."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lightning_ssl_backdoor.augment.gaussian import GaussianFilter
from lightning_ssl_backdoor.defenses.base import Defense, DefenseContext, register_defense
from lightning_ssl_backdoor.defenses.baselines._common import BehindTransform
from lightning_ssl_backdoor.defenses.invalidator import blur_quantised, invalidated_class
from lightning_ssl_backdoor.defenses.invalidator_core import OPTION_NAMES, check_options
from lightning_ssl_backdoor.errors import ConfigError
from lightning_ssl_backdoor.spec import Spec
from lightning_ssl_backdoor.ssl import resolve_algorithm

__all__ = ["Blur", "Invalidator"]


@register_defense
class Invalidator(Defense):
    """``defense: {name: invalidator, init_args: {...}}``: train the row's FixMatch / FlexMatch /
    MixMatch with BI; options as :func:`check_options` (``use_filter``, ``use_complementary``,
    ``use_mixup`` give the paper's Table 3 ablations; the labelled rows of
    :data:`~lightning_ssl_backdoor.defenses.invalidator_core.ABLATIONS` name them). The final
    transition matrix goes to ``defense_info``."""

    name = "invalidator"
    #: the options ``**options`` takes (listed in the published signature and typed by the parsers)
    signature_options = staticmethod(check_options)

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise ConfigError(
                f"invalidator does not take option(s) {', '.join(unknown)}; valid options: {', '.join(OPTION_NAMES)}."
            )
        check_options(**options)
        self.options = dict(options)

    def algorithm(self, ctx: DefenseContext) -> Spec:
        cls = invalidated_class(resolve_algorithm(ctx.algorithm.name))
        init_args = {**ctx.algorithm.init_args, **self.options}
        return Spec(f"{cls.__module__}.{cls.__name__}", init_args, ctx.algorithm.label)

    def run(self, ctx: DefenseContext) -> dict[str, Any]:
        """Train the row with BI, in a folder shared by the rows whose options differ only in
        ``filter_triggered_test`` (a test-time choice: ``bi`` and ``bi-test-filter`` are one
        training), and test it as this row's ``filter_triggered_test`` says."""
        opts = check_options(**self.options)
        trained_opts = {**opts, "filter_triggered_test": False}
        algorithm = self.algorithm(ctx)
        algorithm = Spec(algorithm.name, {**algorithm.init_args, "filter_triggered_test": False}, algorithm.label)
        workdir = ctx.shared_dir("invalidator", {"algorithm": algorithm.name, "options": trained_opts})
        res = dict(ctx.train(ctx.split, algorithm=algorithm, save_model=True, workdir=workdir))
        if opts["use_filter"] and opts["filter_triggered_test"]:
            res["test"] = self._test_filtered(res, ctx, opts["filter_radius"])
        info = dict(ctx.info)
        info["options"] = opts
        info["training"] = Path(workdir).name
        last = Path(workdir) / "checkpoints" / "last.ckpt"
        if opts["use_complementary"] and last.is_file():
            state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
            if "bi_transition" in state:
                info["transition_matrix"] = [[round(v, 4) for v in r] for r in state["bi_transition"].tolist()]
        res["defense_info"] = info
        return res

    @staticmethod
    def _test_filtered(res: dict[str, Any], ctx: DefenseContext, radius: float) -> dict[str, float]:
        """``filter_triggered_test=True``: the trained model behind the blur on every test input,
        triggered ones included (raw weights and, where kept, the ``_ema`` twin)."""
        blur = Blur(radius)
        models = ctx.load_model(res)
        test: dict[str, float] = {}
        for suffix, model in (("", models.raw), ("_ema", models.ema)):
            if model is not None:
                test.update({k + suffix: v for k, v in ctx.evaluate(BehindTransform(model, blur)).items()})
        return test


class Blur(torch.nn.Module):
    """BI's test-time filter on float ``[0, 1]`` images: the Gaussian blur, re-quantised to 8 bits
    (:meth:`~lightning_ssl_backdoor.defenses.invalidator.InvalidatorMixin.filter_images`)."""

    def __init__(self, radius: float) -> None:
        super().__init__()
        self.gaussian = GaussianFilter(radius)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blur_quantised(self.gaussian, x)
