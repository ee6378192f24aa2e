"""The torch device a run asks for, checked before anything is written."""

from __future__ import annotations

import torch

from ..errors import InvalidArgumentError


def check_device(name: str) -> str:
    """``name`` as torch writes it, if this torch build and machine can run on it.

    Raises InvalidArgumentError naming what is missing (a CUDA build, a visible device, an
    index) and what to pass instead, rather than torch's assertion deep inside the first
    ``.to(device)``.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise InvalidArgumentError(f"--device {name!r} is not a torch device ({reason}); "
                                   "use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        _check_cuda(name, device.index)
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise InvalidArgumentError(f"--device {name}: MPS is not available in this torch build or on this "
                                       "machine; use --device cpu")
    elif device.type != "cpu":
        raise InvalidArgumentError(f"--device {name}: the trainers run on cpu, cuda or mps")
    return str(device)


def _check_cuda(name: str, index: int | None) -> None:
    if not torch.backends.cuda.is_built():
        raise InvalidArgumentError(f"--device {name}: CUDA is not available in this torch build (torch "
                                   f"{torch.__version__}, CPU only); use --device cpu, or install a CUDA build "
                                   "of torch (https://pytorch.org/get-started/locally/)")
    count = torch.cuda.device_count()
    if count == 0:
        raise InvalidArgumentError(f"--device {name}: this torch build has CUDA, but no CUDA device is visible "
                                   "(check the driver and CUDA_VISIBLE_DEVICES); use --device cpu")
    if index is not None and index >= count:
        raise InvalidArgumentError(f"--device {name}: only {count} CUDA device{'s' if count > 1 else ''} "
                                   f"visible (cuda:0 to cuda:{count - 1})")
