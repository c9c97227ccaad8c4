from cefmp4.readiness import Readiness


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
