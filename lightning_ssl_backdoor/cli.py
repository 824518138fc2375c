"""The ``ssl-backdoor`` console script.

``fit | validate | test`` go through LightningCLI (YAML configs, command-line values override YAML
values, TensorBoard logging, a progress bar); ``poison`` runs an attack and writes a PoisonedSplit
artifact; ``experiment`` runs the whole attack -> defense -> training -> evaluation flow.

Errors: every expected fault is printed as one sentence (no traceback) by
:func:`lightning_ssl_backdoor.error_boundary.guarded`; exit code 2 for a bad command, config or
input file, 1 for a fault at run time, 130 for Ctrl-C (with how to resume).

Resuming: ``experiment`` and ``poison`` resume by themselves when the same command is run again.
``fit`` writes checkpoints into its run folder (``lightning_logs/version_N/checkpoints``); Ctrl-C
saves ``last.ckpt`` there at the next step boundary and prints the command that resumes from it
(the same command plus ``--ckpt_path .../last.ckpt``). All checkpoints are written atomically
and loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import sys
from typing import Optional

from lightning_ssl_backdoor.error_boundary import guarded

USAGE = """usage: ssl-backdoor {fit,validate,test,poison,experiment,report} [-h] [-c CONFIG.yaml ...] [options]

Backdoor attacks and defenses in semi-supervised learning.

subcommands:
  fit          train an SSL LightningModule (LightningCLI; -c CONFIG.yaml, repeatable)
  validate     evaluate on the validation (test-set) loaders
  test         evaluate clean accuracy and attack success rate on the test set
  poison       run an attack and write a PoisonedSplit artifact (npz with its JSON manifest inside)
  experiment   run attack -> defenses -> SSL training -> evaluation -> report
  report       `report merge DIR... --output DIR`: one report from the shards of a grid (--only);
               `report render DIR`: redraw every table and figure from DIR/results.json

exit codes: 0 done, 2 bad command/config/input file, 1 fault at run time (disk full, output folder
in use, ...), 130 interrupted (rerun to resume; `fit` prints its --ckpt_path)

Run `ssl-backdoor SUBCOMMAND --help` for the options of one subcommand.
"""

LIGHTNING_COMMANDS = ("fit", "validate", "test")
_NO_EXIT = {"exit_on_error": False}


def make_cli(argv: Optional[list[str]], run: bool = True):
    """The LightningCLI over any :class:`SSLModule` subclass and :class:`SSLDataModule`.

    With ``run=False`` the arguments are parsed and the classes instantiated without a subcommand
    (used by tests and by code that wants the configured objects). Bad arguments raise (no
    ``sys.exit``); the trainer writes checkpoints through :class:`AtomicCheckpointIO`.
    """
    from lightning_ssl_backdoor._lightning import LightningCLI

    from lightning_ssl_backdoor.checkpoint_io import AtomicCheckpointIO, check_checkpoint_file, fit_resumable
    from lightning_ssl_backdoor.data import SSLDataModule
    from lightning_ssl_backdoor.ssl import SSLModule

    class SSLCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001
            parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
            parser.link_arguments("data.in_channels", "model.init_args.in_channels", apply_on="instantiate")

        def instantiate_trainer(self, **kwargs):  # noqa: ANN003
            if not self._get(self.config_init, "trainer", default={}).get("plugins"):
                kwargs.setdefault("plugins", [AtomicCheckpointIO()])
            return super().instantiate_trainer(**kwargs)

        def _run_subcommand(self, subcommand: str) -> None:
            # a bad --ckpt_path stops before the Trainer saves config.yaml (into the working
            # folder when the logger is off) or makes a log folder
            check_checkpoint_file(self._get(self.config, "ckpt_path"))
            super()._run_subcommand(subcommand)

        def fit(self, model, datamodule=None, ckpt_path=None, **kwargs) -> None:  # noqa: ANN001, ANN003
            # Ctrl-C saves last.ckpt at a step boundary (see checkpoint_io.fit_resumable)
            fit_resumable(self.trainer, model, datamodule, None, ckpt_path=ckpt_path)

    if argv is not None and list(argv) == sys.argv[1:]:
        argv = None  # LightningCLI reads sys.argv itself (and warns when given both)
    return SSLCLI(
        SSLModule,
        SSLDataModule,
        subclass_mode_model=True,
        args=argv,
        run=run,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"check_val_every_n_epoch": None},
        parser_kwargs={**_NO_EXIT, **{c: dict(_NO_EXIT) for c in LIGHTNING_COMMANDS + ("predict",)}},
    )


def _fit_hint() -> str:
    from lightning_ssl_backdoor import checkpoint_io

    saved = checkpoint_io.LAST_INTERRUPT_CHECKPOINT
    if saved is not None:
        return f"saved {saved}; resume with the same `ssl-backdoor fit` command plus `--ckpt_path {saved}`."
    return ("no checkpoint was saved at the interruption; resume from the run's last periodic checkpoint with "
            "the same command plus `--ckpt_path <run folder>/checkpoints/last.ckpt`, if there is one.")


def main(argv: Optional[list[str]] = None) -> int:
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    from lightning_ssl_backdoor.utils import quiet_lightning

    quiet_lightning()
    if cmd in LIGHTNING_COMMANDS:
        return guarded(cmd, lambda: make_cli(None if from_sys else [cmd] + rest) and 0,
                       _fit_hint if cmd == "fit" else None)
    if cmd == "poison":
        from lightning_ssl_backdoor.attacks.cli import poison_main

        return poison_main(rest)
    if cmd == "report":
        from lightning_ssl_backdoor.pipeline.merge import report_main

        return guarded(cmd, lambda: report_main(rest))
    if cmd == "experiment":
        from lightning_ssl_backdoor.pipeline.experiment import experiment_main

        return guarded(cmd, lambda: experiment_main(rest))
    print(f"error: unknown subcommand {cmd!r}.\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
