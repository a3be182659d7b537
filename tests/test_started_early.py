"""The train loop starts reading its first batch while the model loads (`train.started_early`):
the same items come out, the fetch really happens ahead, and errors surface in the consumer."""

import threading

import pytest

from ftedit.train import started_early


def test_yields_every_item_in_order():
    assert list(started_early(iter(range(5)))) == [0, 1, 2, 3, 4]


def test_an_empty_iterator_yields_nothing():
    assert list(started_early(iter([]))) == []


def test_the_first_item_is_fetched_before_anyone_asks_for_it():
    produced = threading.Event()
    threads = []

    def source():
        threads.append(threading.current_thread().name)
        produced.set()
        yield "first"
        threads.append(threading.current_thread().name)
        yield "second"

    batches = started_early(source())
    assert produced.wait(timeout=10), "the first item was not fetched ahead of the consumer"
    assert list(batches) == ["first", "second"]
    # The first item on the side thread, the rest on the consumer's: one thread at a time.
    assert threads == ["first-batch", threading.current_thread().name]


def test_an_error_while_fetching_the_first_item_is_raised_to_the_consumer():
    def broken():
        raise ValueError("shard unreadable")
        yield  # pragma: no cover

    batches = started_early(broken())
    with pytest.raises(ValueError, match="shard unreadable"):
        next(batches)
