"""The decode pool on its own: typed messages, one worker's protocol, shared slots, pools of both backends."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline import decode as dp
from pipeline.hardware import usable_cpus
from pipeline.io import DecodeError, Frame, SourceInfo
from pipeline.sampling import WindowSpec, clip_windows
from tests.fakes import (
    FakeOpener,
    PidModel,
    PixelModel,
    engine,
    expected_pixels,
    jobs,
)

POOL_SPEC = WindowSpec(4, 1, 2, "sliding", "zero")
INFO = SourceInfo(Path("x"), "video", 4, 4, 10.0, 1.0, 10, "fake")


class CountingSource:
    """Frames whose pixels all equal their index + 1; raises at frame `fail_at`."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at = n, fail_at
        self.info = INFO

    def __enter__(self) -> CountingSource:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __iter__(self):
        for i in range(self.n):
            if i == self.fail_at:
                raise DecodeError("x", f"decode error at frame {i}")
            yield Frame(np.full((4, 4, 3), i + 1, np.uint8), i / 10, i)


def opener(lengths: dict[str, int], fail: dict[str, int] | None = None):
    def open_video(job: dp.VideoJob) -> CountingSource:
        return CountingSource(lengths[job.key], (fail or {}).get(job.key))

    return open_video


def decode_spec(lengths: dict[str, int], fail: dict[str, int] | None = None) -> dp.DecodeSpec:
    return dp.DecodeSpec(opener(lengths, fail), lambda image: image[None], POOL_SPEC, fps=10.0)


def job(key: str) -> dp.VideoJob:
    return dp.VideoJob(key, Path(key), key)


def expected_first_frames(n: int) -> list[int]:
    """Pixel value of each row's first frame (frame index + 1; 0 where zero padded)."""
    first = clip_windows(n, POOL_SPEC)[:, 0]
    return [int(i) + 1 if 0 <= i < n else 0 for i in first]


class ScriptedLink:
    """An in-memory supervisor for one DecodeWorker: gives it the next job once it is ready or done with
    one, lends slots when asked, copies each clip out and frees its slot at once, then stops it."""

    def __init__(self, jobs: list[dp.VideoJob], slots: int = 2) -> None:
        self.jobs: deque[dp.WorkerCommand] = deque(dp.DecodeVideo(i, j) for i, j in enumerate(jobs))
        self.commands: deque[dp.WorkerCommand] = deque()
        self.slots = slots
        self.block: np.ndarray | None = None
        self.sent: list[dp.WorkerMessage] = []
        self.clips: dict[int, list[np.ndarray]] = {}

    def send(self, message: dp.WorkerMessage) -> None:
        self.sent.append(message)
        if isinstance(message, (dp.WorkerReady, dp.VideoDecoded, dp.VideoFailed)):
            self.commands.append(self.jobs.popleft() if self.jobs else dp.StopWorker())
        elif isinstance(message, dp.NeedSlots):
            self.block = np.zeros((self.slots, message.nbytes), np.uint8)
            self.commands.append(dp.LendSlots(0, self.block))
        elif isinstance(message, dp.ClipReady):
            assert self.block is not None
            size = int(np.prod(message.shape))
            pixels = self.block[message.slot][:size].reshape(message.shape).copy()
            self.clips.setdefault(message.number, []).append(pixels)
            self.commands.append(dp.FreeSlot(0, message.slot))

    def recv(self) -> dp.WorkerCommand:
        return self.commands.popleft()


MESSAGES = [
    dp.DecodeVideo(0, job("a")),
    dp.LendSlots(1, np.zeros((2, 8), np.uint8)),
    dp.FreeSlot(1, 0),
    dp.StopWorker(),
    dp.WorkerReady(),
    dp.NeedSlots(96),
    dp.ClipReady(0, 1, 0, (1, 4, 2, 2, 3), np.ones(4, bool), np.zeros(3)),
    dp.StillDecoding(0),
    dp.VideoDecoded(0, 3, 10, 0.1, INFO, 0.5),
    dp.VideoFailed(0, "DecodeError: x: broken"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_is_a_small_frozen_dataclass_that_survives_a_pipe(message):
    assert dataclasses.is_dataclass(message)
    first = dataclasses.fields(message)[0].name if dataclasses.fields(message) else None
    if first is not None:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(message, first, None)
    copy = pickle.loads(pickle.dumps(message))
    assert type(copy) is type(message)
    for field in dataclasses.fields(message):
        assert np.array_equal(np.asarray(getattr(copy, field.name)), np.asarray(getattr(message, field.name)))


def test_a_worker_speaks_the_protocol_in_order():
    """Ready first, then slots asked for, one ClipReady per row (in row order), then the video's end."""
    lengths = {"a": 7, "b": 3}
    link = ScriptedLink([job("a"), job("b")])
    dp.DecodeWorker(link, decode_spec(lengths), heartbeat_s=3600).serve()
    kinds = [type(m).__name__ for m in link.sent]
    assert kinds[:2] == ["WorkerReady", "NeedSlots"]
    assert link.sent[1] == dp.NeedSlots(1 * 4 * 4 * 4 * 3)  # (crops, T, H, W, 3) uint8
    ends = [m for m in link.sent if isinstance(m, dp.VideoDecoded)]
    assert [(e.number, e.rows, e.frames, e.frame_duration) for e in ends] == [(0, 4, 7, 0.1), (1, 2, 3, 0.1)]
    assert "StillDecoding" not in kinds  # heartbeats only after heartbeat_s
    for number, key in enumerate(lengths):
        rows = [m.row for m in link.sent if isinstance(m, dp.ClipReady) and m.number == number]
        assert rows == list(range(len(rows)))
        assert [int(c[0, 0, 0, 0, 0]) for c in link.clips[number]] == expected_first_frames(lengths[key])


def test_a_failing_video_is_one_message_and_the_worker_takes_the_next_job():
    link = ScriptedLink([job("bad"), job("good")])
    dp.DecodeWorker(link, decode_spec({"bad": 9, "good": 5}, fail={"bad": 6}), heartbeat_s=3600).serve()
    failed = [m for m in link.sent if isinstance(m, dp.VideoFailed)]
    assert failed == [dp.VideoFailed(0, "DecodeError: x: decode error at frame 6")]
    (end,) = [m for m in link.sent if isinstance(m, dp.VideoDecoded)]
    assert (end.number, end.rows) == (1, 3)


def test_a_video_without_frames_fails():
    link = ScriptedLink([job("empty")])
    dp.DecodeWorker(link, decode_spec({"empty": 0}), heartbeat_s=3600).serve()
    (failed,) = [m for m in link.sent if isinstance(m, dp.VideoFailed)]
    assert "zero decodable frames" in failed.error


def _write_into_lent_slots(commands) -> None:
    lent = commands.recv()
    block = lent.block.map()
    block[:] = np.arange(block.size, dtype=np.uint64).reshape(block.shape) % 251


def test_shared_slots_written_by_a_worker_process_are_seen_by_the_pool():
    views, shared = dp.shared_block(3, 1000)
    assert isinstance(shared, dp.SharedBlock) and (shared.count, shared.nbytes) == (3, 1000)
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_write_into_lent_slots, args=(receive,))
    child.start()
    send.send(dp.LendSlots(0, shared))
    child.join(timeout=30)
    assert child.exitcode == 0
    assert np.array_equal(views, np.arange(3000).reshape(3, 1000) % 251)


def collect(pool: dp.DecodePool, videos: int) -> tuple[dict[int, list[int]], dict[int, object]]:
    """Drain a started pool: first-frame values per video (releasing every slot), and each video's end."""
    firsts: dict[int, list[int]] = {}
    ends: dict[int, object] = {}
    while len(ends) < videos:
        item = pool.next_item(timeout=5.0)
        assert item is not None and not isinstance(item, dp.PoolFailed), item
        if isinstance(item, dp.DecodedClip):
            firsts.setdefault(item.number, []).append(int(item.pixels[0, 0, 0, 0, 0]))
            item.release()
        else:
            ends[item.number] = item
    return firsts, ends


@pytest.mark.parametrize("backend", dp.DECODE_BACKENDS)
def test_a_pool_delivers_every_clip_and_every_end(backend):
    lengths = {"a": 11, "b": 1, "c": 6, "bad": 8}
    keys = list(lengths)
    pool = dp.open_pool(
        decode_spec(lengths, fail={"bad": 4}), backend=backend, workers=2, slots=2, timeout=30.0
    )
    assert pool.kind == backend
    pool.start([(i, job(k)) for i, k in enumerate(keys)])
    try:
        firsts, ends = collect(pool, len(keys))
    finally:
        pool.close()
    for number, key in enumerate(keys[:3]):
        assert sorted(firsts[number]) == sorted(expected_first_frames(lengths[key]))
        assert isinstance(ends[number], dp.VideoDecoded) and ends[number].rows == len(firsts[number])
    assert ends[3] == dp.VideoFailed(3, "DecodeError: x: decode error at frame 4")
    assert pool.replaced == 0 and not pool.workers and pool.exhausted()


@pytest.mark.parametrize("backend", dp.DECODE_BACKENDS)
def test_a_worker_waits_for_its_slots_to_come_back(backend):
    """Back-pressure: with 2 slots and none released, no third clip comes; releasing one lets one more out."""
    pool = dp.open_pool(decode_spec({"long": 40}), backend=backend, workers=1, slots=2, timeout=None)
    pool.start([(0, job("long"))])
    try:
        held = [pool.next_item(timeout=10.0) for _ in range(2)]
        assert all(isinstance(item, dp.DecodedClip) for item in held)
        assert pool.next_item(timeout=1.0) is None
        held[0].release()
        third = pool.next_item(timeout=10.0)
        assert isinstance(third, dp.DecodedClip) and third.row == 2
        assert pool.next_item(timeout=1.0) is None
    finally:
        pool.close()


# --- through the engine: workers that die, hang or wait; their number and lifetime ------------------


@pytest.mark.parametrize(
    ("misdeed", "reason"),
    [
        ("segv", "died with SIGSEGV"),
        ("kill", "died with SIGKILL (killed from outside; out of memory?)"),
        ("exit", "exited with code 3"),
    ],
)
def test_a_dying_worker_fails_its_video_and_is_replaced(misdeed, reason):
    lengths = (12, 30, 12, 12, 12, 12)
    opener = FakeOpener(lengths, misdeeds=((1, misdeed, 10),))
    run = engine(PixelModel(), opener, batch_size=2, decode_workers=1)
    results = {r.job.key: r for r in run.run(jobs(len(lengths)))}
    bad = results["v1"]
    assert bad.error == f"DecodeWorkerError: v1.mp4: decode process {reason} while decoding this video"
    assert bad.features is None
    for video in (0, 2, 3, 4, 5):
        result = results[f"v{video}"]
        assert result.ok, result.error
        assert np.array_equal(result.features, expected_pixels(video, lengths[video]))
    assert run.last_pool is not None and run.last_pool.replaced == 1


def test_worker_killed_from_outside_mid_video(tmp_path):
    """The OOM killer's way: SIGKILL from another process while the worker is inside a video."""
    pidfile = tmp_path / "pid"
    lengths = (12, 40, 12, 12)
    opener = FakeOpener(lengths, misdeeds=((1, "pidfile", 20),), arg=str(pidfile))

    def killer() -> None:
        deadline = time.monotonic() + 30
        while not pidfile.exists() or not pidfile.read_text():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        os.kill(int(pidfile.read_text()), signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    run = engine(PixelModel(), opener, batch_size=2, decode_workers=1, decode_timeout=None)
    results = {r.job.key: r for r in run.run(jobs(len(lengths)))}
    thread.join(timeout=5)
    assert "decode process died with SIGKILL" in results["v1"].error
    assert all(results[f"v{v}"].ok for v in (0, 2, 3))
    assert np.array_equal(results["v3"].features, expected_pixels(3, 12))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("backend", ["process", "thread"])
def test_a_hanging_video_is_failed_by_the_timeout(backend):
    lengths = (12, 30, 12, 12)
    opener = FakeOpener(lengths, misdeeds=((1, "hang", 5),))
    run = engine(
        PixelModel(), opener, batch_size=2, decode_workers=2, decode_timeout=1.0, decode_backend=backend
    )
    results = {r.job.key: r for r in run.run(jobs(len(lengths)))}
    assert (
        results["v1"].error == "DecodeTimeout: v1.mp4: no decoding progress for 1 s (data.decode_timeout_s)"
    )
    for video in (0, 2, 3):
        assert np.array_equal(results[f"v{video}"].features, expected_pixels(video, lengths[video]))


def test_a_worker_waiting_for_a_slow_model_is_not_timed_out():
    """Back-pressure is not a hang: the worker waits for slots far longer than the timeout."""
    lengths = (40,)
    model = PixelModel(sleep_s=0.3)
    run = engine(model, FakeOpener(lengths), batch_size=1, queue_size=2, decode_timeout=0.5)
    (result,) = list(run.run(jobs(1)))
    assert result.ok, result.error
    assert np.array_equal(result.features, expected_pixels(0, 40))
    assert sum(model.batch_sizes) == 10


def test_an_ordinary_decode_error_is_still_one_line():
    lengths = (12, 12)
    run = engine(PixelModel(), FakeOpener(lengths, misdeeds=((0, "raise", 4),)), batch_size=2)
    results = {r.job.key: r for r in run.run(jobs(2))}
    assert results["v0"].error == "ValueError: bad frame 4"
    assert results["v1"].ok and run.last_pool.replaced == 0


def test_workers_live_for_the_whole_run():
    """Many short videos, two worker processes: every clip comes from one of the same two pids."""
    lengths = (6,) * 16
    run = engine(PidModel(), FakeOpener(lengths, pid=True), batch_size=4, decode_workers=2)
    results = list(run.run(jobs(len(lengths))))
    pids = {int(p) for r in results for p in r.features.ravel()}
    assert len(pids) == 2 and os.getpid() not in pids


def test_decode_workers_beyond_the_cpus_are_clamped(caplog):
    cpus = usable_cpus()
    with caplog.at_level(logging.WARNING, logger="pipeline.engine"):
        run = engine(PixelModel(), FakeOpener((5,)), decode_workers=cpus + 7)
    assert run.decode_workers == cpus
    assert f"hardware.decode_workers={cpus + 7} is more than the {cpus} CPUs" in caplog.text


def test_zero_decode_workers_means_one_per_usable_cpu(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")  # a Slurm task's CPUs win over the affinity mask
    assert usable_cpus() == 3
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    run = engine(PixelModel(), FakeOpener((5, 7)), decode_workers=0)
    assert run.decode_workers == usable_cpus()
    results = {r.job.key: r for r in run.run(jobs(2))}
    for video, n in enumerate((5, 7)):
        assert np.array_equal(results[f"v{video}"].features, expected_pixels(video, n))


def test_stopping_early_stops_the_workers():
    lengths = (400, 400)
    run = engine(PixelModel(), FakeOpener(lengths), batch_size=1, decode_workers=2, queue_size=2)
    results = run.run(jobs(2))
    processes = None
    for _ in results:  # nothing finishes quickly; take the pool while it runs, then stop
        break
    pool = run.last_pool
    assert pool is not None
    processes = [w.handle for w in pool.workers.values()]
    results.close()
    assert processes and not any(p.is_alive() for p in processes)
    assert not pool.workers


ORPHAN_SCRIPT = """
import sys
sys.path[:0] = [{root!r}]
import tests.fakes as t

class Announcing(t.PixelModel):
    def __call__(self, clips, valid):
        print("model busy", flush=True)
        return super().__call__(clips, valid)

run = t.engine(Announcing(sleep_s=60), t.FakeOpener((4000,)), batch_size=1, queue_size=2)
list(run.run(t.jobs(1)))
"""


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_do_not_outlive_a_killed_engine(tmp_path):
    """SIGKILL of the engine's process (no cleanup runs): its decode workers notice and exit."""
    script = tmp_path / "engine.py"
    root = Path(__file__).resolve().parents[2]
    script.write_text(ORPHAN_SCRIPT.format(root=str(root)))
    engine_process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert engine_process.stdout.readline().strip() == "model busy"
        workers = children_of(engine_process.pid)
        assert workers
    finally:
        engine_process.kill()
        engine_process.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)


@dataclass(frozen=True)
class CollectingOpener:
    """FakeOpener whose worker runs the garbage collector before decoding (as any allocation may)."""

    inner: FakeOpener

    def __call__(self, job: dp.VideoJob):
        import gc

        gc.enable()
        gc.collect()
        return self.inner(job)


@pytest.mark.timeout(120)
def test_workers_start_while_the_parent_holds_pyav_garbage(tmp_path):
    """A decoder with FFmpeg threads left for the garbage collector in the engine's process (here: a
    source kept in a reference cycle, as a benchmark's own decoding leaves one) is freed before the
    workers fork: a forked worker that finalised it would wait forever for threads it does not have."""
    import gc

    from pipeline.io import open_source
    from pipeline.synth import write_video

    video = tmp_path / "v.mp4"
    write_video(video, size=(320, 240), fps=30, seconds=1.0)
    gc.disable()  # nothing collects it before the workers fork, unless the pool does
    try:
        for _ in range(3):
            source = open_source(video, resize=(64, 48), threads=2)
            next(iter(source))  # its scaler and decoder threads exist now
            source.cycle = source  # type: ignore[attr-defined]  # only the collector can free it
            del source
        run = engine(PixelModel(), CollectingOpener(FakeOpener((40, 40))), decode_workers=2)
        results = list(run.run(jobs(2)))
    finally:
        gc.enable()
    assert [r.ok for r in results] == [True, True]
