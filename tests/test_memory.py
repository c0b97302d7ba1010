import psutil

from lmforge.memory import MemoryReturner, release_free_memory


def test_release_returns_freed_heap_pages_to_the_os():
    process = psutil.Process()
    chunks = [bytearray(100_000) for _ in range(2000)]  # below the mmap threshold: on the heap
    pinned = chunks[-1]  # the top of the heap stays in use, so free() alone cannot shrink it
    del chunks
    before = process.memory_info().rss
    assert release_free_memory()
    after = process.memory_info().rss
    assert before - after > 100 * 2**20, (before, after)
    assert len(pinned) == 100_000


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_returner_releases_when_idle_after_work_and_periodically_while_busy():
    clock, calls = FakeClock(), []
    returner = MemoryReturner(every_s=1.0, release=lambda: calls.append(clock.now) or True, clock=clock)
    returner.when_idle()
    assert calls == []  # nothing was done since the last release
    for _ in range(5):
        clock.now += 0.3
        returner.after_step()
    assert calls == [1.2]  # once the interval passed, not on every step
    returner.when_idle()
    assert calls == [1.2, 1.5]
    returner.when_idle()
    assert calls == [1.2, 1.5] and returner.releases == 2
