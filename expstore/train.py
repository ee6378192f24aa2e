"""``expstore.train``, kept as an import path: the code lives in expstore/training/main.py."""

import sys

from .training import main as _moved
from .training.main import (
    DEFAULT_OFFLINE_UPDATES,
    DEFAULT_ONLINE_STEPS,
    DEFAULTS,
    LOWER_BOUNDS,
    OFFLINE_ONLY,
    OFFLINE_RECORD,
    ONLINE_ONLY,
    ONLINE_RECORD,
    POOL_SUFFIX,
    check_values,
    given_options,
    main,
    offline_config,
    online_config,
    open_run_dir,
    parse_args,
    recorded_form,
    remove_logging,
    report,
    run,
    said_finished,
    setup_console_logging,
    setup_file_logging,
    train,
    value_of,
    warn_if_no_updates,
)

__all__ = [
    "DEFAULTS",
    "DEFAULT_OFFLINE_UPDATES",
    "DEFAULT_ONLINE_STEPS",
    "LOWER_BOUNDS",
    "OFFLINE_ONLY",
    "OFFLINE_RECORD",
    "ONLINE_ONLY",
    "ONLINE_RECORD",
    "POOL_SUFFIX",
    "check_values",
    "given_options",
    "main",
    "offline_config",
    "online_config",
    "open_run_dir",
    "parse_args",
    "recorded_form",
    "remove_logging",
    "report",
    "run",
    "said_finished",
    "setup_console_logging",
    "setup_file_logging",
    "train",
    "value_of",
    "warn_if_no_updates",
]


def __getattr__(name: str):
    # Any other name, private ones included, resolves in expstore.training.main.
    return getattr(_moved, name)


if __name__ == "__main__":
    sys.exit(main())
