"""The ``ssl-backdoor`` console script.

``fit | validate | test`` go through LightningCLI (YAML configs, command-line values override YAML
values, TensorBoard logging, a progress bar); ``poison`` runs an attack and writes a PoisonedSplit
artifact; ``experiment`` runs the whole attack -> defense -> training -> evaluation flow.
Errors raised on purpose (:class:`SSLBackdoorError`) are printed as one sentence, exit code 2.
"""

from __future__ import annotations

import sys
from typing import Optional

from lightning_ssl_backdoor.errors import SSLBackdoorError

USAGE = """usage: ssl-backdoor {fit,validate,test,poison,experiment,report} [-h] [-c CONFIG.yaml ...] [options]

Backdoor attacks and defenses in semi-supervised learning.

subcommands:
  fit          train an SSL LightningModule (LightningCLI; -c CONFIG.yaml, repeatable)
  validate     evaluate on the validation (test-set) loaders
  test         evaluate clean accuracy and attack success rate on the test set
  poison       run an attack and write a PoisonedSplit artifact (npz + JSON manifest)
  experiment   run attack -> defenses -> SSL training -> evaluation -> report
  report       `report merge DIR... --output DIR`: one report from the shards of a grid (--only)

Run `ssl-backdoor SUBCOMMAND --help` for the options of one subcommand.
"""

LIGHTNING_COMMANDS = ("fit", "validate", "test")


def make_cli(argv: list[str], run: bool = True):
    """The LightningCLI over any :class:`SSLModule` subclass and :class:`SSLDataModule`.

    With ``run=False`` the arguments are parsed and the classes instantiated without a subcommand
    (used by tests and by code that wants the configured objects).
    """
    from lightning_ssl_backdoor._lightning import LightningCLI

    from lightning_ssl_backdoor.data import SSLDataModule
    from lightning_ssl_backdoor.ssl import SSLModule

    class SSLCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001
            parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
            parser.link_arguments("data.in_channels", "model.init_args.in_channels", apply_on="instantiate")

    return SSLCLI(
        SSLModule,
        SSLDataModule,
        subclass_mode_model=True,
        args=argv,
        run=run,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"check_val_every_n_epoch": None},
    )


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    from lightning_ssl_backdoor.utils import quiet_lightning

    quiet_lightning()
    try:
        if cmd in LIGHTNING_COMMANDS:
            make_cli([cmd] + rest)
            return 0
        if cmd == "poison":
            from lightning_ssl_backdoor.attacks.cli import poison_main

            return int(poison_main(rest) or 0)
        if cmd == "report":
            from lightning_ssl_backdoor.pipeline.merge import report_main

            return int(report_main(rest) or 0)
        if cmd == "experiment":
            from lightning_ssl_backdoor.pipeline.experiment import experiment_main

            return int(experiment_main(rest) or 0)
    except SSLBackdoorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished stages and checkpoints are kept; run the same `ssl-backdoor {cmd}` "
              "command again to resume.", file=sys.stderr)
        return 130
    print(f"error: unknown subcommand {cmd!r}.\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
