from lmforge.engine.scheduler import Scheduler


def test_admits_up_to_max_batch_and_queues_the_rest():
    s = Scheduler(max_batch=2, prefill_chunk=100)
    for i in range(3):
        s.add(f"r{i}", prompt_length=10)
    plan = s.schedule()
    assert plan.admitted == ["r0", "r1"] and s.num_waiting == 1
    assert [c.request_id for c in plan.prefill] == ["r0", "r1"]
    assert all(c.completes_prompt for c in plan.prefill)


def test_long_prompt_is_prefilled_in_chunks_while_others_decode():
    s = Scheduler(max_batch=4, prefill_chunk=8)
    s.add("short", 4)
    s.record(s.schedule())  # short prefilled
    s.add("long", 20)
    plans = []
    for _ in range(3):
        plan = s.schedule()
        plans.append(plan)
        s.record(plan)
    assert all(p.decode == ["short"] for p in plans)  # the running stream keeps decoding
    assert [(c.start, c.length, c.completes_prompt) for p in plans for c in p.prefill] == \
        [(0, 8, False), (8, 8, False), (16, 4, True)]
    assert s.schedule().decode == ["short", "long"]


def test_finish_frees_room_for_waiting_requests():
    s = Scheduler(max_batch=1)
    s.add("a", 3)
    s.add("b", 3)
    assert s.schedule().admitted == ["a"]
    s.finish("a")
    assert s.schedule().admitted == ["b"]
    s.finish("b")
    s.add("c", 3)
    s.finish("c")  # a waiting request can be removed too
    assert s.schedule().empty and s.num_waiting == 0
