"""``python -m expstore.train``: the reference actor-critic trainer on a pool on disk.

Online (the default): SAC collects Pendulum-v1 experience into ``<run-dir>/pool.h5`` and learns
from samples of it. Run the same command again on the same run directory and it resumes from
the last checkpoint, reopening the pool in place: kill it at any moment and nothing committed
is lost; Ctrl-C stops it after the current step with the pool committed and a checkpoint
written. A resume keeps the settings the run recorded in config.json (a different value is
refused); a larger --total-steps extends a run; a finished run is left as it is.
``--offline --pool PATH`` trains TD3+BC from an existing pool without touching the
environment (except to evaluate the policy). ``--offline-data POOL`` makes an online run
sample every batch half from that pool (opened read-only, never written) and half from its
own (RLPD's symmetric sampling; ``--offline-ratio`` sets the offline share).

Examples::

    python -m expstore.train                                   # short default run (a few minutes)
    python -m expstore.train --total-steps 20000 --run-dir runs/sac-20k
    python -m expstore.train --offline --pool runs/sac-20k/pool.h5 --run-dir runs/td3bc
    python -m expstore.train --offline-data runs/sac-20k/pool.h5 --run-dir runs/sac-rlpd
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from typing import Any

from ..backends import backend_names, primary_suffix
from ..core.opening import open as open_pool
from ..errors import ExpstoreError, InvalidArgumentError
from .device import check_device
from .envs import make_env
from .interrupt import Interrupted, StopRequest
from .resume import Invocation, finished_message, recorded_config, refuse_changes, resumed_total
from .td3bc import TD3BCConfig

logger = logging.getLogger("expstore.train")

DEFAULT_ONLINE_STEPS = 8_000
DEFAULT_OFFLINE_UPDATES = 10_000
# The backends registered when this module loads (parse_args asks the registry at each call).
POOL_SUFFIX = {name: primary_suffix(name) for name in backend_names()}

# The defaults of the options that shape a run. The parser's own default is None, so that a
# resume can tell an option the user gave (checked against the run's record) from one left out.
DEFAULTS: dict[str, Any] = {
    "env": "Pendulum-v1", "learning_starts": 1_000, "seed": 0, "checkpoint_every": 2_000, "eval_every": 2_000,
    "eval_episodes": 10, "backend": "hdf5", "capacity": 1_000_000, "hidden_units": 256, "batch_size": 256,
    "learning_rate": 3e-4, "ere": False, "ere_eta": 0.996, "ere_c_min": 5_000, "workers": 0,
    "offline_data": None, "offline_ratio": 0.5,
}

# Where each run-shaping option is recorded in config.json; --device, --threads, --log-interval
# and --workers belong to one invocation and may change at every resume.
ONLINE_RECORD = {"env": "env_id", "learning_starts": "learning_starts", "seed": "seed", "backend": "pool_name",
                 "capacity": "capacity", "checkpoint_every": "checkpoint_every", "eval_every": "eval_every",
                 "eval_episodes": "eval_episodes", "hidden_units": "sac.hidden_units",
                 "batch_size": "sac.batch_size", "learning_rate": "sac.learning_rate", "ere": "ere",
                 "ere_eta": "ere_eta", "ere_c_min": "ere_c_min", "offline_data": "offline_data",
                 "offline_ratio": "offline_ratio"}
OFFLINE_RECORD = {"pool": "pool_path", "env": "env_id", "seed": "seed", "checkpoint_every": "checkpoint_every",
                  "eval_every": "eval_every", "eval_episodes": "eval_episodes",
                  "hidden_units": "td3bc.hidden_units", "batch_size": "td3bc.batch_size",
                  "learning_rate": "td3bc.learning_rate"}
ONLINE_ONLY = ("learning_starts", "backend", "capacity", "ere", "ere_eta", "ere_c_min", "offline_data",
               "offline_ratio")
OFFLINE_ONLY = ("pool", "workers")

# option -> (smallest value, what it counts): checked before anything is written
LOWER_BOUNDS = {"total_steps": (1, "env steps online, gradient updates offline"), "learning_starts": (0, "steps"),
                "seed": (0, "a seed"), "checkpoint_every": (1, "steps"), "eval_every": (1, "steps"),
                "eval_episodes": (1, "episodes"), "capacity": (1, "transitions"), "hidden_units": (1, "units"),
                "batch_size": (1, "rows"), "threads": (1, "threads"), "ere_c_min": (1, "rows"),
                "workers": (0, "processes")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m expstore.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--run-dir", help="run directory (default runs/sac-<env> or runs/td3bc-<env>); an existing one resumes")
    add("--env", help="Gymnasium env id with Box actions (default Pendulum-v1)")
    add("--total-steps", type=int, help=f"env steps online (default {DEFAULT_ONLINE_STEPS:,}), gradient updates "
                                        f"offline (default {DEFAULT_OFFLINE_UPDATES:,}); a larger value extends a run")
    add("--learning-starts", type=int, help="online: random-action steps before learning (default 1,000)")
    add("--seed", type=int, help="default 0")
    add("--checkpoint-every", type=int, help="steps between checkpoints (default 2,000)")
    add("--eval-every", type=int, help="steps between evaluations (default 2,000)")
    add("--eval-episodes", type=int, help="default 10")
    add("--backend", choices=backend_names(), help="online: pool format (default hdf5)")
    add("--capacity", type=int, help="online: pool capacity in transitions (default 1,000,000)")
    add("--hidden-units", type=int, help="default 256")
    add("--batch-size", type=int, help="default 256")
    add("--learning-rate", type=float, help="default 3e-4")
    add("--device", default="cpu", help="torch device of this invocation, e.g. cuda (default cpu)")
    add("--threads", type=int, default=1, help="torch CPU threads (small MLPs gain little from more; default 1)")
    add("--log-interval", type=float, default=5.0, help="seconds between progress lines")
    add("--ere", action="store_true", default=None,
        help="online: Emphasizing Recent Experience (Wang & Ross 2019) instead of uniform sampling")
    add("--ere-eta", type=float, help="ERE: recency emphasis (1.0: uniform; default 0.996)")
    add("--ere-c-min", type=int, help="ERE: the smallest window in rows (default 5,000)")
    add("--offline-data", metavar="POOL",
        help="online: also sample from this pool (opened read-only), RLPD's symmetric sampling")
    add("--offline-ratio", type=float,
        help="online: the share of each batch drawn from --offline-data (default 0.5)")
    add("--offline", action="store_true", help="train TD3+BC from --pool, no env interaction")
    add("--pool", help="offline: the pool to train from (opened read-only)")
    add("--workers", type=int, help="offline: DataLoader worker processes (default 0: a background prefetch thread)")
    return parser.parse_args(argv)


def check_values(args: argparse.Namespace) -> None:
    """One-line errors for values no run can use, and for options the chosen mode never reads."""
    for name, (low, unit) in LOWER_BOUNDS.items():
        value = getattr(args, name)
        if value is not None and value < low:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} {value}: must be at least {low} ({unit})")
    for name, value in (("learning_rate", args.learning_rate), ("log_interval", args.log_interval)):
        if value is not None and not value > 0:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} {value}: must be a positive number")
    if args.ere_eta is not None and not 0 < args.ere_eta <= 1:
        raise InvalidArgumentError(f"--ere-eta {args.ere_eta}: must lie in (0, 1] (1.0 samples uniformly)")
    if args.offline_ratio is not None and not 0 <= args.offline_ratio <= 1:
        raise InvalidArgumentError(f"--offline-ratio {args.offline_ratio}: must lie in [0, 1] (the share of each "
                                   "batch drawn from --offline-data)")
    if args.offline_ratio is not None and args.offline_data is None and not args.offline:
        raise InvalidArgumentError("--offline-ratio needs --offline-data POOL (the pool to mix in)")
    wrong_mode = OFFLINE_ONLY if not args.offline else ONLINE_ONLY
    given = [name for name in wrong_mode if getattr(args, name) is not None]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        mode = "offline (--offline)" if not args.offline else "online"
        raise InvalidArgumentError(f"{flags}: only read by {mode} runs")


def value_of(args: argparse.Namespace, name: str) -> Any:
    """An option's value, or its default when it was not given."""
    value = getattr(args, name)
    return DEFAULTS[name] if value is None else value


def recorded_form(name: str, value: Any) -> Any:
    """A command-line value as config.json records it."""
    if name == "backend":
        return "pool" + primary_suffix(value)
    if name in ("pool", "offline_data"):
        return os.path.abspath(value)
    return value


def given_options(args: argparse.Namespace, record: dict[str, str]) -> dict[str, tuple[str, Any]]:
    """The run-shaping options on this command line: config key -> (flag, recorded form)."""
    return {key: ("--" + name.replace("_", "-"), recorded_form(name, getattr(args, name)))
            for name, key in record.items() if getattr(args, name) is not None}


def online_config(args: argparse.Namespace, run_dir: str):
    """The run's config (fresh, or recorded and maybe extended), and whether config.json must be written."""
    # torch (the train extra) takes seconds to import: the trainers load only for a run, so --help answers at once.
    from .online import OnlineConfig
    from .sac import SACConfig

    recorded = recorded_config(run_dir, "sac")
    if recorded is not None:
        refuse_changes(run_dir, recorded, given_options(args, ONLINE_RECORD))
        config = OnlineConfig.from_dict(recorded)
        total = resumed_total(run_dir, config.total_steps, args.total_steps)
        extended, config.total_steps = total != config.total_steps, total
        return config, extended
    value = functools.partial(value_of, args)
    sac = SACConfig(hidden_units=value("hidden_units"), batch_size=value("batch_size"),
                    learning_rate=value("learning_rate"))
    config = OnlineConfig(env_id=value("env"), total_steps=args.total_steps or DEFAULT_ONLINE_STEPS,
                          learning_starts=value("learning_starts"), seed=value("seed"),
                          pool_name=recorded_form("backend", value("backend")), capacity=value("capacity"),
                          checkpoint_every=value("checkpoint_every"), eval_every=value("eval_every"),
                          eval_episodes=value("eval_episodes"), sac=sac, ere=value("ere"),
                          ere_eta=value("ere_eta"), ere_c_min=value("ere_c_min"),
                          offline_data=recorded_form("offline_data", args.offline_data) if args.offline_data else None,
                          offline_ratio=value("offline_ratio"))
    return config, True


def offline_config(args: argparse.Namespace, run_dir: str):
    """As :func:`online_config`, for TD3+BC; a resume may leave out ``--pool`` (it is recorded)."""
    # torch (the train extra) takes seconds to import: the trainers load only for a run, so --help answers at once.
    from .offline import OfflineConfig
    recorded = recorded_config(run_dir, "td3bc")
    if recorded is not None:
        refuse_changes(run_dir, recorded, given_options(args, OFFLINE_RECORD))
        config = OfflineConfig.from_dict(recorded)
        total = resumed_total(run_dir, config.total_updates, args.total_steps)
        extended, config.total_updates = total != config.total_updates, total
        return config, extended
    if not args.pool:
        raise InvalidArgumentError("--offline needs --pool PATH (a pool written by an online run, for example)")
    with open_pool(args.pool, "r") as pool:
        env_id = args.env or pool.attrs.get("env_id") or DEFAULTS["env"]
    value = functools.partial(value_of, args)
    td3bc = TD3BCConfig(hidden_units=value("hidden_units"), batch_size=value("batch_size"),
                        learning_rate=value("learning_rate"))
    config = OfflineConfig(pool_path=os.path.abspath(args.pool), env_id=env_id,
                           total_updates=args.total_steps or DEFAULT_OFFLINE_UPDATES, seed=value("seed"),
                           checkpoint_every=value("checkpoint_every"), eval_every=value("eval_every"),
                           eval_episodes=value("eval_episodes"), td3bc=td3bc)
    return config, True


_HANDLERS: list[logging.Handler] = []  # the handlers main() added to the "expstore" logger


def setup_console_logging() -> None:
    """Progress and errors on stderr, from the first line on (a refused command writes no file)."""
    root = logging.getLogger("expstore")
    root.setLevel(logging.INFO)
    remove_logging()
    _add_handler(root, logging.StreamHandler(sys.stderr))


def remove_logging() -> None:
    """Take main()'s handlers off again (main() may run several times in one process)."""
    while _HANDLERS:
        handler = _HANDLERS.pop()
        logging.getLogger("expstore").removeHandler(handler)
        handler.close()


def setup_file_logging(run_dir: str) -> None:
    _add_handler(logging.getLogger("expstore"), logging.FileHandler(os.path.join(run_dir, "train.log")))


def _add_handler(root: logging.Logger, handler: logging.Handler) -> None:
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    _HANDLERS.append(handler)
    root.addHandler(handler)


def warn_if_no_updates(config) -> None:
    if config.total_steps <= config.learning_starts:
        logger.warning("this run makes 0 gradient updates: --total-steps %d does not pass --learning-starts %d "
                       "(the random-action steps before learning), so it only collects random experience",
                       config.total_steps, config.learning_starts)


def train(args: argparse.Namespace, stop) -> int:
    """Check everything, then run; 0 when the run is done (or was already finished)."""
    check_values(args)
    device = check_device(args.device)
    env_name = (args.env or DEFAULTS["env"]).split("-")[0].lower()
    run_dir = args.run_dir or os.path.join("runs", f"{'td3bc' if args.offline else 'sac'}-{env_name}")
    config, write_config = (offline_config if args.offline else online_config)(args, run_dir)
    if not write_config and said_finished(args, run_dir, config):
        return 0
    make_env(config.env_id).close()  # an unknown env id or one without Box actions fails before any write
    if stop.requested:  # Ctrl-C while torch and the env loaded
        logger.warning("interrupted before the run started; nothing was written")
        return 1
    open_run_dir(args, run_dir, config, write_config)
    return report(run(args, run_dir, config, device, stop), run_dir)


def said_finished(args: argparse.Namespace, run_dir: str, config) -> bool:
    """Log that the run is finished, if it is (its summary covers the total)."""
    if args.offline:
        message = finished_message(run_dir, config.total_updates, "updates", "updates")
    else:
        message = finished_message(run_dir, config.total_steps, "steps", "env steps")
    if message:
        logger.info("%s", message)
    return message is not None


def open_run_dir(args: argparse.Namespace, run_dir: str, config, write_config: bool) -> None:
    """The first writes of a run that goes ahead: the directory, its log, its config."""
    # torch (the train extra) takes seconds to import: the trainers load only for a run, so --help answers at once.
    import torch

    # torch (the train extra) takes seconds to import: the trainers load only for a run, so --help answers at once.
    from .online import save_config

    torch.set_num_threads(args.threads)
    os.makedirs(run_dir, exist_ok=True)
    setup_file_logging(run_dir)
    if write_config:
        save_config(run_dir, config)
    if not args.offline:
        warn_if_no_updates(config)


def report(outcome, run_dir: str) -> int:
    if isinstance(outcome, Interrupted):
        logger.warning("interrupted at %s %d; run the same command to resume", outcome.unit, outcome.position)
        return 1
    logger.info("done: %s", json.dumps(outcome))
    logger.info("run directory %s: %s", run_dir, ", ".join(sorted(os.listdir(run_dir))))
    return 0


def run(args: argparse.Namespace, run_dir: str, config, device: str, stop):
    """The run's summary, or Interrupted; the pool is closed (committed) before this returns."""
    # torch (the train extra) takes seconds to import: the trainers load only for a run, so --help answers at once.
    from .offline import OfflineRun
    from .online import OnlineRun
    invocation = Invocation(device=device, log_interval_s=args.log_interval, workers=value_of(args, "workers"),
                            stop=stop)
    training = (OfflineRun if args.offline else OnlineRun)(run_dir, config, invocation)
    try:
        return training.run()
    finally:
        training.close()


def main(argv: list[str] | None = None) -> int:
    """The command; returns its exit status (1 for a refused command or an interrupted run)."""
    with StopRequest() as stop:  # first, so that Ctrl-C anywhere below stops cleanly
        setup_console_logging()
        args = parse_args(argv)
        try:
            return train(args, stop)
        except ExpstoreError as exc:
            logger.error("error: %s", " ".join(str(exc).split()))
            return 1
        except OSError as exc:  # a run directory that cannot be written, a full disk: as the expstore CLI does
            logger.error("error: %s", f"{exc.filename}: {exc.strerror}" if exc.filename else exc)
            return 1
        except KeyboardInterrupt:  # only where no handler could be installed (not the main thread)
            logger.error("interrupted; run the same command to resume")
            return 1
        finally:
            remove_logging()


if __name__ == "__main__":
    sys.exit(main())
