"""A restricted unpickler for the CIFAR "python version" batches (and nothing else).

The official CIFAR python batches are Python-2 pickles of dicts holding numpy arrays, lists,
ints and byte strings. Plain ``pickle.load`` would run any callable a file names, so these files
are read only through :class:`RestrictedUnpickler`, whose ``find_class`` admits nothing but the
globals numpy uses to rebuild an array:

* ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``
* ``numpy.ndarray`` and ``numpy.dtype``
* ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer`` (protocol-5 arrays)
* ``_codecs.encode`` restricted to the latin-1 codec (how protocol 0-2 pickles written by
  Python 3 store ``bytes``, e.g. an array's raw data)

Any other global raises :class:`DataFormatError` before it is looked up, so nothing it names runs.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any, BinaryIO

import numpy as np

from lightning_ssl_backdoor.errors import DataFormatError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.numeric import _frombuffer as _np_frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct  # type: ignore[no-redef]
    from numpy.core.numeric import _frombuffer as _np_frombuffer  # type: ignore[no-redef]

_LATIN1 = codecs.lookup("latin-1").name


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` limited to ``str -> bytes`` with latin-1 (what pickle protocol 2 emits)."""
    try:
        name = codecs.lookup(str(encoding)).name
    except LookupError:
        name = ""
    if not isinstance(obj, str) or name != _LATIN1:
        raise DataFormatError(
            f"refusing to unpickle a call to _codecs.encode with encoding {encoding!r}; only "
            "latin-1 byte strings are allowed in CIFAR python batches."
        )
    return codecs.encode(obj, _LATIN1, "strict")


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy's array-reconstruction globals (see module docstring).

    Strings written by Python 2 come back as ``bytes`` (``encoding="bytes"``), as the official
    CIFAR files need; callers normalise dict keys and label names themselves.
    """

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file, encoding="bytes")

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - see class docstring
        key = (module.decode("latin-1") if isinstance(module, bytes) else str(module),
               name.decode("latin-1") if isinstance(name, bytes) else str(name))
        try:
            return ALLOWED_GLOBALS[key]
        except KeyError:
            raise DataFormatError(
                f"refusing to unpickle the global '{key[0]}.{key[1]}': CIFAR python batches may "
                "only contain numpy arrays, lists, numbers and strings; use the official files "
                "or the binary release."
            ) from None

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        raise DataFormatError(
            "refusing to unpickle a persistent reference: CIFAR python batches contain none; use "
            "the official files or the binary release."
        )


def restricted_load(fileobj: BinaryIO | bytes) -> Any:
    """Unpickle ``fileobj`` (a binary file object or bytes) with :class:`RestrictedUnpickler`.

    Raises DataFormatError for a forbidden global or for data that is not a valid pickle.
    """
    if isinstance(fileobj, (bytes, bytearray, memoryview)):
        fileobj = io.BytesIO(bytes(fileobj))
    try:
        return RestrictedUnpickler(fileobj).load()
    except DataFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OverflowError, MemoryError, UnicodeDecodeError) as exc:
        raise DataFormatError(
            f"the file is not a valid CIFAR python pickle ({type(exc).__name__}: {exc}); re-extract "
            "the official archive or use the binary release."
        ) from exc
