"""The source (``paretopipe run``): inputs, the head stage, the in-flight window, the result file.

The source runs stage 0 (blocks ``[0, splits[0])``) on its own device and streams batches through
the chain with at most ``window`` batches in flight (1 = sequential). Sequential runs do
everything in the main thread (head, send, receive). Pipelined runs use three threads:

- main: waits for a free window slot, takes the next prefetched batch, stamps ``send_s`` (the batch
  enters the pipeline), runs the head, and queues the output for sending;
- sender: hands outputs to the transport (the wait between head done and wire send is the
  source's queue time);
- collector: receives logits from the last stage, stamps ``done_s`` and frees the window slot.

All of it is backend-neutral: the transport is a :class:`~paretopipe.transport.base.SourceLink`.
What a run is configured with, :class:`RunConfig`, is :mod:`paretopipe.runtime.run_config`'s
(re-exported here).
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paretopipe.errors import ConfigError, ParetoPipeError, StageError
from paretopipe.metrics import BatchRecord, HostContention, ResourceSampler, contention_summary, summarize
from paretopipe.runtime.compute import HostBuffers, PlainCompute
from paretopipe.runtime.run_config import RunConfig  # re-exported: importers say paretopipe.runtime.source
from paretopipe.threads import join, spawn
from paretopipe.transport.base import SessionPlan, SessionSpec, StageInfo

log = logging.getLogger(__name__)

#: Logits of at most this many counted batches are kept for --check.
CHECK_BATCHES = 16
#: Seconds between progress lines during a run.
PROGRESS_S = 10.0
#: Test hook (fault injection): when set, the source aborts right after writing its result
#: file, as a process that dies after its file would (see judge_run in paretopipe.results).
DIE_AFTER_WRITE_ENV = "PARETOPIPE_FAULT_DIE_AFTER_WRITE"
#: Warnings given once per process (a round of the Ansible sweep runs many in one).
_WARNED: set[str] = set()


@dataclass
class _Pending:
    batch_id: int
    send_s: float
    head_s: float
    head_ready: float
    window_wait_s: float
    labels: Any
    wire_send: float = 0.0


class RunFailed(StageError):
    """The run failed; a partial result file (status "failed") was written."""

    def __init__(self, message: str, path: Path | None) -> None:
        super().__init__(message)
        self.path = path
        self.exit_code = 1


class _Run:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.records: list[BatchRecord] = []
        self.stage_infos: list[StageInfo] = []
        self.stage_stats: list[dict[str, Any]] = []
        self.host_contention: dict[str, Any] = {}  # HostContention over the measured loop
        self.error: str | None = None
        self.check: dict[str, Any] | None = None
        self.kept_logits: dict[int, Any] = {}
        self.prefetch_stalls = 0
        self.prefetch_stall_s = 0.0
        self._trace_started = False
        self.labelled_images = 0
        self.compute_cpu_s = 0.0
        self.fidelity: dict[str, Any] | None = None
        self._reference: Any = None  # a ReferenceStore, made on first use
        self._last_progress = time.monotonic()

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        import torch

        from paretopipe.models import get_model_info, weights_spec
        from paretopipe.runtime.compute import check_device
        from paretopipe.splitting import build_stages, num_blocks, stage_io_shapes

        cfg = self.cfg
        if self.trace_clock is not None:
            from paretopipe.netcond.clock import check_clock_file

            check_clock_file(self.trace_clock)
        self.device = check_device(cfg.device)
        self.input_size = cfg.input_size or get_model_info(cfg.model).input_size
        self.num_blocks = num_blocks(cfg.model, num_classes=cfg.num_classes)
        self._plan_threads()
        torch.set_num_threads(self.threads)
        for k in cfg.splits:
            if not 0 <= k <= self.num_blocks:
                raise ConfigError(f"split {k} is out of range for {cfg.model} (valid: 0..{self.num_blocks}); see `paretopipe splits {cfg.model}`")
        self.weights = weights_spec(cfg.weights, cfg.seed)
        self.head = build_stages(cfg.model, cfg.splits, num_classes=cfg.num_classes, weights=cfg.weights,
                                 seed=cfg.seed)[0].to(self.device)
        _, self.head_out_shape = stage_io_shapes(cfg.model, cfg.splits, 0, batch_size=cfg.batch_size,
                                                 input_size=self.input_size, num_classes=cfg.num_classes)
        self.logits_shape = (cfg.batch_size, cfg.num_classes)
        self.step: Any = PlainCompute(self.head, self.device)
        self.head_replay: dict[str, Any] | None = None
        if cfg.replay is not None:
            self._setup_replay()

    def _setup_replay(self) -> None:
        """The head replays a profile (``--replay``): checked against the run before anything
        else happens; for stored output, the head's outputs are computed beforehand."""
        from paretopipe.runtime.inputs import input_period
        from paretopipe.runtime.replay import ReplayCompute, ReplayOutput, ReplaySetting, stored_outputs

        cfg = self.cfg
        setting = ReplaySetting.from_options(cfg.replay, cfg.replay_timing, cfg.replay_output)
        setting.profile.check_fits(model=cfg.model, num_classes=cfg.num_classes, input_size=self.input_size,
                                   batch_size=cfg.batch_size, num_blocks=self.num_blocks)
        blocks = (0, cfg.splits[0])
        outputs, period = None, input_period(cfg.input)
        if setting.output == ReplayOutput.STORED:
            count = period or (cfg.warmup + cfg.batches if cfg.batches is not None else None)
            if count is None:
                raise ConfigError("--replay-output stored needs the batches known beforehand: give --batches N "
                                  "or use --input synthetic")
            outputs = stored_outputs(model=cfg.model, num_classes=cfg.num_classes, weights=self.weights,
                                     seed=cfg.seed, input_spec=cfg.input, input_size=self.input_size,
                                     batch_size=cfg.batch_size, boundary=blocks[1], batch_ids=list(range(count)),
                                     cache_dir=cfg.reference_cache, memo={})
        self.step = ReplayCompute(setting, blocks=blocks, stage_index=0, seed=cfg.seed, module=self.head,
                                  device=self.device, outputs=outputs, period=period)
        self.head_replay = setting.describe(blocks)

    def _plan_threads(self) -> None:
        """Intra-op threads for this source and for the stages on this host.

        --threads applies to every stage. Without it, the stages whose address is on this host
        (loopback, or one of its interfaces) and this source divide this host's usable cores
        among those that have blocks to run; stages elsewhere use their own device's cores (the
        worker's default)."""
        from paretopipe.runtime.cores import is_local_address, threads_for

        cfg = self.cfg
        self.local_stages = tuple(is_local_address(a) for a in cfg.stages)
        if cfg.threads:
            self.threads = cfg.threads
            self.stage_threads: tuple[int | None, ...] = tuple(cfg.threads for _ in cfg.stages)
            return
        # An empty stage (no blocks: k=0 leaves the source none, k=N the last worker none) only
        # forwards tensors: it does not count among those that share the cores, and it gets one
        # thread, so that what it does torch work for (inputs, codecs) never wakes a second
        # OpenMP team beside the busy stage's: one straggling thread stalls that team's every op.
        bounds = (0, *cfg.splits, self.num_blocks)
        busy = [bounds[i] < bounds[i + 1] for i in range(len(bounds) - 1)]
        sharing = max(1, busy[0] + sum(b for b, local in zip(busy[1:], self.local_stages) if local))
        each = threads_for(sharing)
        self.threads = each if busy[0] else 1
        self.stage_threads = tuple((each if b else 1) if local else None
                                   for b, local in zip(busy[1:], self.local_stages))

    def _describe_cores(self, stages: list[dict[str, Any]]) -> None:
        """Each stage's thread count and whether it shared a host (one kernel: the same boot
        id) with another stage of the run; None where it is not known (the run failed first)."""
        from paretopipe.runtime.cores import boot_id

        infos = {i.index: i for i in self.stage_infos}
        stats = {int(s.get("index", -1)): s for s in self.stage_stats}
        kernels: dict[int, str | None] = {0: boot_id()}
        for st in stages[1:]:
            info = infos.get(st["index"])
            kernels[st["index"]] = info.environment.get("boot_id") if info else None
        for st in stages:
            idx = st["index"]
            threads = stats.get(idx, {}).get("threads")
            if threads is None and idx == 0:
                threads = getattr(self, "threads", None)
            st["threads"] = threads
            mine = kernels.get(idx)
            st["shared_host"] = None if mine is None else any(
                other == mine for j, other in kernels.items() if j != idx)

    def config_section(self) -> dict[str, Any]:
        from paretopipe.environment import host_label

        cfg = self.cfg
        bounds = (0, *cfg.splits, getattr(self, "num_blocks", None))
        infos = {i.index: i for i in self.stage_infos}
        stages = [{"index": 0, "host": host_label(), "device": cfg.device, "address": None,
                   "blocks": [bounds[0], bounds[1]]}]
        for i, addr in enumerate(cfg.stages, start=1):
            info = infos.get(i)
            stages.append({
                "index": i,
                "host": (info.environment.get("host") or info.environment.get("hostname"))
                if info else addr.rpartition(":")[0],
                "device": info.device if info else None,
                "address": addr,
                "blocks": [bounds[i], bounds[i + 1]],
            })
        self._describe_cores(stages)
        return {
            "model": cfg.model, "num_classes": cfg.num_classes,
            "input_size": getattr(self, "input_size", cfg.input_size),
            "weights": getattr(self, "weights", None), "splits": list(cfg.splits),
            "num_blocks": getattr(self, "num_blocks", None), "backend": cfg.backend,
            "batch_size": cfg.batch_size, "window": cfg.window, "warmup": cfg.warmup,
            "batches": cfg.batches, "duration_s": cfg.duration_s, "min_batches": cfg.min_batches,
            "min_duration_s": cfg.min_duration_s, "input": cfg.input, "seed": cfg.seed,
            "threads": cfg.threads, "repeat": cfg.repeat, "stages": stages,
            "network": {"label": cfg.network_label, "configured": cfg.network.get("configured"),
                        "measured": cfg.network.get("measured"), "extra": cfg.network.get("extra") or {}},
            "timeout_s": cfg.timeout_s, "device": cfg.device, "codec": cfg.codec,
        }

    # ---------------------------------------------------------------- the session
    def execute(self) -> None:
        import torch

        from paretopipe.codecs import parse_codec
        from paretopipe.runtime.inputs import Prefetcher, open_input
        from paretopipe.transport import get_backend
        from paretopipe.transport.wire import read_token_file

        cfg = self.cfg
        inputs = open_input(cfg.input, batch_size=cfg.batch_size, input_size=self.input_size, seed=cfg.seed)
        self.inputs = inputs
        spec = SessionSpec(
            session_id=random.getrandbits(63), model=cfg.model, num_classes=cfg.num_classes,
            input_size=self.input_size, splits=tuple(cfg.splits), stage_index=1,
            num_stages=len(cfg.splits) + 1, batch_size=cfg.batch_size, dtype="float32",
            weights=self.weights, next_address=None, window=cfg.window, timeout_s=cfg.timeout_s,
            threads=cfg.threads, seed=cfg.seed, codec=str(parse_codec(cfg.codec)), run_id=default_run_id(cfg),
            input=cfg.input,
            total_batches=cfg.warmup + cfg.batches if cfg.batches is not None else None,
            cache_dir=cfg.reference_cache,
        )
        plan = SessionPlan(addresses=tuple(cfg.stages), spec=spec, head_out_shape=tuple(self.head_out_shape),
                           logits_shape=self.logits_shape,
                           token=read_token_file(cfg.token_file) if cfg.token_file else None,
                           connect_timeout_s=cfg.connect_timeout_s, stage_threads=self.stage_threads,
                           source_address=cfg.source_address)
        link = get_backend(cfg.backend).source_link()
        prefetch = None
        sampler = ResourceSampler(device=self.device)
        contention = HostContention()
        try:
            self.stage_infos = link.open(plan)
            log.info("session %d open: %s", spec.session_id,
                     ", ".join(f"stage {i.index} {i.device}@{i.address}" for i in self.stage_infos))
            prefetch = Prefetcher(inputs, depth=max(2, cfg.window + 1))
            sampler.start()
            contention.start()
            try:
                self._loop(link, prefetch)
            finally:
                if self._trace_started:
                    self._signal_trace("stop", time.monotonic())
            self.host_contention = contention.stop()
            own = sampler.stop()
            own["index"] = 0
            own["threads"] = torch.get_num_threads()
            own["compute_cpu_s"] = self.compute_cpu_s
            if self.head_replay is not None:
                own["replay"] = self.step.stats()
            self.stage_stats = [own, *link.finish()]
        finally:
            sampler.stop()  # a no-op once stopped; after a failure it ends the sampling thread
            if prefetch is not None:
                self.prefetch_stalls, self.prefetch_stall_s = prefetch.stalls, prefetch.stall_s
                prefetch.close()
            link.close()

    @property
    def trace_clock(self) -> str | None:
        """The clock file a trace follower replays this run's condition from (network
        ``extra.trace_clock``, :mod:`paretopipe.netcond.clock`), or None."""
        return ((self.cfg.network or {}).get("extra") or {}).get("trace_clock")

    def _signal_trace(self, event: str, t: float) -> None:
        """Tell the trace follower that measurement starts (the trace's t = 0) or ended."""
        if self.trace_clock is None:
            return
        from paretopipe.netcond.clock import write_signal

        try:
            write_signal(self.trace_clock, default_run_id(self.cfg), event, t)
        except OSError as exc:
            raise StageError(f"cannot signal the trace follower through {self.trace_clock}: {exc.strerror}") from exc
        self._trace_started = event == "start"

    def _loop(self, link: Any, prefetch: Any) -> None:
        if self.cfg.window == 1:
            self._loop_sequential(link, prefetch)
        else:
            self._loop_pipelined(link, prefetch)

    def _loop_sequential(self, link: Any, prefetch: Any) -> None:
        """Window 1: the main thread runs the head, sends, and receives the result itself; with
        one batch in flight there is nothing for other threads to overlap. The window wait is
        the same span as in the pipelined loop: from the batch before being handed on to its
        result being recorded."""
        import torch

        cfg = self.cfg
        total = cfg.warmup + cfg.batches if cfg.batches is not None else None
        buffers = HostBuffers()
        t_first: float | None = None
        t_issued: float | None = None
        with torch.inference_mode():
            batch_id = 0
            while total is None or batch_id < total:
                counted = batch_id >= cfg.warmup
                if total is None and counted and t_first is not None and time.monotonic() - t_first >= cfg.duration_s:
                    break
                window_wait = time.monotonic() - t_issued if t_issued is not None else 0.0
                batch = prefetch.next(count_stall=counted)
                send_s = time.monotonic()
                if counted and t_first is None:
                    t_first = send_s
                    self._signal_trace("start", send_s)
                out, slot, t_start, t_ready, cpu = self.step(batch.images, buffers, batch_id)
                self.compute_cpu_s += cpu
                p = _Pending(batch_id, send_s, t_ready - t_start, t_ready, window_wait, batch.labels)
                p.wire_send = link.send(batch_id, out)
                buffers.give_back(slot)
                t_sent = time.monotonic()
                res = link.recv(cfg.timeout_s)
                if res.batch_id != batch_id:
                    raise StageError(f"the chain returned batch {res.batch_id} while batch {batch_id} was the only one in flight")
                self._record(p, res)
                batch_id += 1
                self._progress(batch_id, total)
                t_issued = t_sent

    def _loop_pipelined(self, link: Any, prefetch: Any) -> None:
        """Window > 1: the main thread issues batches, a sender thread hands them to the
        transport and a collector thread receives the results and frees window slots."""
        import torch

        cfg = self.cfg
        total = cfg.warmup + cfg.batches if cfg.batches is not None else None
        window = threading.Semaphore(cfg.window)
        pending: dict[int, _Pending] = {}
        lock = threading.Lock()
        to_send: queue.Queue[tuple[int, Any, int] | None] = queue.Queue()
        buffers = HostBuffers()
        failure: list[BaseException] = []
        issued = [0]
        issued_sem = threading.Semaphore(0)
        t_first: list[float] = []

        def sender() -> None:
            try:
                while (item := to_send.get()) is not None:
                    batch_id, out, slot = item
                    t_wire = link.send(batch_id, out)
                    buffers.give_back(slot)
                    with lock:
                        if batch_id in pending:
                            pending[batch_id].wire_send = t_wire
            except BaseException as exc:  # noqa: BLE001 - the main loop raises it
                failure.append(exc)
                window.release()

        def collector() -> None:
            # One `issued_sem` token per issued batch, plus a final one when issuing is over.
            got = 0
            try:
                while True:
                    issued_sem.acquire()
                    with lock:
                        outstanding = issued[0] - got
                    if failure or outstanding == 0:
                        return
                    res = link.recv(cfg.timeout_s)
                    with lock:
                        p = pending.pop(res.batch_id)
                    got += 1
                    self._record(p, res)
                    window.release()
                    self._progress(got, total)
            except BaseException as exc:  # noqa: BLE001 - the main loop raises it
                failure.append(exc)
                window.release()

        threads = [spawn(sender, name="src-send"), spawn(collector, name="src-collect")]
        broken = False
        try:
            with torch.inference_mode():
                batch_id = 0
                while total is None or batch_id < total:
                    counted = batch_id >= cfg.warmup
                    if total is None and counted and t_first and time.monotonic() - t_first[0] >= cfg.duration_s:
                        break
                    t_wait = time.monotonic()
                    window.acquire()
                    if failure:
                        break
                    window_wait = time.monotonic() - t_wait
                    batch = prefetch.next(count_stall=counted)
                    send_s = time.monotonic()
                    if counted and not t_first:
                        t_first.append(send_s)
                        self._signal_trace("start", send_s)
                    out, slot, t_start, t_ready, cpu = self.step(batch.images, buffers, batch_id)
                    self.compute_cpu_s += cpu
                    with lock:
                        pending[batch_id] = _Pending(batch_id, send_s, t_ready - t_start, t_ready, window_wait, batch.labels)
                        issued[0] += 1
                    to_send.put((batch_id, out, slot))
                    issued_sem.release()
                    batch_id += 1
        except BaseException:
            broken = True
            raise
        finally:
            issued_sem.release()
            to_send.put(None)
            # The collector ends when the last result is in, the sender when its queue is done.
            # After a failure (or an error in this thread) the link is closed first, which
            # wakes whichever is still waiting on a socket. Either way both are joined.
            while threads[1].is_alive() and not failure and not broken:
                threads[1].join(0.05)
            if failure or broken:
                link.close()
            lingering = join(threads, cfg.timeout_s)
            if lingering:
                log.warning("source threads did not stop within %g s: %s", cfg.timeout_s, ", ".join(lingering))
        if failure:
            raise failure[0]

    def _progress(self, done: int, total: int | None) -> None:
        """A log line every PROGRESS_S seconds, so long runs show they are alive."""
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_S:
            return
        self._last_progress = now
        recs = self.records
        rate = ""
        if len(recs) >= 2:
            span = recs[-1].done_s - recs[0].send_s
            rate = f", {len(recs) * self.cfg.batch_size / span:.2f} img/s so far" if span > 0 else ""
        log.info("%d%s batches done (%d warm-up)%s", done, f"/{total}" if total else "", self.cfg.warmup, rate)

    def _record(self, p: _Pending, res: Any) -> None:
        cfg = self.cfg
        if p.batch_id < cfg.warmup:
            return
        recs = res.records
        correct = None
        if p.labels is not None:
            correct = int((res.logits.argmax(dim=1) == p.labels).sum())
            self.labelled_images += len(p.labels)
        self.records.append(BatchRecord(
            batch_id=p.batch_id, send_s=p.send_s, done_s=res.t_done,
            compute_s=(p.head_s, *(r.compute_s for r in recs)),
            stage_queue_s=(max(0.0, p.wire_send - p.head_ready) if p.wire_send else 0.0, *(r.queue_s for r in recs)),
            hop_bytes=(*(r.bytes_in for r in recs), res.return_bytes),
            hop_transfer_s=(*(r.transfer_in_s for r in recs), res.return_transfer_s),
            window_wait_s=p.window_wait_s, correct=correct,
            hop_raw_bytes=(*(r.raw_in for r in recs), res.return_raw_bytes or res.return_bytes),
            hop_encode_s=(*(r.encode_in_s for r in recs), res.return_encode_s),
            hop_decode_s=(*(r.decode_in_s for r in recs), res.return_decode_s),
        ))
        keep = max(CHECK_BATCHES if cfg.check else 0, cfg.fidelity_batches)
        if len(self.kept_logits) < keep:
            self.kept_logits[p.batch_id] = res.logits

    # ---------------------------------------------------------------- fidelity and --check
    def reference_logits(self) -> dict[int, Any]:
        """The unsplit, uncoded model's logits for every kept batch, on the same inputs."""
        import torch

        from paretopipe.models import build_model
        from paretopipe.runtime.reference import ReferenceStore, reference_key

        if self._reference is None:
            cfg = self.cfg

            def compute(ids: list[int]) -> dict[int, Any]:
                model = build_model(cfg.model, num_classes=cfg.num_classes, weights=cfg.weights, seed=cfg.seed)
                with torch.inference_mode():
                    return {b: model(self.inputs.batch(b).images) for b in ids}

            key = reference_key(model=cfg.model, num_classes=cfg.num_classes, seed=cfg.seed, weights=self.weights,
                                input_spec=cfg.input, input_size=self.input_size, batch_size=cfg.batch_size)
            self._reference = ReferenceStore(cfg.reference_cache, key, compute)
        return self._reference.logits(self.kept_logits)

    def run_fidelity(self) -> None:
        """Compare the returned logits of the first ``fidelity_batches`` counted batches with the
        unsplit, uncoded model's (docs/results.md, summary.fidelity)."""
        from paretopipe.fidelity import compare

        cfg = self.cfg
        ids = sorted(self.kept_logits)[: cfg.fidelity_batches]
        if not ids:
            return
        ref = self.reference_logits()
        labels = None
        if self.weights_trained and self.inputs.has_labels:
            labels = [self.inputs.batch(b).labels for b in ids]
        self.fidelity = compare([self.kept_logits[b] for b in ids], [ref[b] for b in ids], labels=labels).to_json()
        self.fidelity["codec"] = cfg.codec
        if self.fidelity["degenerate"] and self.fidelity["degenerate"] not in _WARNED:
            _WARNED.add(self.fidelity["degenerate"])  # once per process: a round runs many
            log.warning("fidelity: %s", self.fidelity["degenerate"])

    def run_check(self) -> None:
        reference = self.reference_logits()
        worst = scale = 0.0
        for batch_id, logits in sorted(self.kept_logits.items()):
            ref = reference[batch_id]
            worst = max(worst, float((ref - logits).abs().max()))
            scale = max(scale, float(ref.abs().max()))
        # CPU stages run the same kernels as the reference: only summation order differs. CUDA
        # kernels (TF32 convolutions by default) round differently: allow 1% of the logit scale.
        cuda = self.device.startswith("cuda") or any(i.device.startswith("cuda") for i in self.stage_infos)
        tolerance = 1e-2 * max(scale, 1.0) if cuda else 1e-4
        ok = bool(self.kept_logits) and worst <= tolerance
        self.check = {"batches": len(self.kept_logits), "max_abs_diff": worst, "tolerance": tolerance, "ok": ok}
        if not ok:
            raise StageError(f"--check: split logits differ from the unsplit model by {worst:.3g} (tolerance "
                             f"{tolerance:.3g}) over {len(self.kept_logits)} batches")

    # ---------------------------------------------------------------- the file
    def document(self, run_id: str) -> dict[str, Any]:
        from paretopipe.environment import environment_info
        from paretopipe.results import build_result, validity

        cfg = self.cfg
        nstages = len(cfg.splits) + 1
        recs = sorted(self.records, key=lambda r: r.batch_id)
        t0 = min((r.send_s for r in recs), default=0.0)
        duration = (max(r.done_s for r in recs) - t0) if recs else 0.0
        env = [environment_info(cfg.device, index=0)]
        env += [{**i.environment, "index": i.index} for i in self.stage_infos]
        stats = self.stage_stats or [{"index": i} for i in range(nstages)]
        summary = summarize(recs, batch_size=cfg.batch_size, num_stages=nstages, stage_stats=stats,
                            prefetch_stalls=self.prefetch_stalls, prefetch_stall_s=self.prefetch_stall_s,
                            labelled_images=self.labelled_images if self.weights_trained else 0)
        summary["fidelity"] = self.fidelity
        summary["contention"] = contention_summary(self.host_contention, stats, env)
        extra: dict[str, Any] = {"check": self.check} if self.check is not None else {}
        replay = self.replay_section()
        if replay is not None:
            extra["replay"] = replay
        batches = [r.to_json(t0) for r in recs]
        configured = (cfg.network or {}).get("configured") or {}
        if configured.get("trace_file"):  # a condition that moves: the batches on its clock
            from paretopipe.netcond.conditions import recorded_condition
            from paretopipe.netcond.traces import trace_records

            cond = recorded_condition(configured, cfg.network_label)
            batches, summary["trace"] = trace_records(cond.trace(), batches)
            summary["trace"]["replayed_from"] = self.trace_clock  # None: nothing followed this run's t0
        return build_result(
            run_id=run_id, sweep_id=cfg.sweep_id, status="failed" if self.error else "ok", error=self.error,
            config=self.config_section(), environment=env, batches=batches,
            summary=summary,
            validity=validity(warmup=cfg.warmup, counted=len(recs), duration_s=duration,
                              min_batches=cfg.min_batches, min_duration_s=cfg.min_duration_s),
            **extra,
        )

    def replay_section(self) -> dict[str, Any] | None:
        """The result's ``replay`` section: which stages replayed which profile, and their
        overruns; None for a measured run (no stage replayed)."""
        from paretopipe.runtime.replay import replay_section

        docs = {0: self.head_replay} if getattr(self, "head_replay", None) else {}
        docs.update({i.index: i.replay for i in self.stage_infos if i.replay})
        return replay_section(docs, self.stage_stats, warmup=self.cfg.warmup)

    @property
    def weights_trained(self) -> bool:
        return bool(getattr(self, "weights", None)) and self.weights.get("kind") == "file"


def default_run_id(cfg: RunConfig) -> str:
    from paretopipe.results import run_id

    return cfg.run_id or run_id(model=cfg.model, splits=cfg.splits, backend=cfg.backend, network=cfg.network_label,
                                batch_size=cfg.batch_size, window=cfg.window, repeat=cfg.repeat, codec=cfg.codec)


def failed_document(cfg: RunConfig, error: str) -> dict[str, Any]:
    """A result document for a run that failed before the source could describe it."""
    state = _Run(cfg)
    state.error = error
    return state.document(default_run_id(cfg))


def run(cfg: RunConfig) -> dict[str, Any]:
    """Run one session and write its result file. Returns the document.

    Raises ConfigError for bad settings (no file written) and RunFailed after writing a partial
    file marked failed when the run itself fails."""
    from paretopipe.results import check_writable, write_result

    cfg.validate()
    out = check_writable(cfg.out)
    state = _Run(cfg)
    state.setup()  # bad model / split / weights: an error, no file
    try:
        state.execute()
        state.run_fidelity()
        if cfg.check:
            state.run_check()
    except ParetoPipeError as exc:
        state.error = str(exc)
    doc = state.document(default_run_id(cfg))
    write_result(doc, out)
    if os.environ.get(DIE_AFTER_WRITE_ENV):
        log.error("fault injection (%s): aborting after writing %s", DIE_AFTER_WRITE_ENV, out)
        os.abort()
    if state.error:
        raise RunFailed(f"{state.error} (partial result written to {out})", out)
    return doc
