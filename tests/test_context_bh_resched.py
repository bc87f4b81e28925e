"""A BH rescheduled from its own callback stays alive while pending, even
when the program dropped every reference to it (the pending list keeps one
reference per queued schedule)."""
import gc
import weakref


def test_bh_rescheduled_in_callback_survives_dropping_it(ctx):
    runs = []

    def cb():
        runs.append(1)
        if len(runs) == 1:
            holder[0].schedule()  # queued again before this run's dequeue
            holder[0] = None      # the program lets go of it

    bh = ctx.bh(cb)
    holder = [bh]
    ref = weakref.ref(bh)
    bh.schedule()
    del bh
    ctx.poll(blocking=False)
    gc.collect()
    assert ref() is not None  # still pending: the list holds it
    ctx.poll(blocking=False)
    assert runs == [1, 1]
    gc.collect()
    assert ref() is None  # and released once it ran


def test_bh_rescheduled_then_deleted_in_callback(ctx):
    runs = []

    def cb():
        runs.append(1)
        holder[0].schedule()
        holder[0].delete()
        holder[0] = None

    holder = [ctx.bh(cb)]
    holder[0].schedule()
    ctx.poll(blocking=False)
    ctx.poll(blocking=False)
    gc.collect()
    assert runs == [1]
