from cefmp4.runtime.readiness import Readiness


def test_failure_is_reported_by_class_until_ok() -> None:
    now = [100.0]
    readiness = Readiness(clock=lambda: now[0])
    readiness.fail("watcher", RuntimeError("secret /path"))
    assert readiness.failures() == {"watcher": "RuntimeError"}
    readiness.ok("watcher")
    assert readiness.failures() == {}


def test_threshold_counts_from_the_first_failure_of_a_run() -> None:
    now = [0.0]
    readiness = Readiness(clock=lambda: now[0])
    readiness.fail("stream:upload_part", "TransientError")
    now[0] = 5.0
    readiness.fail("stream:upload_part", "TransientError")  # still the same run
    assert readiness.failures(older_than=10.0) == {}
    now[0] = 10.0
    assert readiness.failures(older_than=10.0) == {"stream:upload_part": "TransientError"}


def test_a_component_failing_for_several_holders_is_cleared_only_by_the_last() -> None:
    now = [0.0]
    readiness = Readiness(clock=lambda: now[0])
    first, second = object(), object()
    readiness.fail("s3", "TransientError", first)
    now[0] = 4.0
    readiness.fail("s3", "ConnectTimeout", second)
    readiness.ok("s3", second)  # one stream's retry succeeded, the other still fails
    assert readiness.failures() == {"s3": "TransientError"}
    readiness.fail("s3", "ConnectTimeout", second)
    now[0] = 6.0
    # Its age is the oldest holder's: 6 s, past a 5 s threshold although the second is 2 s.
    assert readiness.failures(older_than=5.0) == {"s3": "TransientError"}
    readiness.ok("s3", first)
    assert readiness.failures(older_than=5.0) == {}
    assert readiness.failures() == {"s3": "ConnectTimeout"}
    readiness.ok("s3", second)
    readiness.ok("s3", second)  # twice, or for a holder that never failed: harmless
    assert readiness.failures() == {}
