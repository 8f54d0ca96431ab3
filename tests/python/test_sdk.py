"""The Python SDK (python/sluice) against the real relay: frames and their order, payloads as
views (numpy without a copy), gap notices, throttling and the max-wait error, refusals with
their reasons, stage workers (credits, per-frame errors, drain), reconnects."""
import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import sluice
from conftest import HERE, SLUICE, free_port

pytestmark = pytest.mark.asyncio


async def test_frames_arrive_in_order_with_their_header_and_the_payload_is_a_view(relay_with):
    r = relay_with()
    sub = await sluice.Subscriber.connect("py.cam", r.url, name="py-sub")
    pub = await sluice.Publisher.connect("py.cam", r.url)
    for i in range(100):
        assert await pub.send(bytes([i]) * 12, timestamp_ns=1000 + i) == i
    got = []
    async for m in sub:
        assert isinstance(m, sluice.Frame)
        got.append(m)
        if len(got) == 100:
            break
    assert [f.index for f in got] == list(range(100))
    assert [f.timestamp_ns for f in got] == [1000 + i for i in range(100)]
    assert all(bytes(f.payload) == bytes([f.index]) * 12 for f in got)
    # The payload is a view of the received message, and numpy's array is that memory.
    f = got[7]
    assert isinstance(f.payload, memoryview)
    a = f.array("uint8", (3, 4))
    message = np.frombuffer(f.payload.obj, dtype=np.uint8)
    assert a.ctypes.data == message.ctypes.data + sluice.FLAGGED_HEADER_BYTES
    assert not a.flags.owndata and not a.flags.writeable
    assert (a == 7).all()
    assert r.topic("py.cam")["subscribers"][0]["name"] == "py-sub"
    await pub.close()
    await sub.close()


async def test_flags_travel_with_frames_and_a_newcomer_starts_at_the_latest_keyframe(relay_with):
    # A video: a keyframe every 5 frames, the others DELTA. A subscriber that joins mid-GOP gets
    # the latest keyframe first (the topic keeps it with its delta frames), then everything.
    r = relay_with('[[topic]]\nname = "video"\nmode = "realtime"\ndepth = 16\n')
    pub = await sluice.Publisher.connect("video", r.url)

    def flags(i):
        return 0 if i % 5 == 0 else sluice.DELTA

    for i in range(13):
        await pub.send(b"f%d" % i, flags=flags(i))
    await asyncio.sleep(0.3)  # (in the topic before the subscriber joins)
    sub = await sluice.Subscriber.connect("video", r.url, depth=16)
    assert sub.position == 10
    for i in range(13, 16):
        await pub.send(b"f%d" % i, flags=flags(i))
    got = []
    async for m in sub:
        assert isinstance(m, sluice.Frame), m
        got.append(m)
        if m.index == 15:
            break
    assert [f.index for f in got] == list(range(10, 16))
    assert [f.flags for f in got] == [flags(i) for i in range(10, 16)]
    assert got[0].keyframe and not got[1].keyframe
    await pub.close()
    await sub.close()


async def test_a_subscriber_that_falls_behind_gets_gap_notices_that_account_for_every_frame(relay_with):
    r = relay_with('[[topic]]\nname = "rt"\nmode = "realtime"\ndepth = 2\n')
    sub = await sluice.Subscriber.connect("rt", r.url, depth=2)
    pub = await sluice.Publisher.connect("rt", r.url)
    n = 400
    for i in range(n):  # 25 MiB while the subscriber reads nothing
        await pub.send(b"x" * (64 * 1024))
    await pub.close()
    received, lost, gaps = 0, 0, []
    async for m in sub:
        if isinstance(m, sluice.Gap):
            gaps.append(m)
            lost += m.count
        else:
            received += 1
            if m.index == n - 1:
                break
    assert gaps and all(g.reason == "slow_consumer" for g in gaps)
    assert received + lost == n
    assert sub.lost == lost and sub.received == received
    await sub.close()


async def test_a_busy_subscriber_is_given_at_most_its_window_from_before_a_pause(relay_with):
    # The websockets library and the kernel would read everything published during a pause
    # ahead of a busy loop; the window (16 by default) keeps what the relay sends within what
    # the program processed: after the pause, at most 16 frames from before it, then a gap.
    r = relay_with('[[topic]]\nname = "rt"\nmode = "realtime"\ndepth = 4\n')
    sub = await sluice.Subscriber.connect("rt", r.url, depth=4)
    stop = threading.Event()

    async def produce():  # (on a thread of its own: it goes on while the subscriber's loop is busy)
        pub = await sluice.Publisher.connect("rt", r.url)
        while not stop.is_set():
            await pub.send(b"p" * 300)
            await asyncio.sleep(0.002)
        await pub.close()

    producer = threading.Thread(target=lambda: asyncio.run(produce()))
    producer.start()
    frames, paused_at, before_gap, gaps = 0, None, None, 0
    async for m in sub:
        if isinstance(m, sluice.Gap):
            gaps += 1
            if paused_at is not None and before_gap is None:
                before_gap = frames - paused_at
            continue
        frames += 1
        if frames == 20:
            time.sleep(1.0)  # busy: the loop takes nothing meanwhile
            paused_at = frames
        if before_gap is not None and frames >= paused_at + before_gap + 20:
            break
    stop.set()
    producer.join()
    assert gaps >= 1 and before_gap is not None, "the pause lapped it"
    assert before_gap <= 16, f"{before_gap} frames from before the pause"
    assert r.topic("rt")["subscribers"][0]["sends"] in ("ok", "late")
    await sub.close()


async def test_a_full_lossless_topic_throttles_the_publisher_then_max_wait_ends_it_naming_the_setting(relay_with):
    r = relay_with('[[topic]]\nname = "telemetry"\nmode = "lossless"\n'
                   'max_queue_bytes = "64KiB"\nmax_wait_ms = 300\n')
    stuck = await sluice.Subscriber.connect("telemetry", r.url, name="stuck")  # never reads
    pub = await sluice.Publisher.connect("telemetry", r.url)
    with pytest.raises(sluice.MaxWaitExceeded) as e:
        for _ in range(100_000):
            await asyncio.wait_for(pub.send(b"t" * 16384), 10)
    assert e.value.setting == "max_wait_ms"
    assert e.value.code == 1013 and "max_wait_ms" in e.value.reason
    assert e.value.frame_index is not None
    assert pub.slow_downs >= 1
    kinds = [n.kind async for n in pub.events()]
    assert "slow_down" in kinds and "error" in kinds
    await stuck.close()


async def test_refusals_say_why(relay_with):
    r = relay_with('[topics]\nauto_create = false\n[[topic]]\nname = "plain"\ndepth = 4\n'
                   'mode = "realtime"\n')
    with pytest.raises(sluice.Refused) as e:
        await sluice.Subscriber.connect("plain", r.url, depth=99)
    assert e.value.status == 400 and "depth" in e.value.reason
    with pytest.raises(sluice.Refused) as e:
        await sluice.Publisher.connect("nowhere", r.url)
    assert e.value.status == 404 and "nowhere" in e.value.reason
    worker = sluice.Worker("plain", r.url)
    worker.handler(lambda f: b"")
    with pytest.raises(sluice.Refused) as e:
        await worker.run(handle_sigterm=False)
    assert e.value.status == 404 and "stage" in e.value.reason


STAGE = ('[[topic]]\nname = "frames"\nmode = "realtime"\nstage = true\nstage_fps = 1000\n'
         'stage_max_in_flight = 64\nstage_worker_queue = 256\nstage_results = "frames.results"\n')


async def staged(r, worker):
    """`worker` running on STAGE's topic, a subscriber of its results and a publisher of frames,
    once the worker has joined."""
    running = asyncio.create_task(worker.run(handle_sigterm=False))
    results = await sluice.Subscriber.connect("frames.results", r.url)
    pub = await sluice.Publisher.connect("frames", r.url)
    while not worker.joined:
        await asyncio.sleep(0.01)
    return running, results, pub


async def test_a_worker_uses_its_credits_fails_a_frame_by_its_error_and_drains(relay_with):
    r = relay_with(STAGE)
    worker = sluice.Worker("frames", r.url, name="py", concurrency=3)
    in_flight, most = 0, 0

    @worker.handler
    async def infer(frame):
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        if frame.index == 5:
            raise ValueError("no objects in frame 5")
        return b"seen %d" % frame.index

    running, results, pub = await staged(r, worker)
    for i in range(30):
        await pub.send(b"frame")
    seen = set()
    while len(seen) < 29:
        m = await asyncio.wait_for(results.__anext__(), 10)
        seen.add(bytes(m.payload))
    assert seen == {b"seen %d" % i for i in range(30) if i != 5}
    assert most == 3  # the relay sent at most `concurrency` unanswered, and used them
    dropped = []
    async for n in pub.events():
        if n.kind == "dropped":
            dropped.append(n)
            break
    assert dropped[0].frame_index == 5 and dropped[0].reason == "worker_failed"
    assert "no objects in frame 5" in str(dropped[0].data)
    assert worker.failed >= 1 and worker.processed == 29
    worker.drain()
    await asyncio.wait_for(running, 10)
    await pub.close()
    await results.close()


async def test_a_plain_function_handler_runs_in_threads_up_to_the_concurrency(relay_with):
    r = relay_with(STAGE)
    worker = sluice.Worker("frames", r.url, name="sync", concurrency=2)
    lock = threading.Lock()
    in_flight, most, threads = 0, 0, set()

    @worker.handler
    def infer(frame):  # blocking: it would stall the event loop if run on it
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
            threads.add(threading.get_ident())
        time.sleep(0.1)
        with lock:
            in_flight -= 1
        return b"seen %d" % frame.index

    running, results, pub = await staged(r, worker)
    for i in range(8):
        await pub.send(b"frame")
    seen = set()
    while len(seen) < 8:
        seen.add(bytes((await asyncio.wait_for(results.__anext__(), 10)).payload))
    assert seen == {b"seen %d" % i for i in range(8)}
    assert most == 2  # two frames at a time, side by side, never more
    assert threading.get_ident() not in threads  # (not on the loop's thread)
    worker.drain()
    await asyncio.wait_for(running, 10)
    await pub.close()
    await results.close()


async def test_cancelling_a_worker_closes_its_connection_and_the_relay_hands_its_frame_on(relay_with):
    # The relay would wait stage_task_timeout_ms (60 s here) for a worker that just stopped
    # answering; one whose connection ends gives its frame back at once.
    r = relay_with(STAGE + 'stage_task_timeout_ms = 60000\n')
    stuck = sluice.Worker("frames", r.url, name="stuck", concurrency=1)
    got_one = asyncio.Event()

    @stuck.handler
    async def hold(frame):
        got_one.set()
        await asyncio.sleep(3600)

    helper = sluice.Worker("frames", r.url, name="helper", concurrency=1)
    helper.handler(lambda frame: b"handed on %d" % frame.index)
    async with stuck:
        asyncio.create_task(stuck.run(handle_sigterm=False))
        results = await sluice.Subscriber.connect("frames.results", r.url)
        pub = await sluice.Publisher.connect("frames", r.url)
        while not stuck.joined:
            await asyncio.sleep(0.01)
        await pub.send(b"frame")
        await asyncio.wait_for(got_one.wait(), 10)
        helping = asyncio.create_task(helper.run(handle_sigterm=False))
        while not helper.joined:
            await asyncio.sleep(0.01)
    # (the block's end cancelled the stuck worker's run(): its connection is gone, and the
    # frame it held goes to the helper long before stage_task_timeout_ms)
    m = await asyncio.wait_for(results.__anext__(), 20)
    assert bytes(m.payload) == b"handed on 0"
    helper.drain()
    await asyncio.wait_for(helping, 10)
    await pub.close()
    await results.close()


async def test_a_draining_worker_hands_new_frames_to_the_others_and_loses_none(relay_with):
    r = relay_with(STAGE)
    draining = sluice.Worker("frames", r.url, name="draining", concurrency=4)
    staying = sluice.Worker("frames", r.url, name="staying", concurrency=4)
    for w in (draining, staying):
        w.handler(lambda f: asyncio.sleep(0.01, result=b"r%d" % f.index))
    tasks = [asyncio.create_task(w.run(handle_sigterm=False)) for w in (draining, staying)]
    results = await sluice.Subscriber.connect("frames.results", r.url)
    pub = await sluice.Publisher.connect("frames", r.url)
    while not (draining.joined and staying.joined):
        await asyncio.sleep(0.01)
    for i in range(200):
        await pub.send(b"f")
        if i == 50:
            draining.drain()
        await asyncio.sleep(0.002)
    # Every frame comes back as a result or is announced to the producer as dropped. The gate
    # may drop a frame for its own reasons when this machine is slow (too many in flight, the
    # stage slower than the frame rate) — announced, and not the drain's doing; the drain must
    # lose none: no frame fails for want of a worker.
    dropped = {}

    async def notices():
        async for n in pub.events():
            if n.kind == "dropped":
                dropped[n.frame_index] = n.reason

    watching = asyncio.create_task(notices())
    got = set()
    deadline = time.monotonic() + 20
    while len(got) + len(dropped) < 200:
        assert time.monotonic() < deadline, (sorted(set(range(200)) - got - dropped.keys()), dropped)
        try:
            got.add((await asyncio.wait_for(results.__anext__(), 0.5)).index)
        except asyncio.TimeoutError:
            pass  # (a dropped notice may be what is missing)
    assert not got & dropped.keys()
    assert got | dropped.keys() == set(range(200))
    assert not {i: r for i, r in dropped.items() if r in ("worker_failed", "no_worker")}, dropped
    await asyncio.wait_for(tasks[0], 10)  # drained and returned
    assert draining.processed + staying.processed == len(got)
    assert staying.processed > draining.processed
    staying.drain()
    await asyncio.wait_for(tasks[1], 10)
    await pub.close()
    await watching


async def test_sigterm_drains_the_example_worker_which_exits_cleanly(relay_with):
    r = relay_with(STAGE)
    env = dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "..", "python"))
    example = os.path.join(HERE, "..", "..", "python", "examples", "grayscale_worker.py")
    proc = subprocess.Popen([sys.executable, example, "--url", r.url, "--topic", "frames",
                             "--width", "8", "--height", "4"], env=env, stdout=subprocess.PIPE,
                            text=True)
    assert "joined" in proc.stdout.readline()
    results = await sluice.Subscriber.connect("frames.results", r.url)
    pub = await sluice.Publisher.connect("frames", r.url)
    image = np.arange(8 * 4 * 3, dtype=np.uint8).reshape(4, 8, 3)
    await pub.send(image.tobytes())
    m = await asyncio.wait_for(results.__anext__(), 10)
    gray = np.frombuffer(m.payload, dtype=np.uint8).reshape(4, 8)
    expected = (image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    assert (gray == expected).all()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert '"processed": 1' in out
    await pub.close()


async def test_a_reconnecting_subscriber_rides_out_a_relay_restart(relay_with):
    port = free_port()
    r = relay_with(http_port=port)
    sub = await sluice.Subscriber.connect("again", r.url, reconnect=True)
    pub = await sluice.Publisher.connect("again", r.url)
    await pub.send(b"before")
    assert bytes((await sub.__anext__()).payload) == b"before"
    r.stop()
    r2 = relay_with(http_port=port)
    gap = await asyncio.wait_for(sub.__anext__(), 15)
    assert gap == sluice.Gap(None, "relay_restart")  # the new relay's topic is another run
    pub2 = await sluice.Publisher.connect("again", r2.url)
    await pub2.send(b"after")
    assert bytes((await asyncio.wait_for(sub.__anext__(), 10)).payload) == b"after"
    assert sub.reconnects == 1
    await pub2.close()
    await sub.close()


async def test_a_subscriber_that_loses_its_connection_resumes_with_nothing_lost_or_repeated(relay_with):
    r = relay_with("[topics]\nretain_items = 64\n")
    sub = await sluice.Subscriber.connect("kept", r.url, reconnect=True)
    assert sub.epoch and len(sub.epoch) == 16 and sub.position == 0
    pub = await sluice.Publisher.connect("kept", r.url)
    for i in range(5):
        await pub.send(b"%d" % i, frame_index=i)
    assert [(await sub.__anext__()).index for _ in range(2)] == [0, 1]
    sub._ws.transport.abort()  # the connection is lost (not closed by either side)
    for i in range(5, 10):
        await pub.send(b"%d" % i, frame_index=i)
    while r.topic("kept")["published"] < 10:
        await asyncio.sleep(0.01)
    got = [await asyncio.wait_for(sub.__anext__(), 10) for _ in range(8)]
    assert [m.index for m in got] == list(range(2, 10)), got  # no Gap: nothing was missed
    assert [bytes(m.payload) for m in got] == [b"%d" % i for i in range(2, 10)]
    assert sub.reconnects == 1 and sub.position == 10 and sub.lost == 0
    await pub.close()
    await sub.close()


async def test_a_subscriber_back_after_the_topic_let_go_is_told_how_many_it_missed(relay_with):
    r = relay_with("[topics]\nretain_items = 8\n")
    sub = await sluice.Subscriber.connect("short", r.url, reconnect=True)
    pub = await sluice.Publisher.connect("short", r.url)
    await pub.send(b"first", frame_index=0)
    assert (await sub.__anext__()).index == 0
    sub._ws.transport.abort()
    for i in range(1, 21):
        await pub.send(b"x", frame_index=i)
    while r.topic("short")["published"] < 21:
        await asyncio.sleep(0.01)
    gap = await asyncio.wait_for(sub.__anext__(), 10)
    assert gap == sluice.Gap(12, "retention")  # 1..12 gone; 13..20 retained
    assert [(await sub.__anext__()).index for _ in range(8)] == list(range(13, 21))
    assert sub.received + sub.lost == 21
    await pub.close()
    await sub.close()


async def test_without_reconnect_a_lost_relay_is_an_error_not_an_end(relay_with):
    r = relay_with()
    sub = await sluice.Subscriber.connect("gone", r.url)
    r.proc.kill()
    r.proc.wait()
    with pytest.raises(sluice.Closed) as e:
        await asyncio.wait_for(sub.__anext__(), 10)
    assert e.value.code == 1006


async def test_a_python_and_a_cpp_worker_share_a_stage_by_their_measured_latency(relay_with):
    r = relay_with(STAGE)
    cpp = subprocess.Popen([SLUICE, "worker", "--port", str(r.http_port), "--topic", "frames",
                            "--name", "cpp", "--width", "8", "--height", "4",
                            "--concurrency", "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert "joined" in cpp.stdout.readline()
        py = sluice.Worker("frames", r.url, name="python", concurrency=2)
        py.handler(lambda f: asyncio.sleep(0.05, result=b"slow"))  # a slower model
        task = asyncio.create_task(py.run(handle_sigterm=False))
        pub = await sluice.Publisher.connect("frames", r.url)
        while not py.joined:
            await asyncio.sleep(0.01)
        for _ in range(200):  # 100 frames a second for 2 s
            await pub.send(bytes(8 * 4 * 3))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        workers = {w["name"]: w for w in r.topic("frames")["stage"]["workers"]}
        done = {n: w["completed"] for n, w in workers.items()}
        print("completed by worker:", done,
              {n: round(w["smoothed_latency_ms"], 1) for n, w in workers.items()})
        assert done["cpp"] > 2 * done["python"] > 0
        py.drain()
        await asyncio.wait_for(task, 10)
        await pub.close()
    finally:
        cpp.send_signal(signal.SIGTERM)
        cpp.wait(timeout=10)


async def test_a_producer_that_waits_for_resume_gets_it_once_the_topic_drains(relay_with):
    # (It sends nothing after slow_down: the relay must tell it when the topic has drained to
    # half its budget all the same.)
    r = relay_with('[[topic]]\nname = "held"\nmode = "lossless"\nmax_queue_bytes = "8MiB"\n'
                   'max_wait_ms = 60000\n')
    sub = await sluice.Subscriber.connect("held", r.url)
    pub = await sluice.Publisher.connect("held", r.url)
    while not pub.slowed:  # the subscriber reads nothing yet
        await asyncio.wait_for(pub.send(b"h" * 262144), 10)
    sent = pub.sent
    read = 0
    async def drain():
        nonlocal read
        async for m in sub:  # (slowly: the topic is still over half full when the frame the
            read += 1           # producer was held on goes in)
            await asyncio.sleep(0.002)
            if read == sent:
                return
    reader = asyncio.create_task(drain())
    kinds = []

    async def resumed():  # (every slow_down so far, each answered by a resume)
        async for n in pub.events():
            kinds.append(n.kind)
            if n.kind == "resume" and kinds.count("resume") == kinds.count("slow_down") == pub.slow_downs:
                return

    await asyncio.wait_for(resumed(), 15)  # (without the relay's resume: a timeout)
    assert kinds[-1] == "resume" and not pub.slowed, (kinds, pub.slow_downs, pub.resumes)
    await asyncio.wait_for(reader, 10)
    await pub.close()


async def test_a_producer_sending_again_what_the_topic_has_puts_each_frame_in_once(relay_with):
    # A producer process that restarts without knowing which of its last frames went in sends
    # them again under its producer id: the topic takes each frame once.
    r = relay_with()
    sub = await sluice.Subscriber.connect("once", r.url)
    first = await sluice.GrpcPublisher.connect("once", r.grpc, producer="camera-7")
    for i in range(1, 11):
        await first.send(b"%d" % i)
    await first.close()
    again = await sluice.GrpcPublisher.connect("once", r.grpc, producer="camera-7", first_sequence=6)
    for i in range(6, 16):
        assert await again.send(b"%d" % i) == i
    await again.close()  # flushed: 6..10 acked as already there, 11..15 published
    got = [await asyncio.wait_for(sub.__anext__(), 10) for _ in range(15)]
    assert [bytes(m.payload) for m in got] == [b"%d" % i for i in range(1, 16)]
    assert r.topic("once")["published"] == 15
    await sub.close()


async def test_grpc_publisher_gets_every_frame_acknowledged_and_subscribers_receive_them(relay_with):
    r = relay_with()
    sub = await sluice.Subscriber.connect("grpc.cam", r.url)
    pub = await sluice.GrpcPublisher.connect("grpc.cam", r.grpc, window=16)
    for i in range(200):
        assert await pub.send(b"g%d" % i) == i + 1
    await pub.flush()
    assert pub.acked == 200 and pub.unacked == 0
    got = []
    async for m in sub:
        got.append(bytes(m.payload))
        if len(got) == 200:
            break
    assert got == [b"g%d" % i for i in range(200)]
    await pub.close()
    await sub.close()


async def test_grpc_publisher_resends_exactly_the_unacknowledged_frames_after_a_relay_restart(relay_with):
    grpc_port, http_port = free_port(), free_port()
    config = '[[topic]]\nname = "kept"\nmode = "lossless"\n'
    r = relay_with(config, grpc_port=grpc_port, http_port=http_port)
    pub = await sluice.GrpcPublisher.connect("kept", r.grpc)
    for i in range(10):
        await pub.send(b"acked %d" % i)
    await pub.flush()  # 10 in the first relay's topic
    r.proc.send_signal(signal.SIGSTOP)  # the relay stops answering: what follows is unacked
    await asyncio.sleep(0.2)
    for i in range(25):
        await pub.send(b"pending %d" % i)
    await asyncio.sleep(0.3)
    assert pub.unacked == 25
    r.proc.kill()
    r.proc.wait()
    r2 = relay_with(config, grpc_port=grpc_port, http_port=http_port)
    await asyncio.wait_for(pub.flush(), 20)
    assert pub.resent == 25 and pub.reconnects >= 1
    assert r2.topic("kept")["published"] == 25  # exactly the unacknowledged ones
    await pub.close()


async def test_a_reconnecting_websocket_publisher_resends_exactly_the_unacknowledged_frames(relay_with):
    http_port = free_port()
    config = '[[topic]]\nname = "kept"\nmode = "lossless"\n'
    r = relay_with(config, http_port=http_port)
    pub = await sluice.Publisher.connect("kept", r.url, reconnect=True, reconnect_for=20)
    for i in range(10):
        await pub.send(b"acked %d" % i)
    await pub.flush()  # 10 in the first relay's topic, acknowledged
    assert pub.acked == 10 and pub.unacknowledged == 0
    r.proc.send_signal(signal.SIGSTOP)  # the relay stops answering: what follows is unacked
    await asyncio.sleep(0.2)
    for i in range(25):
        await pub.send(b"pending %d" % i)
    assert pub.unacknowledged == 25
    r.proc.kill()
    r.proc.wait()
    r2 = relay_with(config, http_port=http_port)
    await asyncio.wait_for(pub.flush(), 20)
    assert pub.resent == 25 and pub.reconnects == 1
    assert r2.topic("kept")["published"] == 25  # exactly the unacknowledged ones
    await pub.close()


async def test_a_reconnecting_websocket_publisher_puts_each_frame_in_once_across_a_lost_connection(relay_with):
    r = relay_with('[[topic]]\nname = "once"\nmode = "lossless"\n')
    sub = await sluice.Subscriber.connect("once", r.url)
    pub = await sluice.Publisher.connect("once", r.url, reconnect=True)
    for i in range(20):
        await pub.send(b"%d" % i)
        if i == 9:
            pub._ws.transport.abort()  # lost with frames unacknowledged or just in
    await asyncio.wait_for(pub.flush(), 20)
    got = [await asyncio.wait_for(sub.__anext__(), 10) for _ in range(20)]
    assert [m.index for m in got] == list(range(20))  # in order, none twice, none missing
    assert pub.reconnects == 1
    assert r.topic("once")["published"] == 20
    await pub.close()
    await sub.close()


async def test_a_websocket_publisher_without_reconnect_fails_on_a_lost_connection(relay_with):
    r = relay_with()
    pub = await sluice.Publisher.connect("plain", r.url)
    await pub.send(b"one")
    r.stop()
    with pytest.raises(sluice.Closed):
        for _ in range(100):
            await pub.send(b"more")
            await asyncio.sleep(0.01)


async def test_grpc_publisher_refused_names_the_reason(relay_with):
    r = relay_with('[topics]\nauto_create = false\n')
    with pytest.raises(sluice.Refused) as e:
        pub = await sluice.GrpcPublisher.connect("nowhere", r.grpc)
        await pub.send(b"x")
        await pub.flush()
    assert e.value.status == "NOT_FOUND" and "nowhere" in e.value.reason


async def test_grpc_publisher_fails_fast_where_no_relay_listens_and_leaves_nothing_running():
    port = free_port()
    with pytest.raises(sluice.Unreachable) as e:
        await sluice.GrpcPublisher.connect("t", f"127.0.0.1:{port}", connect_timeout=1.0)
    assert e.value.target == f"127.0.0.1:{port}" and e.value.reason
    assert f"127.0.0.1:{port}" in str(e.value)
    # No task of the publisher outlives its failed connect.
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_grpc_publisher_given_the_http_port_says_so(relay_with):
    r = relay_with()
    with pytest.raises(sluice.Unreachable) as e:
        await sluice.GrpcPublisher.connect("t", r.url.split("//", 1)[1],
                                           connect_timeout=1.0)
    assert "HTTP port" in e.value.reason, e.value.reason


async def test_grpc_publisher_async_with_flushes_at_the_end_of_the_block(relay_with):
    r = relay_with()
    sub = await sluice.Subscriber.connect("with", r.url)
    async with await sluice.GrpcPublisher.connect("with", r.grpc) as pub:
        for i in range(5):
            await pub.send(b"%d" % i)
    assert pub.unacked == 0
    got = []
    async for m in sub:
        got.append(bytes(m.payload))
        if len(got) == 5:
            break
    assert got == [b"%d" % i for i in range(5)]
    await sub.close()


async def test_the_video_producer_example_publishes_a_y4m_files_frames_in_order(relay_with, tmp_path):
    r = relay_with('[[topic]]\nname = "video"\nmode = "lossless"\ncontent_type = "video/x-raw"\n')
    w, h, n = 16, 8, 12
    clip = tmp_path / "clip.y4m"
    with open(clip, "wb") as f:
        f.write(b"YUV4MPEG2 W%d H%d F25:1 Ip A1:1 C420jpeg\n" % (w, h))
        for i in range(n):
            f.write(b"FRAME\n" + bytes([i]) * (w * h * 3 // 2))
    sub = await sluice.Subscriber.connect("video", r.url)
    env = dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "..", "python"))
    example = os.path.join(HERE, "..", "..", "python", "examples", "video_producer.py")
    proc = await asyncio.create_subprocess_exec(sys.executable, example, str(clip), "--topic",
                                                "video", "--url", r.url, "--realtime", env=env,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0 and '"frames": 12' in out.decode()
    got = []
    async for m in sub:
        got.append((m.index, m.timestamp_ns, m.array("uint8", (w * h * 3 // 2,))[0]))
        if len(got) == n:
            break
    assert [g[0] for g in got] == list(range(n))
    assert [g[2] for g in got] == list(range(n))
    assert [g[1] for g in got] == [int(i * 0.04 * 1e9) + 1 for i in range(n)]  # 25 fps
    await sub.close()


def test_the_packaged_protobuf_module_is_what_protoc_makes_of_the_relays_proto(tmp_path):
    protoc = os.environ.get("SLUICE_PROTOC", "protoc")
    root = os.path.join(HERE, "..", "..")
    subprocess.run([protoc, f"--proto_path={root}/proto", f"--python_out={tmp_path}",
                    f"{root}/proto/sluice/v1/relay.proto"], check=True)
    fresh = (tmp_path / "sluice" / "v1" / "relay_pb2.py").read_text()
    packaged = open(os.path.join(root, "python", "sluice", "relay_pb2.py")).read()
    assert packaged == fresh, "python/sluice/relay_pb2.py is stale: regenerate it (docs/python.md)"


async def test_the_quick_start_of_docs_python_md_runs_verbatim_and_ends(relay_with):
    # The first Python block of docs/python.md, as written, its address pointed at this relay.
    import re
    r = relay_with()
    with open(os.path.join(HERE, "..", "..", "docs", "python.md")) as f:
        block = re.search(r"```python\n(.*?)```", f.read(), re.S).group(1)
    assert "ws://127.0.0.1:7401" in block
    script = block.replace("ws://127.0.0.1:7401", r.url)
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
        env=dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "..", "python")))
    assert done.returncode == 0, done.stderr
    assert "sent 100" in done.stdout, done.stdout
