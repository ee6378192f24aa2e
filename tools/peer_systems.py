"""The systems tools/bench_peers.py compares, behind one small interface.

Each system stores the fields of one workload, takes single transitions (``append``) and
1,000-row batches (``extend``) as an environment loop hands them over (numpy arrays, a Python
float reward, Python bool flags), samples uniformly, saves itself to a directory the way its
users persist it, and reopens from there in a new process. Peer libraries are imported lazily,
so a missing one only skips that system.
"""

from __future__ import annotations

import json
import mmap
import os

import numpy as np


class System:
    name = ""
    persistence = ""
    disk_backed = False  # samples straight from files (a cold page cache matters)
    modules: tuple[str, ...] = ("numpy",)  # imported before a reopen is timed

    def __init__(self, schema: dict, capacity: int, directory: str):
        self.schema, self.capacity, self.directory = schema, capacity, directory
        self.rng = np.random.default_rng(0)

    @property
    def fields(self) -> list[str]:
        return list(self.schema)

    def append(self, transition: dict) -> None:
        raise NotImplementedError

    def extend(self, batch: dict) -> None:
        raise NotImplementedError

    def sample(self, n_rows: int):
        raise NotImplementedError

    def save(self) -> None:
        pass

    def close(self) -> None:
        pass

    @classmethod
    def reopen(cls, schema: dict, capacity: int, directory: str, variant: str = "") -> System:
        raise NotImplementedError


# ---------------------------------------------------------------------- numpy-array rings
class _ArrayRing(System):
    """A ring over one array per field; ``_arrays`` are in RAM or memory-mapped."""

    def _start(self, arrays: dict[str, np.ndarray], pos: int = 0, size: int = 0) -> None:
        self._arrays, self._pos, self._size = arrays, pos, size
        self._items = list(arrays.items())

    def append(self, transition: dict) -> None:
        pos = self._pos
        for name, array in self._items:
            array[pos] = transition[name]
        self._advance(1)

    def extend(self, batch: dict) -> None:
        n_rows = len(batch["reward"])
        head = min(n_rows, self.capacity - self._pos)  # rows before the ring wraps
        for name, array in self._items:
            array[self._pos:self._pos + head] = batch[name][:head]
            if head < n_rows:
                array[:n_rows - head] = batch[name][head:]
        self._advance(n_rows)

    def _advance(self, n_rows: int) -> None:
        self._pos = (self._pos + n_rows) % self.capacity
        self._size = min(self._size + n_rows, self.capacity)

    def sample(self, n_rows: int):
        index = self.rng.integers(0, self._size, n_rows)
        return {name: array[index] for name, array in self._items}

    def _save_meta(self) -> None:
        with open(os.path.join(self.directory, "meta.json"), "w") as meta:
            json.dump({"pos": self._pos, "size": self._size}, meta)

    @staticmethod
    def _load_meta(directory: str) -> dict:
        with open(os.path.join(directory, "meta.json")) as meta:
            return json.load(meta)


class NumpySystem(_ArrayRing):
    name = "numpy"
    persistence = "np.save / np.load (reference)"

    def __init__(self, schema, capacity, directory):
        super().__init__(schema, capacity, directory)
        self._start({name: np.zeros((capacity, *shape), dtype) for name, (shape, dtype) in schema.items()})

    def save(self) -> None:
        for name, array in self._items:
            np.save(os.path.join(self.directory, f"{name}.npy"), array)
        self._save_meta()

    @classmethod
    def reopen(cls, schema, capacity, directory, variant=""):
        system = cls.__new__(cls)
        System.__init__(system, schema, capacity, directory)
        arrays = {name: np.load(os.path.join(directory, f"{name}.npy")) for name in schema}
        system._start(arrays, **cls._load_meta(directory))
        return system


class MemmapSystem(_ArrayRing):
    name = "memmap"
    persistence = "np.memmap files; flush / np.memmap(mode='r')"
    disk_backed = True

    def __init__(self, schema, capacity, directory):
        super().__init__(schema, capacity, directory)
        self._start({name: np.memmap(os.path.join(directory, f"{name}.raw"), dtype=dtype, mode="w+",
                                     shape=(capacity, *shape)) for name, (shape, dtype) in schema.items()})

    def save(self) -> None:
        for _, array in self._items:
            array.flush()
        self._save_meta()

    @classmethod
    def reopen(cls, schema, capacity, directory, variant=""):
        system = cls.__new__(cls)
        System.__init__(system, schema, capacity, directory)
        arrays = {name: np.memmap(os.path.join(directory, f"{name}.raw"), dtype=dtype, mode="r",
                                  shape=(capacity, *shape)) for name, (shape, dtype) in schema.items()}
        if variant == "random":
            for array in arrays.values():
                array._mmap.madvise(mmap.MADV_RANDOM)
        system._start(arrays, **cls._load_meta(directory))
        return system


# ---------------------------------------------------------------------- expstore
class ExpstoreSystem(System):
    modules = ("expstore", "h5py")  # expstore imports its backend's library at the first open
    backend = "hdf5"
    fsync = False
    persistence = "always on disk; flush() commits; expstore.open(path, 'r')"
    disk_backed = True

    def __init__(self, schema, capacity, directory):
        super().__init__(schema, capacity, directory)
        import expstore
        self.pool = expstore.open(self._path(directory), "w", capacity=capacity, schema=schema, fsync=self.fsync)

    @classmethod
    def _path(cls, directory: str) -> str:
        return os.path.join(directory, "pool.h5" if cls.backend == "hdf5" else "pool.zarr")

    def append(self, transition):
        self.pool.append(transition)

    def extend(self, batch):
        self.pool.extend(batch)

    def sample(self, n_rows):
        return self.pool.sample(n_rows, rng=self.rng)

    def save(self):
        self.pool.flush(fsync=True)

    def close(self):
        self.pool.close()

    @classmethod
    def reopen(cls, schema, capacity, directory, variant=""):
        import expstore
        system = cls.__new__(cls)
        System.__init__(system, schema, capacity, directory)
        system.pool = expstore.open(cls._path(directory), "r")
        if variant.startswith("cold_reads="):
            system.pool.cold_reads.mode = variant.split("=", 1)[1]
        return system


class ExpstoreZarr(ExpstoreSystem):
    backend = "zarr"
    modules = ("expstore", "zarr")


class ExpstoreFsync(ExpstoreSystem):
    fsync = True
    persistence = "as expstore-hdf5, with the default fsync'ed commits every 10,000 rows"


class ExpstoreDerivedNextObs(ExpstoreSystem):
    persistence = "as expstore-hdf5, derive_next_obs=True: only episodes' final next_obs stored"

    def __init__(self, schema, capacity, directory):
        System.__init__(self, schema, capacity, directory)
        import expstore
        stored = {name: spec for name, spec in schema.items() if name != "next_obs"}
        self.pool = expstore.open(self._path(directory), "w", capacity=capacity, schema=stored,
                                  derive_next_obs=True, fsync=self.fsync)


# ---------------------------------------------------------------------- peers
class TorchRLSystem(System):
    modules = ("torch", "tensordict", "torchrl.data")
    name = "torchrl"
    persistence = "LazyMemmapStorage(scratch_dir=dir/storage); rb.dumps(dir) / rb.loads(dir)"
    disk_backed = True

    def __init__(self, schema, capacity, directory):
        super().__init__(schema, capacity, directory)
        import torch
        from tensordict import TensorDict
        from torchrl.data import LazyMemmapStorage, ReplayBuffer
        self._torch, self._td = torch, TensorDict
        storage = LazyMemmapStorage(capacity, scratch_dir=os.path.join(directory, "storage"), auto_cleanup=False)
        self.rb = ReplayBuffer(storage=storage)

    def append(self, transition):
        as_tensor = self._torch.as_tensor
        self.rb.add(self._td({name: as_tensor(value) for name, value in transition.items()}, batch_size=[]))

    def extend(self, batch):
        from_numpy = self._torch.from_numpy
        self.rb.extend(self._td({name: from_numpy(value) for name, value in batch.items()},
                                batch_size=[len(batch["reward"])]))

    def sample(self, n_rows):
        return self.rb.sample(n_rows)

    def save(self):
        self.rb.dumps(self.directory)

    @classmethod
    def reopen(cls, schema, capacity, directory, variant=""):
        from torchrl.data import LazyMemmapStorage, ReplayBuffer
        system = cls.__new__(cls)
        System.__init__(system, schema, capacity, directory)
        system.rb = ReplayBuffer(storage=LazyMemmapStorage(capacity, auto_cleanup=False))
        system.rb.loads(directory)
        return system


class SB3System(System):
    """SB3's ReplayBuffer. It has no batch add: extends go to an ``n_envs=1000`` buffer of the
    same total capacity (a vector-env add), which is also the one sampled and saved; single
    adds go to a separate ``n_envs=1`` buffer."""

    name = "sb3"
    modules = ("gymnasium", "stable_baselines3.common.buffers", "stable_baselines3.common.save_util")
    persistence = "save_to_pkl / load_from_pkl (= save_replay_buffer / load_replay_buffer)"

    def __init__(self, schema, capacity, directory):
        super().__init__(schema, capacity, directory)
        self.rb = self._buffer(schema, capacity, n_envs=1000)
        self._single = None
        self._infos = None

    @staticmethod
    def _buffer(schema, capacity, n_envs):
        from gymnasium import spaces
        from stable_baselines3.common.buffers import ReplayBuffer
        obs_shape, obs_dtype = schema["obs"]
        low, high = (0, 255) if np.dtype(obs_dtype) == np.uint8 else (-np.inf, np.inf)
        obs_space = spaces.Box(low, high, obs_shape, obs_dtype)
        action_shape, action_dtype = schema["action"]
        action_space = (spaces.Discrete(18) if np.dtype(action_dtype).kind == "i"
                        else spaces.Box(-2.0, 2.0, action_shape, action_dtype))
        # buffer_size is the total: SB3 keeps buffer_size // n_envs rows per env
        return ReplayBuffer(capacity, obs_space, action_space, device="cpu", n_envs=n_envs)

    def append(self, t):
        if self._single is None:  # its own n_envs=1 buffer; small for frames, the add cost is the same
            self._single = self._buffer(self.schema, min(self.capacity, 20_000), n_envs=1)
        self._single.add(np.array(t["obs"])[None], np.array(t["next_obs"])[None], np.array([t["action"]]),
                         np.array([t["reward"]]), np.array([t["terminated"]]),
                         [{"TimeLimit.truncated": t["truncated"]}])

    def extend(self, b):
        n_rows = len(b["reward"])
        if self._infos is None or len(self._infos) != n_rows:
            self._infos = [{"TimeLimit.truncated": False} for _ in range(n_rows)]
        for i in np.flatnonzero(b["truncated"]).tolist():
            self._infos[i] = {"TimeLimit.truncated": True}
        action = b["action"] if b["action"].ndim > 1 else b["action"][:, None]
        self.rb.add(b["obs"], b["next_obs"], action, b["reward"], b["terminated"], self._infos)
        for i in np.flatnonzero(b["truncated"]).tolist():
            self._infos[i] = {"TimeLimit.truncated": False}

    def sample(self, n_rows):
        return self.rb.sample(n_rows)

    def save(self):
        from stable_baselines3.common.save_util import save_to_pkl
        self._single = None
        save_to_pkl(os.path.join(self.directory, "buffer.pkl"), self.rb)

    @classmethod
    def reopen(cls, schema, capacity, directory, variant=""):
        from stable_baselines3.common.save_util import load_from_pkl
        system = cls.__new__(cls)
        System.__init__(system, schema, capacity, directory)
        system.rb = load_from_pkl(os.path.join(directory, "buffer.pkl"))
        return system


class CpprbSystem(System):
    name = "cpprb"
    modules = ("cpprb",)
    persistence = "save_transitions (np.savez_compressed) / load_transitions"

    def __init__(self, schema, capacity, directory):
        super().__init__(schema, capacity, directory)
        self.rb = self._buffer(schema, capacity)

    @staticmethod
    def _buffer(schema, capacity):
        import cpprb
        env_dict = {name: {"shape": shape or 1, "dtype": np.dtype(dtype)} for name, (shape, dtype) in schema.items()}
        return cpprb.ReplayBuffer(capacity, env_dict)

    def append(self, transition):
        self.rb.add(**transition)

    def extend(self, batch):
        self.rb.add(**batch)

    def sample(self, n_rows):
        return self.rb.sample(n_rows)

    def save(self):
        self.rb.save_transitions(os.path.join(self.directory, "buffer.npz"))

    @classmethod
    def reopen(cls, schema, capacity, directory, variant=""):
        system = cls.__new__(cls)
        System.__init__(system, schema, capacity, directory)
        system.rb = cls._buffer(schema, capacity)
        system.rb.load_transitions(os.path.join(directory, "buffer.npz"))
        return system


def _chunk_rows(schema: dict, capacity: int) -> int:
    widest = max(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in schema.values())
    return max(1, min(capacity, (1 << 20) // widest))


class H5pySystem(_ArrayRing):
    name = "h5py"
    modules = ("h5py",)
    persistence = "h5py.File; flush / h5py.File(mode='r')"
    disk_backed = True

    def __init__(self, schema, capacity, directory):
        super().__init__(schema, capacity, directory)
        import h5py
        self.file = h5py.File(os.path.join(directory, "pool.h5"), "w")
        rows = _chunk_rows(schema, capacity)
        self._start({name: self.file.create_dataset(name, (capacity, *shape), dtype, chunks=(rows, *shape))
                     for name, (shape, dtype) in schema.items()})

    def sample(self, n_rows):
        index = np.unique(self.rng.integers(0, self._size, n_rows))  # h5py needs increasing indices
        return {name: array[index] for name, array in self._items}

    def save(self):
        self.file.flush()
        self._save_meta()

    def close(self):
        self.file.close()

    @classmethod
    def reopen(cls, schema, capacity, directory, variant=""):
        import h5py
        system = cls.__new__(cls)
        System.__init__(system, schema, capacity, directory)
        system.file = h5py.File(os.path.join(directory, "pool.h5"), "r")
        system._start({name: system.file[name] for name in schema}, **cls._load_meta(directory))
        return system


class ZarrSystem(_ArrayRing):
    name = "zarr"
    modules = ("zarr",)
    persistence = "zarr v3 group, default codecs; zarr.open_group(mode='r')"
    disk_backed = True

    def __init__(self, schema, capacity, directory):
        super().__init__(schema, capacity, directory)
        import zarr
        group = zarr.open_group(os.path.join(directory, "pool.zarr"), mode="w")
        rows = _chunk_rows(schema, capacity)
        self._start({name: group.create_array(name, shape=(capacity, *shape), chunks=(rows, *shape), dtype=dtype)
                     for name, (shape, dtype) in schema.items()})

    def sample(self, n_rows):
        index = np.unique(self.rng.integers(0, self._size, n_rows))
        return {name: array.oindex[index] for name, array in self._items}

    def save(self):
        self._save_meta()

    @classmethod
    def reopen(cls, schema, capacity, directory, variant=""):
        import zarr
        system = cls.__new__(cls)
        System.__init__(system, schema, capacity, directory)
        group = zarr.open_group(os.path.join(directory, "pool.zarr"), mode="r")
        system._start({name: group[name] for name in schema}, **cls._load_meta(directory))
        return system


SYSTEMS: dict[str, type[System]] = {}
for _cls, _name in [(NumpySystem, "numpy"), (MemmapSystem, "memmap"), (ExpstoreSystem, "expstore-hdf5"),
                    (ExpstoreZarr, "expstore-zarr"), (ExpstoreFsync, "expstore-hdf5-fsync"),
                    (ExpstoreDerivedNextObs, "expstore-hdf5-derived-next-obs"), (TorchRLSystem, "torchrl"),
                    (SB3System, "sb3"), (CpprbSystem, "cpprb"), (H5pySystem, "h5py"), (ZarrSystem, "zarr")]:
    _cls.name = _name
    SYSTEMS[_name] = _cls

PACKAGES = {"torchrl": ["torchrl", "tensordict", "torch"], "sb3": ["stable_baselines3", "torch"],
            "cpprb": ["cpprb"], "h5py": ["h5py"], "zarr": ["zarr"]}
