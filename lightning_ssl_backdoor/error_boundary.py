"""The command line's error boundary: every expected fault becomes one sentence and an exit code.

Exit codes (documented in the README):

* 0: success;
* 2: a bad command, config or input file (fix it): our ``ConfigError`` / ``DataFormatError`` /
  ``ArtifactError`` / ``CheckpointError``, jsonargparse's parse and validation errors (reduced to
  their root cause), a missing input file, an output path that is not a folder, a checkpoint that
  ``torch.load(weights_only=True)`` refuses;
* 1: a fault at run time (fix the environment, then rerun the same command to resume): the output
  folder is locked by another run, the disk is full, permission denied, any other ``OSError``, and
  any unexpected exception (one line naming it; ``SSL_BACKDOOR_TRACEBACK=1`` shows the traceback);
* 130: interrupted (Ctrl-C), with the way to resume;
* 143: terminated (SIGTERM, handled as Ctrl-C: workers stopped, locks released), with the way to resume.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback
import warnings
from typing import Callable, Iterator, Optional

from lightning_ssl_backdoor.errors import EXIT_FAULT, EXIT_INTERRUPTED, EXIT_USAGE, SSLBackdoorError

TRACEBACK_ENV = "SSL_BACKDOOR_TRACEBACK"

RESUME_HINTS = {
    "experiment": "finished stages and checkpoints are kept; run the same `ssl-backdoor experiment` command "
                  "again to resume.",
    "poison": "the surrogate and finished chunks of poisons are kept; run the same `ssl-backdoor poison` "
              "command again to resume.",
}


def _chain(e: BaseException) -> Iterator[BaseException]:
    """``e`` and the exceptions it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    return text


def _is_jsonargparse(e: BaseException) -> bool:
    import argparse

    if isinstance(e, argparse.ArgumentError) or type(e).__module__.startswith("jsonargparse"):
        return True
    tb = e.__traceback__
    while tb is not None:
        if "jsonargparse" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _parse_error_sentence(e: BaseException) -> str:
    """The root cause of a jsonargparse error: the keys that lead to it and the innermost reason."""
    chain = list(_chain(e))
    ours = [x for x in chain if isinstance(x, SSLBackdoorError)]
    if ours:
        return str(ours[-1])
    text = "\n".join(str(x) for x in chain)
    lightning = sys.modules.get("lightning_ssl_backdoor._lightning")  # loaded by the commands that use Lightning
    foreign = lightning.foreign_class_in_error(text) if lightning is not None else None
    if foreign:  # a class_path from the other Lightning namespace: say so and name the fix
        return foreign
    keys: list[str] = []
    for k in re.findall(r'Parser key "([^"]+)"', text):
        if k not in keys:
            keys.append(k)
    inner = str(chain[-1])
    # a union dump ("Does not validate against any of the Union subtypes ... Errors: - ...") hides
    # the constructor's own sentence in its first error bullet that is not the NoneType alternative
    bullets = [b.strip() for b in re.findall(r"^\s*- (.+)$", inner, flags=re.M)
               if "NoneType" not in b and not b.strip().startswith("Problem with given class_path")]
    reason = bullets[0] if bullets and "Union subtypes" in inner else inner
    reason = re.sub(r'Parser key "[^"]+":', "", reason)
    reason = _one_line(reason).rstrip(".")
    where = ".".join(k for k in keys if k not in ("init_args",))
    typed = re.match(r"\s*Expected an? (?:<class ')?([\w.\[\], ]+?)(?:'>)?\.? Got value: (.*)$", reason)
    if where and typed:  # jsonargparse's "Expected a int. Got value: abc" -> "x must be int, got 'abc'"
        return f"{where} must be {typed.group(1)}, got {typed.group(2)!r}; see `--help`."
    if where and where not in reason:
        return f"invalid value for {where}: {reason}; see `--help`."
    return f"{reason}; see `--help`."


def _os_error(e: OSError) -> tuple[int, str]:
    path = e.filename if e.filename is not None else ""
    target = f" {path}" if path else ""
    if isinstance(e, FileNotFoundError):
        return EXIT_USAGE, f"no such file or folder{target}; check the path."
    if isinstance(e, NotADirectoryError):
        return EXIT_USAGE, (f"a path component of{target} is a file, not a folder; choose an output "
                            "folder that does not exist or is a folder.")
    if isinstance(e, IsADirectoryError):
        return EXIT_USAGE, f"{path or 'the path'} is a folder where a file is needed; give a file path."
    if isinstance(e, FileExistsError):
        return EXIT_USAGE, f"{path or 'the path'} already exists and is in the way; move it or choose another path."
    if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return EXIT_FAULT, (f"permission denied writing or reading{target} ({e.strerror}); choose a "
                            "writable output folder or fix its permissions, then rerun the same command.")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" {path}" if path else " (the output folder)"
        return EXIT_FAULT, (f"no space left on the device while writing{where}; files are written atomically, so "
                            "everything finished before is kept whole: free space and rerun the same command.")
    detail = e.strerror or _one_line(str(e)) or type(e).__name__
    return EXIT_FAULT, f"input/output error{target}: {detail}; fix the cause and rerun the same command."


def _unpickling(e: BaseException) -> Optional[str]:
    text = str(e)
    if "Weights only load failed" not in text and "weights_only" not in text:
        return None
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"Unsupported operand \d+", text)
    what = f" (it names {found.group(1)})" if found and found.groups() else ""
    return ("the checkpoint holds pickled Python objects that safe loading (torch.load weights_only=True) "
            f"refuses{what}; nothing was run; use a checkpoint written by this package.")


def classify(e: BaseException) -> tuple[int, str]:
    """(exit code, one sentence) for any exception that reached the command line."""
    import pickle

    for x in _chain(e):
        if isinstance(x, SSLBackdoorError):
            inner = [y for y in _chain(x) if isinstance(y, SSLBackdoorError)][-1]
            return inner.exit_code, str(inner)
    for x in _chain(e):
        if isinstance(x, pickle.UnpicklingError) or (isinstance(x, RuntimeError) and _unpickling(x)):
            msg = _unpickling(x)
            if msg:
                return EXIT_USAGE, msg
        if isinstance(x, RuntimeError) and "PytorchStreamReader" in str(x):
            return EXIT_USAGE, ("a checkpoint is truncated or corrupted (not a readable zip archive); "
                                "give another checkpoint or delete this one to start again.")
    if _is_jsonargparse(e):
        return EXIT_USAGE, _parse_error_sentence(e)
    for x in _chain(e):
        if isinstance(x, OSError):
            return _os_error(x)
    detail = _one_line(str(e))
    return EXIT_FAULT, (f"unexpected {type(e).__name__}{': ' + detail if detail else ''}; rerun with "
                        f"{TRACEBACK_ENV}=1 to see the traceback and please report it.")


def guarded(cmd: str, fn: Callable[[], int], interrupt_hint: Optional[Callable[[], str]] = None) -> int:
    """Run ``fn`` (one subcommand) and turn whatever it raises into one line on stderr + exit code."""
    from lightning_ssl_backdoor import safe_yaml, termination

    safe_yaml.install()  # -c files and YAML values: an alias bomb is refused (safe_yaml.MAX_YAML_NODES)
    # _lightning's warning on a late import of the other namespace is for programs: a command says in
    # its own error when a class_path comes from the other namespace (_parse_error_sentence)
    warnings.filterwarnings("ignore", message="lightning_ssl_backdoor built its modules on")
    try:
        with termination.handled():  # SIGTERM stops the run as Ctrl-C does (exit 143)
            return int(fn() or 0)
    except KeyboardInterrupt:
        hint = (interrupt_hint() if interrupt_hint else None) or RESUME_HINTS.get(
            cmd, f"run the same `ssl-backdoor {cmd}` command again.")
        if termination.received():
            print(f"\nterminated (SIGTERM): {hint}", file=sys.stderr)
            return termination.EXIT_TERMINATED
        print(f"\ninterrupted: {hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as e:  # argparse's --help / --print_config (0) and its own usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    except Exception as e:  # noqa: BLE001 - this is the boundary
        code, sentence = classify(e)
        if os.environ.get(TRACEBACK_ENV):
            traceback.print_exc()
        print(f"error: {sentence}", file=sys.stderr)
        return code
