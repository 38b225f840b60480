"""Encode an image build's batches on a Ray cluster: a pool of CLIP encoder actors.

``RayRunner`` is the ``ray`` entry of ``image_runners.RUNNERS``. The build itself stays in the
driver (``build_image_index``): it reads and checks the catalogue, picks the records still to
encode (resume), and commits every finished batch to the version's commit log, so a stopped Ray
build resumes exactly like a local one, with the same rejects file and report. What Ray spreads
is the costly part, decode + preprocess + encode (``image_encode.encode_batch``):

    records still to encode --ray.data.from_items--> Dataset of {"record": ImageRecord JSON}
      --map_batches(_EncodeActor, ActorPoolStrategy(size=actors), batch_size)--> actors
      --iter_batches--> driver: commit(ids, vectors, rejects) per batch

Actors get one GPU each when the cluster has GPUs (``num_gpus=1``, device ``cuda``), else
``cpus_per_actor`` CPUs and as many torch threads. Every node reads the images at the paths
the catalogue resolves to (a shared file system) and needs the same install of this package,
torch and open_clip (the same container image), and the weights: a pretrained tag is
downloaded by each node into its own cache unless the cache is shared, a checkpoint path must
exist on every node.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .catalog_images import ImageRecord
from .encoders import ImageEncoder
from .errors import ConfigError, EncoderMismatchError, ModelError
from .image_encode import Commit, encode_batch

__all__ = ["RayEncodeConfig", "RayRunner", "ray_available"]

log = logging.getLogger(__name__)

LOCAL = "local"  # ray.init(address="local"): start a Ray instance inside this run


def ray_available() -> bool:
    """Whether Ray Data can be imported (``pip install 'udrl-search[ray]'``)."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class RayEncodeConfig:
    """Where the encoder actors run and how many there are."""

    # Ray address: "local" starts a Ray instance for this run; "auto" joins the cluster this
    # machine is part of; "ray://head:10001" connects a Ray client; "head:6379" a cluster node.
    address: str = LOCAL
    # Encoder actors; None: one per GPU the cluster has, else total CPUs // cpus_per_actor.
    actors: int | None = None
    # CPUs per actor (and torch threads on CPU); None: 1 beside a GPU, else the CPUs of the
    # smallest node up to 8.
    cpus_per_actor: float | None = None
    # Use the cluster's GPUs when it has any; False keeps the actors on CPU.
    use_gpu: bool = True
    # Extra ray.init keyword arguments for a local instance (e.g. object_store_memory).
    init_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not str(self.address).strip():
            raise ConfigError("RayEncodeConfig.address is empty; give 'local', 'auto' or an "
                              "address such as ray://head:10001")
        if self.actors is not None and self.actors < 1:
            raise ConfigError(f"RayEncodeConfig.actors={self.actors} must be at least 1")
        if self.cpus_per_actor is not None and self.cpus_per_actor <= 0:
            raise ConfigError(f"RayEncodeConfig.cpus_per_actor={self.cpus_per_actor} must be > 0")


class _EncodeActor:
    """One encoder per actor, built once; called with batches of records as JSON."""

    def __init__(self, factory: Callable[[str], ImageEncoder], device: str, threads: int | None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.encoder = factory(device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [ImageRecord.model_validate_json(s) for s in batch["record"]]
        ids, vecs, bad = encode_batch(records, self.encoder)
        # one output row per input row: a vector, or zeros and the reject row as JSON
        rows = {i: k for k, i in enumerate(ids)}
        why = {row["id"]: json.dumps(row, ensure_ascii=False) for row in bad}
        out = np.zeros((len(records), self.encoder.dim), np.float32)  # (B, D)
        for k, r in enumerate(records):
            if r.id in rows:
                out[k] = vecs[rows[r.id]]
        return {
            "id": np.array([r.id for r in records], dtype=object),
            "vector": out,
            "reject": np.array([why.get(r.id, "") for r in records], dtype=object),
            "encoder": np.array([f"{self.encoder.name}\0{self.encoder.dim}"] * len(records),
                                dtype=object),
        }


def _node_cpus() -> list[float]:
    import ray

    return [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]


class RayRunner:
    """Encodes on a Ray cluster with a pool of actors, each holding one encoder.

    Args:
        cfg: address, actors, CPUs per actor, GPU use.
        factory: builds the actors' encoder from a torch device string (``"cpu"``,
            ``"cuda"``); pickled to the actors, so a module-level function or a
            ``functools.partial`` of one, e.g. ``partial(encoder_from_config, index_cfg)``.
    """

    name = "ray"

    def __init__(self, cfg: RayEncodeConfig | None = None,
                 factory: Callable[[str], ImageEncoder] | None = None):
        if factory is None:
            raise ConfigError("RayRunner needs an encoder factory (device -> ImageEncoder) "
                              "for its actors")
        self.cfg, self.factory = cfg or RayEncodeConfig(), factory
        self.started_s = 0.0  # seconds ray.init took in the last run (0: Ray was running)
        self.actors = 0  # actors of the last run
        self.device = ""  # their device

    def _init(self):
        import ray

        if ray.is_initialized():
            return ray, False
        kwargs: dict[str, Any] = {"address": self.cfg.address, "include_dashboard": False,
                                  "log_to_driver": True}
        if self.cfg.address == LOCAL:
            kwargs.update(dict(self.cfg.init_options))
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"cannot start or reach Ray at {self.cfg.address!r}: {e}. Give no "
                              "address for a local Ray, 'auto' on a cluster node, or "
                              "ray://<head>:10001") from e
        return ray, True

    def _plan(self, ray) -> tuple[int, dict[str, Any], str, int | None]:
        """(actors, map_batches resources, device, torch threads) for this cluster."""
        gpus = int(ray.cluster_resources().get("GPU", 0)) if self.cfg.use_gpu else 0
        if gpus:
            cpus = self.cfg.cpus_per_actor or 1.0
            return self.cfg.actors or gpus, {"num_gpus": 1, "num_cpus": cpus}, "cuda", None
        nodes = _node_cpus() or [1.0]
        cpus = self.cfg.cpus_per_actor or max(1.0, min(min(nodes), 8.0))
        actors = self.cfg.actors or max(1, int(sum(nodes) // cpus))
        return actors, {"num_cpus": cpus}, "cpu", max(1, int(cpus))

    def run(self, todo: Sequence[ImageRecord], encoder: ImageEncoder, batch_size: int,
            commit: Commit) -> None:
        t0 = time.perf_counter()
        ray, started = self._init()
        self.started_s = time.perf_counter() - t0 if started else 0.0
        from ray.data import ActorPoolStrategy, DataContext

        ctx = DataContext.get_current()
        bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False  # the build has one
        try:
            self.actors, resources, self.device, threads = self._plan(ray)
            log.info("encoding %d images on Ray: %d actors on %s, %s", len(todo), self.actors,
                     self.device, resources)
            ds = ray.data.from_items([{"record": r.model_dump_json()} for r in todo])
            ds = ds.map_batches(
                _EncodeActor, fn_constructor_args=(self.factory, self.device, threads),
                batch_size=batch_size, compute=ActorPoolStrategy(size=self.actors),
                **resources)
            want = f"{encoder.name}\0{encoder.dim}"
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                got = out["encoder"]
                if len(got) and got[0] != want:
                    name, dim = str(got[0]).split("\0")
                    raise EncoderMismatchError(
                        f"the Ray actors encode with {name!r} (dim {dim}) but the build uses "
                        f"{encoder.name!r} (dim {encoder.dim}); give both the same model")
                ok = out["reject"] == ""
                ids = [str(i) for i in out["id"][ok]]
                bad = [json.loads(s) for s in out["reject"][~ok]]
                commit(ids, np.ascontiguousarray(out["vector"][ok], np.float32), bad, len(ok))
        except ray.exceptions.RayError as e:  # Ray's text ends with the worker's own error
            last = [line for line in str(e).splitlines() if line.strip()][-1:] or [repr(e)]
            raise ModelError(f"encoding on Ray failed: {last[0].strip()}") from e
        finally:
            ctx.enable_progress_bars = bars
            if started:
                ray.shutdown()
