"""The stage worker (``paretopipe stage serve``): backend-neutral stage logic.

:class:`StageService` builds a session's stage (from the model name and weights spec in the
handshake, or from shard files with ``--shards``), caches it for the next session, and runs the
session's loop over whatever :class:`~paretopipe.transport.base.StageLink` the backend provides.
Pipelined sessions (window > 1) run a receive thread, the compute loop, and a send thread, so
receiving batch n+1, computing batch n and sending batch n-1 overlap; sequential ones (window 1)
do all three in one thread, as nothing could overlap. CUDA stages copy from pinned host buffers
with non-blocking copies and synchronise before stamping the compute time (which then includes
the two copies).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from paretopipe.errors import ConfigError, StageError
from paretopipe.metrics import ResourceSampler
from paretopipe.runtime.compute import HostBuffers, PlainCompute, StageCompute, check_device
from paretopipe.runtime.cores import usable_cpus
from paretopipe.threads import spawn
from paretopipe.transport.base import InBatch, SessionSpec, StageInfo, StageLink, StageRecord

log = logging.getLogger(__name__)

#: Test hook (fault injection): "N" or "N,MARKER". The worker process exits abruptly after
#: computing N batches of a session, as a crashed worker would; with MARKER it does so only if
#: the file MARKER does not exist yet (and creates it), i.e. once per marker.
FAULT_ENV = "PARETOPIPE_FAULT_EXIT_AFTER"

_SUPPORTED_DTYPES = ("float32",)
#: Logged once per session when its first batch is computed (batches are flowing).
FIRST_BATCH_LOG = "session %d: first batch computed"


def _fault_after() -> int | None:
    raw = os.environ.get(FAULT_ENV)
    if not raw:
        return None
    count, _, marker = raw.partition(",")
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return None
        os.close(fd)
    return int(count)


class StageService:
    """Implements the StageHandler protocol for any backend.

    With ``replay`` (a :class:`~paretopipe.runtime.replay.ReplaySetting`) the stage is a
    replayed one: each batch takes the profile's time for the stage's blocks."""

    def __init__(self, *, device: str = "cpu", shards: str | os.PathLike[str] | None = None,
                 threads: int | None = None, replay: Any = None) -> None:
        self.device = check_device(device)
        self.replay = replay
        self._stored: dict[int, Any] | None = None
        self._stored_period: int | None = None
        self._stored_memo: dict[str, Any] = {}  # the stored outputs, kept for the worker's life
        self.shards = Path(shards) if shards else None
        self.threads = threads
        self._manifest: dict[str, Any] | None = None
        if self.shards is not None:
            from paretopipe.shards import read_manifest

            self._manifest = read_manifest(self.shards)
        self._cache_key: tuple[Any, ...] | None = None
        self._module: Any = None
        self._info: StageInfo | None = None
        self._env: dict[str, Any] | None = None

    @property
    def pin_memory(self) -> bool:
        return self.device.startswith("cuda")

    def _environment(self, index: int) -> dict[str, Any]:
        from paretopipe.environment import environment_info

        if self._env is None:
            self._env = environment_info(self.device)
        return {**self._env, "index": index}

    # -- handshake
    def prepare(self, spec: SessionSpec) -> StageInfo:
        import torch

        if spec.dtype not in _SUPPORTED_DTYPES:
            raise StageError(f"dtype {spec.dtype} is not supported by this worker (supported: {', '.join(_SUPPORTED_DTYPES)})")
        # --threads of this worker, else what the source asked for (it divides the cores of the
        # stages that share its host), else this device's own usable cores
        torch.set_num_threads(self.threads or spec.threads or usable_cpus())
        num_classes = spec.num_classes
        if self._manifest is not None:
            if self._manifest["model"] != spec.model:
                raise StageError(f"this worker's shards ({self.shards}) are for {self._manifest['model']}, but the session asks for {spec.model}")
            num_classes = int(self._manifest["num_classes"])
        from paretopipe.splitting import num_blocks, stage_io_shapes

        key = (spec.model, num_classes, spec.splits, spec.stage_index, str(self.shards),
               tuple(sorted(spec.weights.items())), spec.batch_size, spec.input_size)
        nb = num_blocks(spec.model, num_classes=num_classes)
        bounds = (0, *spec.splits, nb)
        blocks = (bounds[spec.stage_index], bounds[spec.stage_index + 1])
        replay_doc = self._prepare_replay(spec, num_classes, nb, blocks) if self.replay is not None else None
        if key == self._cache_key and self._info is not None:
            log.info("stage %d of %s reused from the previous session", spec.stage_index, spec.model)
            return replace(self._info, environment=self._environment(spec.stage_index), replay=replay_doc)
        self._module = self._info = self._cache_key = None  # drop the old stage before building
        t0 = time.monotonic()
        module = self._build(spec)
        in_shape, out_shape = stage_io_shapes(spec.model, spec.splits, spec.stage_index, batch_size=spec.batch_size,
                                              input_size=spec.input_size, num_classes=num_classes)
        with torch.inference_mode():  # dry run: proves the stage accepts its input; warms it up
            probe = module(torch.zeros(in_shape, device=self.device))
        if tuple(probe.shape) != tuple(out_shape):
            raise StageError(f"stage {spec.stage_index} produced {tuple(probe.shape)}, expected {tuple(out_shape)}")
        self._module = module
        self._info = StageInfo(
            index=spec.stage_index, address=None, in_shape=tuple(in_shape), out_shape=tuple(out_shape),
            dtype=spec.dtype, device=self.device, environment=self._environment(spec.stage_index),
            blocks=blocks, replay=replay_doc,
        )
        self._cache_key = key
        log.info("built stage %d of %s (blocks %s) on %s in %.2f s", spec.stage_index, spec.model,
                 list(self._info.blocks), self.device, time.monotonic() - t0)
        return self._info

    def _prepare_replay(self, spec: SessionSpec, num_classes: int, nb: int, blocks: tuple[int, int]) -> dict[str, Any]:
        """Check that the profile times this session's model, input and batch; for stored
        output, have the outputs of every batch ready (computed once, before READY)."""
        from paretopipe.runtime.replay import ReplayOutput, stored_outputs

        setting = self.replay
        try:
            setting.profile.check_fits(model=spec.model, num_classes=num_classes, input_size=spec.input_size,
                                       batch_size=spec.batch_size, num_blocks=nb)
        except ConfigError as exc:
            raise StageError(str(exc)) from None
        self._stored = None
        if setting.output == ReplayOutput.STORED:
            from paretopipe.runtime.inputs import input_period

            period = input_period(spec.input)
            count = period or spec.total_batches
            if count is None:
                raise StageError(f"stage {spec.stage_index} replays with stored output, which needs the batches known "
                                 f"beforehand: give the run --batches N, or use synthetic inputs (this run: "
                                 f"{spec.input!r} for a duration)")
            self._stored = stored_outputs(model=spec.model, num_classes=num_classes, weights=spec.weights,
                                          seed=spec.seed, input_spec=spec.input, input_size=spec.input_size,
                                          batch_size=spec.batch_size, boundary=blocks[1], batch_ids=list(range(count)),
                                          cache_dir=spec.cache_dir, memo=self._stored_memo)
            self._stored_period = period
        return setting.describe(blocks)

    def _step(self, spec: SessionSpec) -> Any:
        """This session's stage step: the module as it runs, or its replay."""
        if self.replay is None:
            return PlainCompute(self._module, self.device)
        from paretopipe.runtime.replay import ReplayCompute

        assert self._info is not None
        return ReplayCompute(self.replay, blocks=self._info.blocks, stage_index=spec.stage_index, seed=spec.seed,
                             module=self._module, device=self.device, outputs=self._stored,
                             period=self._stored_period)

    def _build(self, spec: SessionSpec) -> Any:
        if self.shards is not None:
            from paretopipe.shards import load_stage

            return load_stage(self.shards, spec.splits, spec.stage_index, device=self.device)
        from paretopipe.models import file_sha256
        from paretopipe.splitting import build_stages

        weights = spec.weights
        kind = weights.get("kind")
        if kind == "random":
            path, seed = None, int(weights.get("seed", spec.seed))
        elif kind == "file":
            path, seed = Path(str(weights.get("path"))), spec.seed
            if not path.is_file():
                raise StageError(f"weights file {path} is not on this worker; copy it there or serve from --shards")
            if file_sha256(path) != weights.get("sha256"):
                raise StageError(f"weights file {path} on this worker differs from the source's (sha256 mismatch)")
        else:
            raise StageError(f"unknown weights kind {kind!r} in the session spec")
        stages = build_stages(spec.model, spec.splits, num_classes=spec.num_classes, weights=path, seed=seed)
        return stages[spec.stage_index].to(self.device)

    # -- session
    def run(self, link: StageLink) -> dict[str, Any]:
        import torch

        assert self._module is not None and self._info is not None
        step = self._step(link.spec)
        sampler = ResourceSampler(device=self.device).start()
        try:
            with torch.inference_mode():
                if link.spec.window == 1:
                    count, compute_cpu = self._run_sequential(link, step)
                else:
                    count, compute_cpu = self._run_pipelined(link, step)
        finally:
            stats = sampler.stop()
        stats.update(index=link.spec.stage_index, batches=count, threads=torch.get_num_threads(),
                     compute_cpu_s=compute_cpu)
        if self.replay is not None:
            stats["replay"] = step.stats()
        return stats

    def _run_sequential(self, link: StageLink, step: StageCompute) -> tuple[int, float]:
        """Window 1: one batch in the chain at a time, so nothing can overlap. This thread
        receives, computes and sends each batch itself: no hand-offs between threads."""
        buffers = HostBuffers()
        fault = _fault_after()
        count, compute_cpu = 0, 0.0
        while (item := link.recv()) is not None:
            try:
                out, slot, t_start, t_ready, cpu = step(item.tensor, buffers, item.batch_id)
            finally:
                link.release(item)
            compute_cpu += cpu
            record = _record(item, t_start, t_ready)
            link.send(item.batch_id, out, [*item.records, record], t_ready)
            buffers.give_back(slot)
            count = _counted(count + 1, link, fault)
        return count, compute_cpu

    def _run_pipelined(self, link: StageLink, step: StageCompute) -> tuple[int, float]:
        """Window > 1: a receive thread, this compute loop and a send thread, so receiving batch
        n+1, computing batch n and sending batch n-1 overlap."""
        in_q: queue.Queue[InBatch | BaseException | None] = queue.Queue()
        out_q: queue.Queue[tuple[int, Any, list[StageRecord], float, int] | None] = queue.Queue()
        buffers = HostBuffers()
        failed: list[BaseException] = []
        fault = _fault_after()

        def reader() -> None:
            try:
                while (batch := link.recv()) is not None:
                    in_q.put(batch)
                in_q.put(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the compute loop, which raises it
                in_q.put(exc)

        def sender() -> None:
            try:
                while (item := out_q.get()) is not None:
                    batch_id, tensor, records, t_ready, slot = item
                    link.send(batch_id, tensor, records, t_ready)
                    buffers.give_back(slot)
            except BaseException as exc:  # noqa: BLE001 - handed to the compute loop, which raises it
                failed.append(exc)
                in_q.put(exc)  # wake the compute loop

        threads = [spawn(reader, name="stage-recv"), spawn(sender, name="stage-send")]
        count, compute_cpu = 0, 0.0
        try:
            while (item := in_q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                out, slot, t_start, t_ready, cpu = step(item.tensor, buffers, item.batch_id)
                compute_cpu += cpu
                link.release(item)
                record = _record(item, t_start, t_ready)
                out_q.put((item.batch_id, out, [*item.records, record], t_ready, slot))
                count = _counted(count + 1, link, fault)
            out_q.put(None)
            threads[1].join()
            if failed:
                raise failed[0]
        except BaseException:
            out_q.put(None)
            raise
        return count, compute_cpu


def _counted(count: int, link: StageLink, fault: int | None) -> int:
    """After the `count`-th batch: log the first (tests wait on that line) and, under fault
    injection, exit abruptly once `fault` batches are done."""
    if count == 1:
        log.info(FIRST_BATCH_LOG, link.spec.session_id)
    if fault is not None and count >= fault:
        log.error("fault injection (%s): exiting abruptly after %d batches", FAULT_ENV, count)
        os._exit(17)
    return count


def _record(item: InBatch, t_start: float, t_ready: float) -> StageRecord:
    """This stage's record of one batch: its compute and queue time, and the hop it came in on."""
    return StageRecord(compute_s=t_ready - t_start, queue_s=t_start - item.t_arrived, transfer_in_s=item.transfer_in_s,
                       bytes_in=item.bytes_in, raw_in=item.raw_bytes, encode_in_s=item.encode_s,
                       decode_in_s=item.decode_s)


def serve(*, listen: str, device: str = "cpu", shards: str | None = None, token_file: str | None = None,
          threads: int | None = None, backend: str = "tcp", stop: threading.Event | None = None,
          codecs: str | None = None, replay: Any = None) -> None:
    """Run a long-lived worker until interrupted (or `stop` is set). `codecs`: the codecs this
    worker accepts, comma-separated (default: every codec this installation can run);
    `replay`: a :class:`~paretopipe.runtime.replay.ReplaySetting` to replay a device."""
    from paretopipe.codecs import parse_codec_list, require_available
    from paretopipe.transport import get_backend
    from paretopipe.transport.wire import read_token_file

    accepted = parse_codec_list(codecs) if codecs else None
    for codec in accepted or ():
        require_available(codec)
    token = read_token_file(token_file) if token_file else None
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be at least 1 (got {threads})")
        import torch

        torch.set_num_threads(threads)
    service = StageService(device=device, shards=shards, threads=threads, replay=replay)
    get_backend(backend).serve(listen, service, token=token, stop=stop, codecs=accepted)
