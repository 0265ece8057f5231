import numpy as np
from hypothesis import given, settings, strategies as st

from vsand.mapping.lmap import ALLOCATED, SP, SS, L2map, entry_rsd, entry_slot, make_entry
from vsand.mapping.rsd import RsdTable


@given(st.integers(0, (1 << 25) - 1), st.integers(0, 7))
def test_entry_fields(rsd, slot):
    e = make_entry(rsd, slot)
    assert entry_rsd(e) == rsd and entry_slot(e) == slot and e & ALLOCATED
    assert not e & (SP | SS)
    assert entry_rsd(e | SP | SS) == rsd


@given(st.lists(st.tuples(st.integers(0, 9999), st.integers(0, 2**32 - 1)), max_size=50),
       st.integers(1, 10000))
@settings(max_examples=100)
def test_l2map_set_get_resize(ops, newsize):
    l2 = L2map(10000, 1024)
    model = [0] * 10000
    for k, e in ops:
        l2.set(k, e)
        model[k] = e
    assert [l2.get(k) for k in range(10000)] == model
    ks, es = l2.allocated()
    want = [(k, e) for k, e in enumerate(model) if e & (3 << 28)]
    assert list(zip(ks.tolist(), es.tolist())) == want
    assert l2.entries(0, 10000).tolist() == model
    # shrinking requires the tail to be clear first (the pool frees it)
    for k in range(newsize, 10000):
        l2.set(k, 0)
    l2.resize(newsize)
    l2.resize(10000)
    assert [l2.get(k) for k in range(10000)] == model[:newsize] + [0] * (10000 - newsize)


def test_l2map_costs_nothing_until_written():
    l2 = L2map(1 << 21, 2048)
    assert l2.nbytes() == 0 and l2.get(123456) == 0
    l2.set(123456, 0)
    assert l2.nbytes() == 0
    l2.set(123456, 5)
    assert l2.nbytes() == 2048 * 4


def test_rsd_table_slots_and_dump_load():
    t = RsdTable(5, "default")
    a = t.add([1, 2, 3, 4, 5])
    b = t.add([6, 7, 8, 9, 10])
    slots = [t.take_slot(a)[0] for _ in range(8)]
    assert slots == list(range(8)) and t.take_slot(a) is None
    assert not any(t.put_slot(a, s) for s in range(7)) and t.put_slot(a, 7)
    t.remove(b)
    count, rows = t.dump()
    u = RsdTable(5, "default")
    u.load(count, b"".join(r.tobytes() for r in rows))
    assert u.alive(a) and not u.alive(b) and u.members(a) == [1, 2, 3, 4, 5]
    assert u.free_ids == [b]
    assert np.array_equal(u.live_indices(), [a])
